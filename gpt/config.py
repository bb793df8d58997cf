"""Typed configuration for every stage, built once from ``params.yaml``.

Defaults live in ``params.yaml`` only: these models declare types and meaning, not values, so a
missing key is an error rather than a silently different default. A workspace's params.yaml
written by an older gptops still loads: the keys it lacks come from the project's params.yaml
(:func:`add_missing`) and keys that moved are carried to their new place (:data:`MOVED`,
:func:`upgrade_moved`). A profile overlays the model/train/launch/finetune/sft/evaluate
sections; ``overrides`` (``"train.lr=1e-3"``) overlay last, and an old key there is refused
with a line naming its new one.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gpt.defaults import DEFAULT_PROFILE
from gpt.errors import ConfigError
from gpt.layout import PROJECT_ROOT, Workspace

#: Sections a profile may change. Data sections are excluded on purpose: DVC reads them from
#: params.yaml, so a profile changing them would make the data version lie.
PROFILE_SECTIONS = ("model", "train", "launch", "finetune", "sft", "evaluate")
#: Sections read by the DVC data stages (dvc.yaml lists the same keys).
DATA_SECTIONS = ("data", "clean", "tokenizer")
#: The project's own params.yaml (the template new workspaces start from).
PROJECT_PARAMS = Workspace(PROJECT_ROOT).params_yaml


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MixSource(_Strict):
    """One corpus of a mixture (``data.sources``)."""

    source: str = Field(description="what data.source takes: builtin, a glob, hf:<dataset>")
    weight: float = Field(gt=0, description="its share of pretraining tokens (weights are "
                          "normalised to sum to 1); read by training only, not the data stages")


class DataConfig(_Strict):
    source: str = Field(description='"builtin", a glob of local .txt/.md/.jsonl/.parquet/.csv '
                        '(optionally .gz/.zst), or "hf:<dataset folder or name>"; "" with '
                        "data.sources")
    sources: list[MixSource] = Field(description="a mixture instead of data.source: "
                                     "[{source, weight}, ...]; [] = data.source alone")
    text_field: str = Field(description="field holding the text in structured sources")
    max_docs: int = Field(ge=0, description="0 = all documents, else N spread evenly")
    seed: int
    shard_mb: float = Field(gt=0, description="megabytes of text per data shard (each stage works "
                            "shard by shard: its memory follows this, not the corpus size)")
    on_bad_record: Literal["reject", "fail"] = Field(
        description="a record that is not a document (invalid JSON, missing/empty/non-string "
                    "text): reject = keep it as a rejected record, fail = stop naming every one")
    scrub_raw: bool = Field(description="replace the PII kinds of clean.pii at ingest "
                            "already, so data/raw (and the DVC cache and remote keeping it) "
                            "holds none; false = data/raw keeps the source's text as read")

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if self.sources and self.source.strip():
            raise ValueError(f"data.source '{self.source}' and data.sources are both set; set "
                             'data.source: "" to mix data.sources, or data.sources: [] for one '
                             "source")
        names = [s.source for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"data.sources lists a source twice ({names}); list each once")
        return self

    @property
    def mixture(self) -> tuple[tuple[str, float], ...]:
        """``(source, share)`` of each mixture source, shares summing to 1; () for one source."""
        total = sum(s.weight for s in self.sources)
        return tuple((s.source, s.weight / total) for s in self.sources)

    def single(self, source: str) -> DataConfig:
        """This section reading ``source`` alone (one corpus of a mixture)."""
        return self.model_copy(update={"source": source, "sources": []})


_NgramSize = Annotated[int, Field(ge=1, le=64)]
_Fraction = Annotated[float, Field(ge=0)]


class CleanConfig(_Strict):
    min_chars: int = Field(ge=0, description="shorter documents are rejected")
    max_chars: int = Field(gt=0, description="longer documents are rejected")
    min_words: int = Field(ge=0, description="fewer words are rejected")
    max_symbol_ratio: float = Field(ge=0, description="'#'/'...' per word")
    min_alpha_ratio: float = Field(ge=0, le=1, description="letter fraction floor")
    max_dup_line_fraction: float = Field(ge=0, le=1, description="repeated-line cap")
    exact_dedup: bool = Field(description="reject exact duplicates of the normalised text")
    max_invalid_ratio: float = Field(ge=0, le=1, description="U+FFFD fraction cap")
    max_words: int = Field(gt=0, description="more words are rejected")
    min_mean_word_length: float = Field(ge=0, description="mean word length floor")
    max_mean_word_length: float = Field(gt=0, description="mean word length cap")
    min_punct_line_fraction: float = Field(
        ge=0, le=1, description="floor on lines ending in punctuation")
    max_short_line_fraction: float = Field(ge=0, le=1, description="cap on short lines")
    short_line_chars: int = Field(ge=0, description="a line this long or shorter is short")
    max_dup_line_char_fraction: float = Field(
        ge=0, le=1, description="cap on the characters of repeated lines")
    max_dup_para_fraction: float = Field(ge=0, le=1, description="repeated-paragraph cap")
    max_dup_para_char_fraction: float = Field(
        ge=0, le=1, description="cap on the characters of repeated paragraphs")
    max_char_dup_fraction: float = Field(
        ge=0, le=1, description="cap on repeated lines' characters among non-newline ones")
    max_bullet_line_fraction: float = Field(ge=0, le=1, description="cap on bullet lines")
    max_ellipsis_line_fraction: float = Field(
        ge=0, le=1, description="cap on lines ending in an ellipsis")
    min_alpha_word_fraction: float = Field(
        ge=0, le=1, description="floor on tokens with a letter")
    min_stop_words: int = Field(ge=0, description="fewest distinct Gopher stop words")
    max_newline_ratio: float = Field(ge=0, description="cap on line breaks per token")
    reject_lorem_ipsum: bool = Field(description='reject texts with "lorem ipsum" (C4)')
    reject_curly_brackets: bool = Field(description="reject texts with a { (C4)")
    min_sentences: int = Field(ge=0, description="fewest sentences in C4's lines; 0 = off")
    min_line_words: int = Field(ge=0, description="C4 judges lines with this many words")
    max_line_word_chars: int = Field(gt=0, description="C4 drops lines with a longer word")
    max_top_ngram_fraction: list[tuple[_NgramSize, _Fraction]] = Field(
        description="[n, fraction] pairs: cap on the top n-gram's characters; [] = off")
    max_dup_ngram_fraction: list[tuple[_NgramSize, _Fraction]] = Field(
        description="[n, fraction] pairs: cap on repeated n-grams' characters; [] = off")
    decontaminate_ngram: int = Field(ge=0, description="words per n-gram a document may not "
                                     "share with an evaluation item; 0 = off")
    near_dedup: bool = Field(description="reject MinHash-LSH near duplicates")
    near_dedup_threshold: float = Field(gt=0, le=1, description="estimated Jaccard similarity")
    near_dedup_num_perm: int = Field(ge=16, le=1024, description="MinHash permutations")
    near_dedup_ngram: int = Field(ge=1, description="words per shingle")
    pii: list[Literal["email", "ip", "phone", "secret"]] = Field(
        description="PII kinds replaced by placeholders (<EMAIL>, <IP>, <PHONE>, <SECRET>)")
    url_blocklist: list[str] = Field(description="local files of blocked domains and "
                                     "'word:<w>' banned URL words (web sources); [] = off")
    languages: list[str] = Field(description="ISO 639 codes to keep (fastText lid.176, "
                                 "e.g. [en]); [] = no language identification")
    min_language_score: float = Field(ge=0, le=1, description="lowest lid.176 probability "
                                      "of a kept language")


#: How a Hugging Face folder or hub id is named: a checkpoint (``model.init_from``,
#: ``tokenizer.pretrained``, ``gptops import``) or a dataset (``data.source``).
HF_PREFIX = "hf:"


class TokenizerConfig(_Strict):
    vocab_size: int = Field(ge=260, le=2**32 - 1, description="BPE vocabulary size")
    min_frequency: int = Field(ge=1, description="minimum pair frequency for a BPE merge")
    val_fraction: float = Field(gt=0, lt=1, description="fraction of documents held out")
    seed: int
    train_sample_mb: float = Field(gt=0, description="megabytes of text (a seeded sample of the "
                                   "documents) the BPE is trained on")
    pretrained: str = Field(description='"" = train a byte-level BPE (vocab_size, '
                            'min_frequency); "hf:<folder or hub id>" = encode with that '
                            "checkpoint's tokenizer as is (required by model.init_from)")


class ModelConfig(_Strict):
    block_size: int = Field(gt=0, description="context length in tokens")
    n_layer: int = Field(gt=0)
    n_head: int = Field(gt=0)
    n_embd: int = Field(gt=0, description="width; must be divisible by n_head")
    dropout: float = Field(ge=0, lt=1)
    bias: bool = Field(description="bias in Linear and LayerNorm layers (GPT-2: true)")
    init_from: str = Field(description='"" = random init; "hf:<save_pretrained folder or '
                           'hub id>" = start from that GPT-2 checkpoint (block_size <= its '
                           "n_positions; n_layer, n_head, n_embd, bias must match it)")
    vocab_multiple: int = Field(ge=1, description="embedding rows rounded up to a multiple "
                                "of this; padded logits are dropped (1 = no padding)")


class _Schedule(_Strict):
    """Schedule and checkpoint fields every training section shares, in one shape (pretraining,
    fine-tuning and SFT): the floor and the checkpoints follow an ``lr`` or ``max_steps``
    override (and each trial of ``gptops tune``)."""

    max_steps: int = Field(gt=0, description="optimizer steps")
    batch_size: int = Field(gt=0, description="sequences per micro-batch over all processes "
                            "(split between them)")
    lr: float = Field(gt=0, description="peak learning rate")
    warmup_steps: int = Field(ge=0, description="steps of linear warmup to lr")
    min_lr_factor: float = Field(ge=0, le=1, description="floor of the cosine decay, as a "
                                 "fraction of lr (1 = constant lr after warmup)")
    weight_decay: float = Field(ge=0, description="AdamW weight decay (matrices only)")
    beta1: float = Field(gt=0, lt=1, description="AdamW beta1")
    beta2: float = Field(gt=0, lt=1, description="AdamW beta2")
    grad_clip: float = Field(ge=0, description="gradient-norm clip; 0 disables clipping")
    max_nonfinite_steps: int = Field(gt=0, description="stop after this many bad steps in a row")
    checkpoints: int = Field(gt=0, description="checkpoints per run: every max_steps // "
                             "checkpoints steps (at least 1) and at the last step")
    seed: int

    @property
    def min_lr(self) -> float:
        """The floor of the cosine decay: ``lr * min_lr_factor``."""
        return self.lr * self.min_lr_factor

    @property
    def checkpoint_interval(self) -> int:
        """Steps between two checkpoints: ``max_steps // checkpoints`` (at least 1)."""
        return max(1, self.max_steps // self.checkpoints)


class TrainConfig(_Schedule):
    """Pretraining: what it computes (in the pretrain step's key). How it is spread over
    processes and devices is the ``launch`` section's."""

    grad_accum: int = Field(gt=0, description="micro-batches per optimizer step")
    eval_interval: int = Field(gt=0)
    eval_batches: int = Field(gt=0)
    compile: bool = Field(description="torch.compile the model")
    log_interval: int = Field(ge=0, description="steps per tokens/s measurement; 0 = none")
    divergence_factor: float = Field(ge=0, description="stop when the loss stays above "
                                     "this many times ln(vocab) (a uniform guess) after "
                                     "warmup: the run diverged; 0 = off")
    divergence_steps: int = Field(gt=0, description="steps in a row above the divergence "
                                  "ceiling before training stops")
    bench_interval: int = Field(ge=0, description="steps between scorings of the built-in "
                                "benchmark suite on the live model (and at the last step), "
                                "logged as bench.<task>.<metric> step metrics of the pretrain "
                                "run; 0 = off. Changes no result: in no key")
    bench_limit: int = Field(gt=0, description="items per built-in task scored during "
                             "pretraining (the first ones: the same subset every time)")


class LaunchConfig(_Strict):
    """Where and over how many processes every training step runs (pretrain, fine-tune and SFT
    alike). In no step key: the global batch is the same whatever the world
    (:mod:`gpt.distributed`)."""

    device: str = Field(description='"auto" (cuda when present, else cpu), "cpu", "cuda" or '
                        '"cuda:N"')
    nproc_per_node: int | Literal["auto"] = Field(
        description='training processes on this machine: "auto" = one per visible GPU '
        "(1 without a GPU); >1 launches them with torch's elastic launcher")
    nnodes: int = Field(ge=1, description="machines in the training world (each runs "
                        "nproc_per_node processes); >1 needs rdzv_endpoint and node_rank")
    node_rank: int = Field(ge=0, description="this machine's index, 0..nnodes-1 (0 trains "
                           "and records the step; the others only lend their processes)")
    rdzv_endpoint: str = Field(description="host:port of node 0's rendezvous, reachable "
                               'from every node (only when nnodes > 1), e.g. "trainer-0:29500"')
    strategy: Literal["ddp", "fsdp"] = Field(
        description="ddp = a full model per process; fsdp = FSDP2 parameter sharding "
        "(for models that do not fit one GPU); checkpoints are whole-model either way")

    @model_validator(mode="after")
    def _world(self) -> LaunchConfig:
        if isinstance(self.nproc_per_node, int) and self.nproc_per_node < 1:
            raise ValueError(f"nproc_per_node={self.nproc_per_node}: use 'auto' or a count >= 1")
        if self.node_rank >= self.nnodes:
            raise ValueError(f"node_rank={self.node_rank} must be below nnodes={self.nnodes}")
        if self.nnodes > 1:
            host, _, port = self.rdzv_endpoint.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"nnodes={self.nnodes} needs rdzv_endpoint as host:port of "
                                 f"node 0 (got {self.rdzv_endpoint!r}), e.g. trainer-0:29500")
        return self


