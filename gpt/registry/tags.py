"""The registry's tag schema: what gptops writes on a registered model version, and reads back.

A version's tags say which trained weights and which evaluation it holds (``model_key``,
``eval_key``, ``eval_hash``), its headline metrics at the precision the gate compares
(``metric.<name>``; the gate's own in ``primary_metric``), its lineage (``data_version``,
``git_commit``, ``parent_model_version``, ...: the pipeline run's tags, passed through) and, once
gated, the gate's verdict (``promotion_decision``; ``rejected`` when it did not beat its trivial
baseline). :class:`VersionTags` writes them and reads them back, an older version's included:
any of them may be missing.

The registered model has two tags of its own (:data:`TASK_TAG`, :data:`HISTORY_TAG`), and
every value gptops writes is cut to MLflow's cap (:func:`capped`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

#: MLflow's SQL stores keep at most this many characters of a registered model's tag value or
#: description, and of a version's tag value in a store whose schema predates MLflow's
#: migration of 2025-06 (``model_version_tags.value`` became unlimited then).
VALUE_CAP = 5000
#: What gptops fills when it composes a long value itself (the champion history's JSON, the
#: registered model's description): the cap, less a margin.
COMPOSED_CAP = VALUE_CAP - 100
#: Significant digits of a stored metric (``metric.<name>``): the precision the gate compares.
SIGNIFICANT = 6

# --- on a model version -------------------------------------------------------------------------
#: The trained weights it holds: one version per model key.
MODEL_KEY = "model_key"
#: The evaluation it was registered with.
EVAL_KEY = "eval_key"
#: The evaluation set: versions are compared only on equal hashes.
EVAL_HASH = "eval_hash"
#: The metric its gate decides on.
PRIMARY_METRIC = "primary_metric"
#: The prefix of each stored metric: ``metric.val_ppl``.
METRIC_PREFIX = "metric."
#: Why the gate (or a promotion by hand) did what it did; absent = never gated.
DECISION = "promotion_decision"
#: Why the gate refused it (worse than its trivial baseline); absent = not refused.
REJECTED = "rejected"
#: Lineage: the version it was tuned from (``<name>/<version>``; tuned models only).
PARENT = "parent_model_version"
#: Lineage every run and version of a pipeline run carries (``gpt.pipeline.context.lineage``).
DATA_VERSION = "data_version"
GIT_COMMIT = "git_commit"
#: ``true`` when the tracked code differed from ``git_commit``.
GIT_DIRTY = "git_dirty"
#: The digest of the source files the version's step executed (``gpt.pipeline.keys.CODE``).
CODE_HASH = "code_hash"
FLOW_RUN = "prefect_flow_run_id"
#: The flow run's page in the Prefect UI; only when a UI served it while the run ran (absent
#: otherwise: no dead link, the id above still names the run).
FLOW_RUN_URL = "prefect_flow_run_url"
PROFILE = "profile"
#: Why a run started when something other than a person or the schedule started it (e.g.
#: "data changed: 1 new or changed file (b.jsonl)"); on the parent run and every step's run.
TRIGGER = "gptops.trigger"
INIT_FROM = "init_from"
INIT_FROM_SHA = "init_from_sha"

# --- on a checkpoint's logged model (:mod:`gpt.registry.checkpoints`) and its version ------------
#: The optimizer step the checkpoint was written at.
CHECKPOINT_STEP = "checkpoint_step"
#: The checkpoint's folder: its weights stay there (the logged model links them, not copies).
CHECKPOINT_PATH = "checkpoint_path"
#: On a version registered from a checkpoint: the checkpoint's logged model (``m-...``).
CHECKPOINT_MODEL = "checkpoint_model_id"
#: On a version registered from a checkpoint: the run that trained it.
CHECKPOINT_RUN = "checkpoint_run_id"

# --- on a registered model ----------------------------------------------------------------------
#: Its transformers task (``text-generation``, ``text-classification``).
TASK_TAG = "gptops.task"
#: Its champion moves, as JSON (:mod:`gpt.registry.governance`).
HISTORY_TAG = "gptops.champion_history"

# --- on a training run --------------------------------------------------------------------------
#: The step that trained it (``pretrain``...) and its key; a registration's own run: the kind.
STEP_TAG = "gptops.step"
STEP_KEY = "step_key"
KIND_TAG = "gptops.kind"


def capped(text: str, cap: int = VALUE_CAP) -> str:
    """``text`` cut to what MLflow stores (``cap`` characters)."""
    return text[:cap]


def metric_tag(value: float) -> str:
    """A metric as the registry stores it."""
    return f"{value:.{SIGNIFICANT}g}"


@dataclass(frozen=True)
class VersionTags:
    """The tags of one registered model version, as fields."""

    model_key: str = ""
    eval_key: str = ""
    eval_hash: str | None = None
    primary_metric: str = ""
    #: stored as ``metric.<name>`` at :data:`SIGNIFICANT` digits; read back as floats
    metrics: dict[str, float] = field(default_factory=dict)
    #: every other tag, as given: the lineage and whatever the pipeline run tags
    lineage: dict[str, str] = field(default_factory=dict)
    decision: str | None = None  #: the gate's reason (None = never gated)
    rejected: str | None = None  #: why the gate refused it (None = not refused)

    @property
    def parent(self) -> str:
        return self.lineage.get(PARENT, "")

    @property
    def data_version(self) -> str:
        return self.lineage.get(DATA_VERSION, "")

    @property
    def git_commit(self) -> str:
        return self.lineage.get(GIT_COMMIT, "")

    @property
    def git_dirty(self) -> bool:
        return self.lineage.get(GIT_DIRTY) == "true"

    @property
    def code_hash(self) -> str:
        return self.lineage.get(CODE_HASH, "")

    @property
    def flow_run_url(self) -> str:
        return self.lineage.get(FLOW_RUN_URL, "")

    def to_tags(self) -> dict[str, str]:
        """The tags to write: lineage first, so a schema field is never overwritten by it;
        ``None`` values are left out."""
        tags: dict[str, object] = {
            **self.lineage, MODEL_KEY: self.model_key, EVAL_KEY: self.eval_key,
            EVAL_HASH: self.eval_hash, PRIMARY_METRIC: self.primary_metric,
            **{METRIC_PREFIX + k: metric_tag(v) for k, v in self.metrics.items()}}
        if self.decision is not None:
            tags[DECISION] = capped(self.decision)
        if self.rejected is not None:
            tags[REJECTED] = capped(self.rejected)
        return {k: str(v) for k, v in tags.items() if v is not None}

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> VersionTags:
        """The fields of a version's tags; a metric that is not a number is left out."""
        metrics: dict[str, float] = {}
        lineage: dict[str, str] = {}
        for k, v in tags.items():
            if k.startswith(METRIC_PREFIX):
                try:
                    metrics[k.removeprefix(METRIC_PREFIX)] = float(v)
                except ValueError:
                    continue
            elif k not in _FIELDS:
                lineage[k] = v
        return cls(model_key=tags.get(MODEL_KEY, ""), eval_key=tags.get(EVAL_KEY, ""),
                   eval_hash=tags.get(EVAL_HASH), primary_metric=tags.get(PRIMARY_METRIC, ""),
                   metrics=metrics, lineage=lineage, decision=tags.get(DECISION),
                   rejected=tags.get(REJECTED))


#: Tags that are fields of :class:`VersionTags` (the rest is lineage).
_FIELDS = (MODEL_KEY, EVAL_KEY, EVAL_HASH, PRIMARY_METRIC, DECISION, REJECTED)
