"""The promotion gate, on one page.

A newly registered version takes the alias ``challenger``, or no alias and the tag ``rejected``
when it does not beat its trivial baseline (2.). It takes ``champion`` only when:

1. every metric is finite (otherwise nothing is registered at all);
2. its primary metric beats the trivial baseline (the majority class for a classifier, a uniform
   guess over the vocabulary for perplexity, the base model prompted the same way for SFT,
   chance for a multiple-choice benchmark), and so does every other metric its gate lists
   (``registry.gate`` in params.yaml: a classifier on macro-F1 and accuracy by default);
3. there is no champion yet, or the champion was evaluated on the same set (equal ``eval_hash``)
   and the new value beats it by more than ``min_improvement`` (by anything when that is 0).

Values are compared at the precision the registry stores them (``tags.SIGNIFICANT`` digits), so
that re-registering identical metrics never "beats" the champion by rounding. The champion is read
once, under the model's registry lock, and the alias moves under that same lock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from gpt.errors import RegistryError
from gpt.registry.governance import CHALLENGER, champion_version, set_champion
from gpt.registry.tags import DECISION, REJECTED, VersionTags, capped, metric_tag


def stored(value: float) -> float:
    """A metric at the precision the registry stores it (what the gate compares)."""
    return float(metric_tag(value))


def nonfinite(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics that are not finite numbers."""
    return {k: v for k, v in metrics.items()
            if not isinstance(v, (int, float)) or not math.isfinite(v)}


def require_finite(metrics: dict[str, Any], what: str) -> None:
    """Refuse NaN/inf metrics before anything is registered.

    Raises:
        RegistryError: naming the model and the bad metrics.
    """
    bad = nonfinite(metrics)
    if bad:
        raise RegistryError(f"{what}: non-finite metrics {bad}; nothing was registered — check "
                            "the training logs (lower the learning rate?)")


@dataclass(frozen=True)
class Bar:
    """A further metric the gate lists: it too must beat its trivial baseline."""

    metric: str
    higher_is_better: bool
    baseline: float | None

    def beats(self, new: float, old: float) -> bool:
        return new > old if self.higher_is_better else new < old


@dataclass(frozen=True)
class GateSpec:
    """How one kind of model is judged: its primary metric, direction and trivial baseline, and
    the other metrics its gate lists (``also``), each of which must beat its own baseline."""

    metric: str
    higher_is_better: bool
    baseline: float | None
    min_improvement: float = 0.0
    also: tuple[Bar, ...] = ()

    def beats(self, new: float, old: float) -> bool:
        return new > old if self.higher_is_better else new < old

    def gain(self, new: float, old: float) -> float:
        return new - old if self.higher_is_better else old - new


@dataclass(frozen=True)
class Champion:
    """The current champion as the registry holds it."""

    version: str
    eval_hash: str | None
    metrics: dict[str, float]


def read_champion(client, name: str) -> Champion | None:
    """The version holding the champion alias and its stored metrics (None: no champion)."""
    mv = champion_version(client, name)
    if mv is None:
        return None
    tags = VersionTags.from_tags(mv.tags)
    return Champion(str(mv.version), tags.eval_hash, tags.metrics)


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    #: it does not beat its trivial baseline: no alias at all, tagged ``rejected``
    rejected: bool = False


def _below_baseline(metric: str, value: float, baseline: float) -> Decision:
    return Decision(False, f"rejected: {metric} {value:.4g} does not beat the trivial baseline "
                           f"{baseline:.4g}; train longer, lower the learning rate or check the "
                           "data", rejected=True)