class _TuneConfig(_Schedule):
    """The fields fine-tuning and SFT share besides the schedule (each has its own values)."""

    test_fraction: float = Field(gt=0, lt=1)


class FinetuneConfig(_TuneConfig):
    task: Literal["package", "file"] = Field(
        description='"package" (built-in: docstring -> stdlib package) or "file" (task_path)')
    task_path: str = Field(description="CSV/JSONL/parquet with text,label columns (task=file)")
    test_path: str = Field(description='optional held-out text,label file (task=file); "" = '
                                       "split task_path by test_fraction")
    packages: list[str] = Field(min_length=2, description="label set of the package task")
    lr: float = Field(gt=0, description="learning rate of the classification head")
    base_lr_factor: float = Field(ge=0, description="body lr = lr * factor; 0 freezes the body")
    lora_rank: int = Field(ge=0, description="0 = full fine-tuning; >0 = LoRA adapters, merged")
    lora_alpha: float = Field(gt=0, description="LoRA scale numerator (update * alpha / rank)")


class SFTConfig(_TuneConfig):
    enabled: bool = Field(description="train, evaluate and register the SFT model")
    task: Literal["docsummary", "file"] = Field(
        description='"docsummary" (built-in: object name -> first sentence of its docstring) '
                    'or "file" (task_path: JSONL/CSV/parquet with prompt,completion)')
    task_path: str = Field(description="prompt,completion data (task=file)")
    task_type: Literal["summarise", "qa", "translate", "generic"] = Field(
        description="what the pairs are, which picks the metrics (gpt.kinds.SFT_TASK_METRICS): "
                    "summarise = ROUGE-1/2/L, qa = SQuAD exact match/F1, translate = BLEU/chrF, "
                    "generic = all; the gate's standard metric is ROUGE-L, F1, chrF, ROUGE-L")
    max_new_tokens: int = Field(gt=0, description="generation length at evaluation")


