"""Human-readable summaries of a pipeline run (markdown for Prefect/MLflow, rows for the CLI)."""

from __future__ import annotations

import math
from typing import Any

from gpt.progress import fmt_rate

#: Per-class classifier metrics: in the model's artifacts, not in a summary table.
PER_CLASS = ("precision_", "recall_", "f1_")
#: The SFT metrics a summary shows, those of the model's task type in this order.
SFT_SHOWN = ("rouge_l", "chrf", "bleu", "token_f1")


def _trained(r: dict[str, Any]) -> str:
    """One training step in a few words: reused, or what it ran."""
    if r["reused"]:
        return f"reused (key {r['key'][:8]}): unchanged since it was trained"
    text = f"{r['steps']} steps on {r['device']}"
    if r["resumed_from"]:
        text += f" (resumed at step {r['resumed_from']})"
    text += f", {r['seconds']:.0f}s"
    if r.get("tokens_per_sec"):
        text += f", {fmt_rate(r['tokens_per_sec'])}"
    return f"{text} (key {r['key'][:8]})"


def _bench_rows(kind: str, metrics: dict[str, float]) -> list[tuple[str, str]]:
    """One row per benchmark task: its metrics (a trivial baseline, e.g. chance, after each)."""
    tasks: dict[str, list[str]] = {}
    for name, value in metrics.items():
        if name.startswith("bench."):
            _, task, metric = name.split(".", 2)
            base = metrics.get(f"baseline_{name}")
            tasks.setdefault(task, []).append(
                f"{metric} {value:.4g}" + ("" if base is None else f" (chance {base:.3g})"))
    return [(f"{kind}: benchmark {task}", ", ".join(v)) for task, v in tasks.items()]


def summary_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    """(item, value) rows describing a finished pipeline run."""
    rows: list[tuple[str, str]] = [("data version", result["data_version"])]
    for s in result["stages"]:
        rows.append((f"data: {s['stage']}", "ran" if s["ran"] else "reused (DVC cache)"))
    tuned = result.get("finetune") or {}
    if tuned.get("info", {}).get("base_version"):
        rows.append(("base", f"{tuned['info']['base']} = {tuned['info']['base_version']} "
                             "(registered; no pretraining)"))
    for step in ("pretrain", "finetune", "sft"):
        if result.get(step):
            rows.append((step, _trained(result[step])))
    evaluation = result["evaluation"]
    if "base" in evaluation:
        base = evaluation["base"]["metrics"]
        rows.append(("base: val loss / perplexity",
                     f"{base['val_loss']:.3f} / {base['val_ppl']:.1f}"))
    task = evaluation["task"]["metrics"]
    rows.append(("task: accuracy (majority baseline)",
                 f"{task['accuracy']:.3f} ({task['baseline_accuracy']:.3f})"))
    rows.append(("task: macro-F1 (majority baseline)",
                 f"{task['macro_f1']:.3f} ({task['baseline_macro_f1']:.3f})"))
    unseen = evaluation["task"].get("unseen_labels")
    if unseen:
        rows.append(("task: test labels unseen in training (rows left out)",
                     ", ".join(f"{k}: {v}" for k, v in unseen.items())))
    if "sft" in evaluation:
        sft = evaluation["sft"]["metrics"]
        shown = [m for m in SFT_SHOWN if m in sft]  # those of its sft.task_type
        rows.append((f"sft: {' / '.join(shown)} (base model)",
                     " / ".join(f"{sft[m]:.3f}" for m in shown) + " ("
                     + " / ".join(f"{sft[f'baseline_{m}']:.3f}" for m in shown) + ")"))
    for kind in ("base", "sft"):
        if kind in evaluation:
            rows += _bench_rows(kind, evaluation[kind]["metrics"])
    for reg in result["registered"].values():
        state = ("champion" if reg["champion"] else "rejected" if reg.get("rejected")
                 else "challenger")
        rows.append((f"registry: {reg['name']}", f"v{reg['version']} {state}: {reg['reason']}"))
    rows.append(("wall time", f"{result['seconds']:.0f}s"))
    return rows


def summary_markdown(result: dict[str, Any]) -> str:
    """The run summary as a markdown table (a Prefect artifact and an MLflow artifact)."""
    lines = ["# gptops pipeline run", "", "| item | value |", "|---|---|"]
    lines += [f"| {k} | {v.replace('|', '/')} |" for k, v in summary_rows(result)]
    lines += link_lines(result)
    samples = result["evaluation"].get("base", {}).get("examples") or []
    if samples:
        lines += ["", "## Sample generations (base model)", ""]
        lines += [f"- **{s['prompt']}**{s['completion'].replace(chr(10), ' ')[:200]}"
                  for s in samples]
    return "\n".join(lines) + "\n"


def link_lines(result: dict[str, Any]) -> list[str]:
    """Markdown links to the run's pages in the UIs that serve them (none: no lines)."""
    lines = []
    if result.get("prefect_flow_run_url"):
        url = result["prefect_flow_run_url"]
        lines.append(f"- Prefect flow run: [{url}]({url})")
    pages = result.get("mlflow_pages") or {}
    if pages.get("run"):
        lines.append(f"- MLflow pipeline run: [{pages['run']}]({pages['run']})")
    for kind, reg in result["registered"].items():
        if pages.get(kind):
            lines.append(f"- MLflow {reg['name']} version {reg['version']}: "
                         f"[{pages[kind]}]({pages[kind]})")
    return ["", "## Links", "", *lines] if lines else []


def evaluation_rows(evaluation: dict[str, Any],
                    registered: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One row per metric of one model's evaluation: its value, its trivial baseline and the
    champion's value it was compared with (None where there is none)."""
    metrics = evaluation["metrics"]
    champion = (registered or {}).get("champion_metrics") or {}
    rows = []
    for name, value in metrics.items():
        if name.startswith(("baseline_", *PER_CLASS)):
            continue
        rows.append({"metric": name, "value": _num(value),
                     "baseline": _num(metrics.get(f"baseline_{name}")),
                     "champion": _num(champion.get(name))})
    return rows


def _num(value: Any) -> float | None:
    """A metric at 4 significant digits (None stays None)."""
    if value is None or not math.isfinite(float(value)):
        return None
    return float(f"{float(value):.4g}")