def decide(spec: GateSpec, value: float, eval_hash: str, champion: Champion | None,
           metrics: dict[str, float] | None = None) -> Decision:
    """The rule itself, as a pure function of the new values and the champion.

    ``metrics`` holds the values of ``spec.also`` (each must beat its baseline too).
    """
    m = spec.metric
    if not math.isfinite(value):
        return Decision(False, f"{m}={value} is not finite", rejected=True)
    value = stored(value)
    if spec.baseline is not None and not spec.beats(value, stored(spec.baseline)):
        return _below_baseline(m, value, spec.baseline)
    for bar in spec.also:
        other = (metrics or {}).get(bar.metric)
        if other is None or not math.isfinite(other):
            return Decision(False, f"{bar.metric}={other} is missing or not finite",
                            rejected=True)
        if bar.baseline is not None and not bar.beats(stored(other), stored(bar.baseline)):
            return _below_baseline(bar.metric, stored(other), bar.baseline)
    if champion is None:
        return Decision(True, "first version: no champion yet")
    if champion.eval_hash != eval_hash:
        return Decision(False, f"evaluation sets differ (champion {champion.eval_hash}, new "
                               f"{eval_hash}): not comparable; promote explicitly if intended")
    old = champion.metrics.get(m)
    if old is None:
        return Decision(True, f"champion v{champion.version} has no {m}: replaced")
    gain = spec.gain(value, old)
    if gain > spec.min_improvement or (spec.min_improvement == 0 and gain > 0):
        return Decision(True, f"{m} {value:.4g} beats champion {old:.4g} (gain {gain:.4g})")
    return Decision(False, f"{m} {value:.4g} does not beat champion {old:.4g} by more than "
                           f"{spec.min_improvement}")


def compare(metrics: dict[str, float], eval_hash: str, champion: Champion | None) -> dict:
    """The new metrics next to the champion's, when both used the same evaluation set."""
    if champion is None:
        return {"champion_version": None, "comparable": False,
                "note": "no champion yet: nothing to compare with", "rows": []}
    if champion.eval_hash != eval_hash:
        return {"champion_version": champion.version, "comparable": False,
                "note": (f"not comparable: champion v{champion.version} was evaluated on "
                         f"{champion.eval_hash}, this version on {eval_hash}"), "rows": []}
    rows = []
    for k, v in sorted(metrics.items()):
        old = champion.metrics.get(k)
        rows.append({"metric": k, "new": v, "champion": old,
                     "delta": None if old is None else stored(v) - old})
    return {"champion_version": champion.version, "comparable": True,
            "note": f"same evaluation set ({eval_hash}) as champion v{champion.version}",
            "rows": rows}


def comparison_markdown(comparison: dict) -> str:
    """The "versus the champion" section of a model card."""
    head = f"## Versus the champion\n\n{comparison['note']}\n"
    if not comparison["comparable"]:
        return head

    def fmt(x: float | None, spec: str = ".4g") -> str:
        return "–" if x is None else format(x, spec)

    rows = "\n".join(f"| {r['metric']} | {fmt(r['new'])} | {fmt(r['champion'])} | "
                     f"{fmt(r['delta'], '+.4g')} |" for r in comparison["rows"])
    return (f"{head}\n| metric | this version | champion v{comparison['champion_version']} | Δ |"
            f"\n|---|---|---|---|\n{rows}\n")


@dataclass(frozen=True)
class Verdict:
    """What the gate did with one version."""

    decision: Decision
    previous: Champion | None
    comparison: dict


def apply(client, name: str, version: str, spec: GateSpec, metrics: dict[str, float],
          eval_hash: str) -> Verdict:
    """Gate ``version`` of ``name``: read the champion once, decide, move an alias.

    The caller holds :func:`gpt.registry.governance.registry_lock` for ``name``, so the champion
    read here is still the champion when the alias moves.
    """
    champion = read_champion(client, name)
    decision = decide(spec, metrics[spec.metric], eval_hash, champion, metrics)
    client.set_model_version_tag(name, version, DECISION, capped(decision.reason))
    if decision.rejected:  # worse than a trivial guess: neither alias
        client.set_model_version_tag(name, version, REJECTED, capped(decision.reason))
    elif decision.promote:
        set_champion(client, name, version, decision.reason, action="gate")
    else:
        client.set_registered_model_alias(name, CHALLENGER, version)
    return Verdict(decision, champion, compare(metrics, eval_hash, champion))