class EvaluateConfig(_Strict):
    max_items: int = Field(ge=0, description="the evaluation size: held-out SFT pairs generated "
                           "and items per benchmark task (0 = all)")
    ppl_batches: int = Field(gt=0, description="validation batches for perplexity")
    batch_size: int = Field(gt=0)
    seed: int
    # Benchmarks (gpt.benchmarks).
    builtin_benchmarks: bool = Field(description="score the built-in offline suite "
                                     "(items from validation documents)")
    benchmarks: list[str] = Field(description="lm-eval task names")
    benchmark_dirs: list[str] = Field(description="folders of your own lm-eval task YAMLs")

    @property
    def any_benchmarks(self) -> bool:
        return bool(self.builtin_benchmarks or self.benchmarks or self.benchmark_dirs)


class GateConfig(_Strict):
    """Per model kind, the metrics the promotion gate reads (``gpt.registry.gate``): the first
    decides against the champion; every one must beat its trivial baseline where it has one.
    Any evaluation metric, ``bench.<task>.<metric>`` included. ``[]`` = the kind's standard
    metrics (``standard_gate`` of its :mod:`gpt.kinds` record; SFT: the first of its
    ``sft.task_type``'s in ``gpt.kinds.SFT_TASK_METRICS``)."""

    base: list[str]
    task: list[str]
    sft: list[str]


class RegistryConfig(_Strict):
    tracking_uri: str = Field(description='"" = sqlite under <workdir>/.gptops/mlflow.db')
    experiment: str
    base_model: str
    task_model: str
    sft_model: str
    min_improvement: float = Field(ge=0, description="margin a challenger must beat champion by")
    license: str = Field(min_length=1, description="licence id declared in the model cards")
    system_metrics_interval: float = Field(
        ge=0, description="seconds between system metrics samples of a training run; 0 = off")
    gate: GateConfig


#: The base model's evaluation metrics a study can optimise, and in which direction.
TUNE_OBJECTIVES = {"val_loss": "minimize", "val_ppl": "minimize"}
#: Sections whose keys a study may search: each trial is a pretraining run, which reads these.
TUNE_SECTIONS = ("model", "train")


class TuneRange(_Strict):
    """A range of a searched parameter (an int parameter is searched over ints)."""

    low: float
    high: float
    # Defaults in code: a plain range, the shape a range takes unless it says ``log: true``.
    log: bool = Field(False, description="sample on a log scale (e.g. learning rates)")

    @model_validator(mode="after")
    def _order(self) -> TuneRange:
        if not self.low < self.high or (self.log and self.low <= 0):
            raise ValueError(f"low={self.low:g}, high={self.high:g}: need low < high "
                             "(and low > 0 with log: true)")
        return self


class TuneConfig(_Strict):
    space: dict[str, TuneRange | list[Any]] = Field(
        min_length=1, description="params key (model.* or train.*) -> {low, high, log} or a "
        "list of choices")
    objective: str = Field(description="the base model's evaluation metric to optimise: "
                           + ", ".join(f"{k} ({v})" for k, v in TUNE_OBJECTIVES.items()))
    trials: int = Field(gt=0, description="finished trials (complete or pruned) of the study")
    steps_per_trial: int = Field(gt=0, description="train.max_steps of each trial")
    seed: int = Field(description="the TPE sampler's seed")
    pruner_startup_trials: int = Field(ge=0, description="trials that finish before the median "
                                       "pruner may stop one")

    @model_validator(mode="after")
    def _objective(self) -> TuneConfig:
        if self.objective not in TUNE_OBJECTIVES:
            raise ValueError(f"objective {self.objective!r} is not a metric of the base model's "
                             f"evaluation (known: {', '.join(TUNE_OBJECTIVES)})")
        if any(isinstance(v, list) and not v for v in self.space.values()):
            raise ValueError("a searched key has an empty list of choices")
        return self


class WatchConfig(_Strict):
    """What ``gptops serve`` watches: ``data.source``'s files, or its hub revision."""

    enabled: bool = Field(description="a change of data.source runs retrain-on-data")
    interval_s: float = Field(gt=0, description="seconds between two looks at the files")
    remote_interval_s: float = Field(gt=0, description="seconds between two checks of an "
                                     "hf: hub dataset's revision (a request to the hub)")
    quiet_period_s: float = Field(ge=0, description="the change is announced once the files "
                                  "were left alone this long")


class NotifyConfig(_Strict):
    """Where ``gptops serve`` sends gate decisions and failed runs."""

    webhooks: list[str] = Field(description="URLs receiving Slack/Teams-compatible JSON")
    mlflow_webhooks: bool = Field(description="MLflow registry webhooks for versions registered "
                                  "and aliases moved outside gptops")

    @model_validator(mode="after")
    def _urls(self) -> NotifyConfig:
        for url in self.webhooks:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"webhook {url!r} is not an http(s):// URL")
        return self


class Params(_Strict):
    """Every run value, validated once."""

    data: DataConfig
    clean: CleanConfig
    tokenizer: TokenizerConfig
    model: ModelConfig
    train: TrainConfig
    launch: LaunchConfig
    finetune: FinetuneConfig
    sft: SFTConfig
    evaluate: EvaluateConfig
    registry: RegistryConfig
    tune: TuneConfig
    watch: WatchConfig
    notify: NotifyConfig
    profile: str = Field(description="the profile applied (resolve_params sets it)")


#: Keys that moved (old dotted key -> new one): the ``launch`` settings left ``train``,
#: pretraining took the schedule and checkpoint shape of fine-tuning and SFT, and the SFT pairs
#: and benchmark items scored became one evaluation size. A workspace's
#: params.yaml is carried over (:func:`upgrade_moved`); an old key in ``--set``, a profile or
#: ``tune.space`` is refused with a line naming the new one.
MOVED: dict[str, str] = {
    **{f"train.{k}": f"launch.{k}" for k in ("device", "nproc_per_node", "nnodes", "node_rank",
                                             "rdzv_endpoint", "strategy")},
    "train.min_lr": "train.min_lr_factor",
    "train.checkpoint_interval": "train.checkpoints",
    "sft.eval_examples": "evaluate.max_items",
    "evaluate.benchmark_limit": "evaluate.max_items",
}
#: The moved keys whose value changed meaning, and what the new key holds.
_MOVED_MEANING = {
    "train.min_lr": ("the floor as a fraction of train.lr", "0.1"),
    "train.checkpoint_interval": ("checkpoints per run, every max_steps // checkpoints steps",
                                  "3"),
}


def moved_message(old: str, value: Any = None) -> str:
    """The one line that refuses a key of :data:`MOVED` and names its new key."""
    new = MOVED[old]
    if old in _MOVED_MEANING:
        meaning, example = _MOVED_MEANING[old]
        return f"parameter '{old}' is now '{new}', {meaning} (e.g. {new}={example})"
    shown = "..." if value is None else str(value).lower() if isinstance(value, bool) else value
    return f"parameter '{old}' is now '{new}' (write {new}={shown})"


def _put(node: Any, key: str, value: Any, at: str | None = None) -> None:
    """``node[key] = value``, placed where ``at`` is in a round-trip (ruamel) mapping."""
    keys = list(node)
    if at in keys and hasattr(node, "insert"):
        node.insert(keys.index(at), key, value)
    else:
        node[key] = value


def _moved_value(old: str, value: Any, train: dict[str, Any], base: dict[str, Any]) -> Any:
    """The value of ``old``'s new key: ``min_lr`` as a fraction of ``lr``, ``checkpoint_interval``
    as a count (``lr``/``max_steps`` from ``train``, else from ``base``: a profile's section)."""
    if old not in _MOVED_MEANING:
        return value
    try:
        if old == "train.min_lr":
            return float(f"{float(value) / float(train.get('lr', base.get('lr'))):.12g}")
        return max(1, int(train.get("max_steps", base.get("max_steps"))) // int(value))
    except (TypeError, ValueError, ZeroDivisionError):
        raise ConfigError(moved_message(old) + f"; {old}={value!r} could not be carried over: "
                          "set it by hand in params.yaml") from None


def upgrade_moved(tree: Any) -> list[str]:
    """Carry the keys of :data:`MOVED` in ``tree`` (a raw params dict or ruamel's round-trip
    mapping) and in its profiles to their new place, in place; a new key already set wins.
    Returns one note per key moved (``train.device -> launch.device``)."""
    notes: list[str] = []
    base = tree.get("train") if isinstance(tree.get("train"), dict) else {}
    profiles = tree.get("profiles") if isinstance(tree.get("profiles"), dict) else {}
    nodes = [("", tree), *((f"profiles.{name}.", node) for name, node in profiles.items()
                           if isinstance(node, dict))]
    for prefix, node in nodes:
        for old, new in MOVED.items():
            section, key = old.split(".")
            values = node.get(section)
            if not isinstance(values, dict) or key not in values:
                continue
            value = _moved_value(old, values[key], values, base if prefix else {})
            new_section, new_key = new.split(".")
            if not isinstance(node.get(new_section), dict):  # placed after ``section``
                keys = list(node)
                after = keys[keys.index(section) + 1:]
                _put(node, new_section, {}, at=after[0] if after else None)
            target = node[new_section]
            if new_key not in target:
                _put(target, new_key, value, at=key if target is values else None)
            del values[key]
            shown = f"={value}" if old in _MOVED_MEANING else ""
            notes.append(f"{prefix}{old} -> {prefix}{new}{shown}")
    return notes


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``tree["a"]["b"] = value`` for ``"a.b"``; unknown sections or keys are errors (a key
    of :data:`MOVED` names its new key)."""
    if dotted in MOVED:
        raise ConfigError(moved_message(dotted, value))
    keys = dotted.split(".")
    node = tree
    for i, key in enumerate(keys[:-1]):
        if not isinstance(node.get(key), dict):
            sections = [k for k, v in node.items() if isinstance(v, dict)]
            raise ConfigError(f"unknown parameter '{dotted}': '{'.'.join(keys[: i + 1])}' "
                              f"is not a section{_did_you_mean(key, sections, keys[:i])}; "
                              "see params.yaml for the known keys")
        node = node[key]
    if keys[-1] not in node:
        known = ", ".join(sorted(node))
        raise ConfigError(f"unknown parameter '{dotted}'{_did_you_mean(keys[-1], node, keys[:-1])}"
                          f" (known in this section: {known})")
    node[keys[-1]] = value


def _did_you_mean(word: str, known: Any, prefix: list[str]) -> str:
    """`` (did you mean 'train.max_steps'?)`` for the closest known key, or nothing."""
    import difflib

    close = difflib.get_close_matches(word, [str(k) for k in known], n=1, cutoff=0.6)
    return f" (did you mean '{'.'.join([*prefix, close[0]])}'?)" if close else ""


def parse_overrides(overrides: list[str] | None) -> dict[str, Any]:
    """Parse ``["train.lr=1e-3", ...]`` into ``{"train.lr": 0.001}`` (values as YAML)."""
    out: dict[str, Any] = {}
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"bad override '{item}': write it as section.key=value")
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            # Safe loading refuses tags such as !!python/object/apply:...; PyYAML's own text
            # spans several lines with a caret, so only its one-line ``problem`` is kept.
            problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
            raise ConfigError(f"bad override '{key.strip()}': the value {raw!r} is not plain "
                              f"YAML ({problem}); give a number, string, true/false or a list "
                              "such as [a, b], with no !! tags") from None
    return out


def read_params_file(path: Path) -> dict[str, Any]:
    """Read ``params.yaml`` as a plain dict, with a clear error when it is missing or broken."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path} (run from a gptops workspace or "
                          "pass --workdir)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"params file {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"params file {path} must hold a mapping of sections")
    return raw


def resolve_params(raw: dict[str, Any], profile: str = DEFAULT_PROFILE,
                   overrides: list[str] | dict[str, Any] | None = None) -> Params:
    """Apply ``profile`` and ``overrides`` to a raw params dict and validate it."""
    tree = copy.deepcopy(raw)
    profiles = tree.pop("profiles", {}) or {}
    if profile not in profiles:
        raise ConfigError(f"unknown profile '{profile}' (known: {', '.join(sorted(profiles))})")
    for section, values in (profiles[profile] or {}).items():
        if section not in PROFILE_SECTIONS:
            raise ConfigError(f"profile '{profile}' may not change section '{section}' "
                              f"(allowed: {', '.join(PROFILE_SECTIONS)})")
        for key, value in values.items():
            set_dotted(tree, f"{section}.{key}", value)
    pairs = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    for key, value in pairs.items():
        set_dotted(tree, key, value)
    tree["profile"] = profile
    try:
        params = Params.model_validate(tree)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        if first["type"] == "value_error":  # a check of several fields: its message says all
            raise ConfigError(f"invalid parameter '{where}': "
                              f"{first['msg'].removeprefix('Value error, ')}") from exc
        raise ConfigError(f"invalid parameter '{where}': {first['msg']} "
                          f"(got {first.get('input')!r}); fix params.yaml or the override") from exc
    if params.model.n_embd % params.model.n_head:
        raise ConfigError(f"invalid parameter 'model.n_embd': {params.model.n_embd} is not "
                          f"divisible by model.n_head={params.model.n_head}")
    check_pretrained_specs(params.model.init_from, params.tokenizer.pretrained)
    check_tune_space(params)
    return params


def check_tune_space(params: Params) -> None:
    """Each key of ``tune.space`` names a model/train parameter, and each value it can take
    (a range's ends, every choice) is valid there: a bad space fails before any trial.

    Raises:
        ConfigError: an unknown or unsearchable key, or a value its field refuses.
    """
    for key, spec in params.tune.space.items():
        section, _, name = key.partition(".")
        where = f"tune.space key '{key}'"
        if key in MOVED:
            raise ConfigError(f"{where}: {moved_message(key)}")
        if section not in TUNE_SECTIONS or "." in name:
            raise ConfigError(f"{where}: trials are pretraining runs, so only "
                              f"{' and '.join(s + '.*' for s in TUNE_SECTIONS)} keys can be "
                              "searched (e.g. train.lr, model.n_layer)")
        fields = type(getattr(params, section)).model_fields
        if name not in fields:
            raise ConfigError(f"{where}: unknown parameter{_did_you_mean(name, fields, [section])}"
                              f" (known in {section}: {', '.join(sorted(fields))})")
        if key == "train.max_steps":
            raise ConfigError(f"{where}: each trial's steps are tune.steps_per_trial; search "
                              "other keys")
        values = [spec.low, spec.high] if isinstance(spec, TuneRange) else spec
        current = getattr(params, section)
        for value in values:
            try:
                type(current).model_validate({**current.model_dump(), name: value})
            except ValidationError as exc:
                raise ConfigError(f"{where}: the value {value!r} is invalid there "
                                  f"({exc.errors()[0]['msg']}); fix tune.space in "
                                  "params.yaml") from None


def check_pretrained_specs(init_from: str, pretrained: str) -> None:
    """``model.init_from`` and ``tokenizer.pretrained``: "" or ``hf:<...>``, and the model reads
    its own tokenizer's ids (so when ``init_from`` is set, both name the same checkpoint)."""
    for key, spec in (("model.init_from", init_from), ("tokenizer.pretrained", pretrained)):
        if spec and (not spec.startswith(HF_PREFIX)
                     or not spec.removeprefix(HF_PREFIX).strip()):
            raise ConfigError(f"invalid parameter '{key}': {spec!r} is not hf:<save_pretrained "
                              'folder or hub id> (e.g. hf:gpt2); "" = off')
    if init_from and pretrained != init_from:
        fix = (f"add --set tokenizer.pretrained={init_from} (a profile cannot set it: the "
               "data stages read the tokenizer section from params.yaml)")
        if pretrained:
            raise ConfigError(f"tokenizer.pretrained={pretrained!r} differs from model.init_from"
                              f"={init_from!r}: the model reads its own tokenizer's ids; {fix}")
        raise ConfigError(f"model.init_from={init_from!r} needs its own tokenizer for the data: "
                          f"{fix}")


def profile_names(path: str | Path = PROJECT_PARAMS) -> list[str]:
    """The profiles a params file defines (the default profile first)."""
    names = sorted(read_params_file(Path(path)).get("profiles") or {})
    return sorted(names, key=lambda n: n != DEFAULT_PROFILE)


def get_dotted(params: Params, dotted: str) -> Any:
    """``params.a.b`` for ``"a.b"``."""
    value: Any = params
    for key in dotted.split("."):
        value = getattr(value, key)
    return value


def load_params(path: str | Path = "params.yaml", profile: str = DEFAULT_PROFILE,
                overrides: list[str] | dict[str, Any] | None = None) -> Params:
    """Load, overlay and validate ``params.yaml``.

    Args:
        path: the params file.
        profile: a name under ``profiles:`` in the file.
        overrides: ``"section.key=value"`` strings (or an already parsed mapping).

    Raises:
        ConfigError: missing file, unknown profile or key, or an invalid value.
    """
    raw = read_params_file(Path(path))
    return resolve_params(with_project_defaults(raw, Path(path)), profile, overrides)


def missing_keys(raw: dict[str, Any], template: dict[str, Any]) -> list[str]:
    """Dotted keys ``template`` has and ``raw`` lacks, outside ``profiles`` (a workspace's
    params.yaml written by an older gptops lacks the keys of newer features)."""
    out: list[str] = []

    def walk(have: dict[str, Any], want: dict[str, Any], prefix: str) -> None:
        for key, value in want.items():
            if prefix == "" and key == "profiles":
                continue
            if key not in have:
                out.append(prefix + key)
            elif isinstance(value, dict) and isinstance(have[key], dict):
                walk(have[key], value, f"{prefix}{key}.")

    walk(raw, template, "")
    return out


def add_missing(tree: Any, template: dict[str, Any]) -> list[str]:
    """Add to ``tree`` (a dict, or ruamel's round-trip mapping) the keys of ``template`` it
    lacks (:func:`missing_keys`), with ``template``'s values; returns the keys added."""
    keys = missing_keys(tree, template)
    for dotted in keys:
        node, want = tree, template
        *parents, last = dotted.split(".")
        for key in parents:
            node, want = node[key], want[key]
        node[last] = copy.deepcopy(want[last])
    return keys


_PROJECT_CACHE: dict[tuple[int, int], dict[str, Any]] = {}


def project_params() -> dict[str, Any]:
    """The project's params.yaml as a plain dict, parsed once per state of the file (shared:
    read it, never change it)."""
    st = PROJECT_PARAMS.stat()
    stamp = (st.st_mtime_ns, st.st_size)
    if stamp not in _PROJECT_CACHE:
        _PROJECT_CACHE.clear()
        _PROJECT_CACHE[stamp] = read_params_file(PROJECT_PARAMS)
    return _PROJECT_CACHE[stamp]


def upgrade_tree(tree: Any) -> tuple[list[str], list[str]]:
    """Bring a workspace's params (a dict, or ruamel's round-trip mapping) to this gptops' keys,
    in place: the moved keys to their new place (:func:`upgrade_moved`), then the keys it lacks
    from the project's params.yaml (:func:`add_missing`). Returns (moved notes, keys added)."""
    moved = upgrade_moved(tree)
    if not PROJECT_PARAMS.is_file():
        return moved, []
    return moved, add_missing(tree, project_params())


def with_project_defaults(raw: dict[str, Any], path: Path | None = None) -> dict[str, Any]:
    """``raw`` brought to this gptops' keys (:func:`upgrade_tree`), in a copy."""
    if path is not None and path.resolve() == PROJECT_PARAMS:
        return raw
    tree = copy.deepcopy(raw)
    return tree if any(upgrade_tree(tree)) else raw
