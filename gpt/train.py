"""The training loop shared by pretraining and fine-tuning.

AdamW (fused kernel on CPU and CUDA; weight decay on matrices only), linear warmup + cosine
decay, gradient accumulation, clipping, bf16 autocast on CUDA, optional ``torch.compile``, a
non-finite loss guard, atomic checkpoints with exact resume, and DDP under ``torchrun``. Metrics
leave through a callback, so tracking (MLflow) is injected rather than imported here.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from gpt import checkpoint as ckpt
from gpt import distributed, kinds, progress, stopping
from gpt.config import LaunchConfig, ModelConfig, TrainConfig
from gpt.data.loader import TokenData, step_generator
from gpt.errors import CheckpointError, ConfigError, Interrupted, TrainingError
from gpt.kinds import ModelKind
from gpt.loss import before_compile
from gpt.model import GPT, GPTConfig

log = logging.getLogger(__name__)

#: callback(step, metrics) — e.g. an MLflow logger that batches metrics. One that also has a
#: ``checkpoint(step, path)`` method is told of each checkpoint written (rank 0, after the step's
#: metrics, which then include the validation loss: evaluation is due at every checkpoint).
MetricsCallback = Callable[[int, dict[str, float]], None]
#: loss_fn(model, step, micro_step) -> scalar loss for one micro-batch.
LossFn = Callable[[nn.Module, int, int], torch.Tensor]


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"launch.device={name} but CUDA is not available; use auto or cpu")
    return torch.device(name)


def lr_at(step: int, peak: float, floor: float, warmup: int, total: int) -> float:
    """Linear warmup to ``peak``, then cosine decay to ``floor`` at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if step >= total:
        return floor
    ratio = (step - warmup) / max(1, total - warmup)
    return floor + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (peak - floor)


#: Devices with a fused AdamW kernel in torch >= 2.4.
FUSED_ADAMW_DEVICES = ("cpu", "cuda")


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
                   device: torch.device, lr_scale: dict[str, float] | None = None,
                   ) -> torch.optim.AdamW:
    """AdamW with decay on matrices only (not biases, LayerNorms).

    ``lr_scale`` maps a parameter-name prefix to a multiplier of the base lr (e.g. the pretrained
    body at 0.3x the head's rate); a multiplier of 0 freezes those parameters.
    """
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        scale = 1.0
        for prefix, s in (lr_scale or {}).items():
            if name.startswith(prefix):
                scale = s
        if scale == 0.0:
            p.requires_grad_(False)
            continue
        groups.setdefault((p.dim() >= 2, scale), []).append(p)
    param_groups = [{"params": ps, "weight_decay": weight_decay if decay else 0.0,
                     "lr_scale": scale} for (decay, scale), ps in groups.items()]
    # The fused kernel: one pass per parameter instead of a chain of foreach ops (on CPU 4x
    # faster for the demo model, ~8% of a training step).
    return torch.optim.AdamW(param_groups, lr=lr, betas=betas,
                             fused=device.type in FUSED_ADAMW_DEVICES)


@dataclass
class LoopSettings:
    """How the loop optimises, whatever the run: every value comes from the run's config."""

    kind: str  # the step (gpt.kinds: "pretrain"...): the progress label, checkpoints' metadata
    max_steps: int
    lr: float
    min_lr: float
    warmup_steps: int
    grad_accum: int
    grad_clip: float  # 0 disables clipping
    max_nonfinite_steps: int
    #: after warmup, a loss above this for ``max_loss_steps`` steps in a row stops the run
    max_loss: float = math.inf
    max_loss_steps: int = 1

    @classmethod
    def from_train(cls, t: TrainConfig, vocab_size: int) -> LoopSettings:
        ceiling = t.divergence_factor * math.log(vocab_size) if t.divergence_factor else math.inf
        return cls(kind=kinds.BASE.step, max_steps=t.max_steps, lr=t.lr, min_lr=t.min_lr,
                   warmup_steps=t.warmup_steps, grad_accum=t.grad_accum, grad_clip=t.grad_clip,
                   max_nonfinite_steps=t.max_nonfinite_steps, max_loss=ceiling,
                   max_loss_steps=t.divergence_steps)


def _due(done: int, interval: int, total: int) -> bool:
    """Every ``interval`` steps and at the last step."""
    return done % interval == 0 or done == total


@dataclass
class CheckpointPolicy:
    """Where and how often the loop checkpoints, and whether it resumes from the newest valid
    checkpoint. A checkpoint holds the weights, the optimizer state and the RNG states."""

    directory: Path
    interval: int
    resume: bool

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                device: torch.device) -> int:
        """Load the newest valid checkpoint into ``model`` and ``optimizer``; its step, else 0.

        A sharded (FSDP) model takes the whole-model weights and keeps its shard; its optimizer
        state is keyed by parameter name, which a plain model can load too.
        """
        if not self.resume:
            return 0
        for path in ckpt.list_checkpoints(self.directory):
            try:
                return self._load(path, model, optimizer, device)
            except CheckpointError as exc:  # corrupt, truncated or hostile: the previous one
                if distributed.rank() == 0:
                    log.warning("skipping %s", exc)
        return 0

    def _load(self, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
              device: torch.device) -> int:
        sharded = distributed.is_sharded(model)
        state, manifest = ckpt.load_checkpoint(path, None if sharded else model)
        meta = manifest.get("meta", {})
        by_name = meta.get("optimizer") == "by-name"
        if sharded and not by_name:  # an input error, not a bad file: no falling back
            raise ConfigError(
                f"checkpoint {path} was written with launch.strategy=ddp (or one process); "
                "resume it with launch.strategy=ddp, or delete its checkpoints folder to start "
                "over with fsdp")
        if by_name:  # a plain model loaded its weights above
            distributed.load_full_state(model, ckpt.read_weights(path) if sharded else None,
                                        optimizer, state["optimizer"])
        else:
            optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng_cpu"])
        if device.type == "cuda" and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"], device)
        step = int(manifest["step"])
        if distributed.rank() == 0:
            # The global batch does not depend on the world (gpt.distributed), so a checkpoint
            # from any number of processes resumes on any other.
            saved = int(meta.get("world", 1))
            now = distributed.world()
            log.info("resumed from %s (step %d%s)", path.name, step,
                     f"; written by {saved} processes, now {now}" if saved != now else "")
        return step

    def save(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
             device: torch.device, meta: dict[str, Any]) -> Path | None:
        """Every process calls it (a sharded model is gathered); rank 0 writes, and gets the
        checkpoint's folder (the others None)."""
        sharded = distributed.is_sharded(model)
        tensors = distributed.full_state_dict(model) if sharded else None
        optim = (distributed.full_optimizer_state(model, optimizer) if sharded
                 else optimizer.state_dict())
        if distributed.rank() != 0:
            return None
        state = {"optimizer": optim, "rng_cpu": torch.get_rng_state()}
        if device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(device)
        return ckpt.save_checkpoint(self.directory, step, model, state,
                                    {**meta, "optimizer": "by-name" if sharded else "by-index"},
                                    tensors=tensors)


@dataclass
class Evaluation:
    """``fn(model)`` every ``interval`` steps, at each checkpoint (``at_checkpoints``) and at
    the last step; its metrics join the step's."""

    fn: Callable[[nn.Module], dict[str, float]]
    interval: int
    at_checkpoints: bool = True


class Throughput:
    """Tokens/s over windows of ``interval`` steps (0: never measured)."""

    def __init__(self, tokens_per_step: int, interval: int) -> None:
        self.tokens_per_step, self.interval = tokens_per_step, interval
        self.restart()

    def restart(self) -> None:
        self._t, self._tokens = time.perf_counter(), 0

    def tick(self, done: int, total: int) -> dict[str, float]:
        """Count one applied step; ``{"tokens_per_sec": ...}`` when a window closes."""
        self._tokens += self.tokens_per_step
        if not self.interval or not _due(done, self.interval, total):
            return {}
        now = time.perf_counter()
        rate = self._tokens / max(now - self._t, 1e-9)
        self._t, self._tokens = now, 0
        return {"tokens_per_sec": rate} if self.tokens_per_step else {}


@dataclass
class LoopResult:
    steps: int  # steps run by this call (skipped ones included): 0 when resumed at the end
    resumed_from: int
    skipped_steps: int
    final_loss: float
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    tokens_per_sec: float = 0.0
    rank_digests: list[str] = field(default_factory=list)  #: each process's weights (sha256)


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; nothing elsewhere."""
    return (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
            else contextlib.nullcontext())


def _kind(label: str) -> ModelKind:
    """The model kind a loop labelled ``label`` trains (pretraining for any other label)."""
    try:
        return kinds.of_step(label)
    except KeyError:
        return kinds.BASE


def _lower_lr(settings: LoopSettings) -> str:
    """``lower train.lr (now 5), e.g. to 0.5``: the fix of a run that diverged."""
    return (f"lower {_kind(settings.kind).lr_key} (now {settings.lr:g}), e.g. to "
            f"{settings.lr / 10:g}")


def _nonfinite_message(settings: LoopSettings, step: int, loss: float, grad_norm: float,
                       in_row: int) -> str:
    """Why ``in_row`` updates in a row were skipped, ending at ``step`` (0-based).

    A finite loss with non-finite gradients is a diverging run, not bad data: with a learning
    rate far too high (``train.lr=5``) the loss climbs into the thousands and its gradients
    overflow float32 (inf or NaN in some tensors, or a norm past 3.4e38) before the divergence
    guard's ``divergence_steps`` after warmup are up. Say so, as that guard does.
    """
    if math.isfinite(loss):
        return (f"{settings.kind}: the loss diverged: {loss:.4g} at step {step + 1}, and its "
                f"gradients overflowed float32 (norm {grad_norm}) for {in_row} steps in a row, "
                f"so no update could be applied; {_lower_lr(settings)}")
    return (f"{settings.kind}: the loss was {loss} for {in_row} steps in a row at step "
            f"{step + 1}; {_lower_lr(settings)}, or check the data")


def _out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator failing (a RuntimeError)."""
    text = str(exc)
    return isinstance(exc, torch.OutOfMemoryError) or "can't allocate memory" in text \
        or "DefaultCPUAllocator" in text or "out of memory" in text.lower()


def _oom_message(kind: str, step: int, device: torch.device) -> str:
    return (f"{kind}: out of memory on {device} at step {step}: lower "
            f"{_kind(kind).batch_key} or model.block_size (raise train.grad_accum to keep the "
            "global batch), or use a smaller model")


def _optimizer_step(model: nn.Module, loss_fn: LossFn, optimizer: torch.optim.Optimizer,
                    settings: LoopSettings, step: int, device: torch.device,
                    ) -> tuple[float, float, float, bool]:
    """One optimizer step: schedule's lr, ``grad_accum`` micro-batches, clip, update.

    Returns (lr, loss, grad_norm, applied). A non-finite loss or gradient norm skips the update
    (``applied`` False) and drops the gradients: one bad batch must not poison the weights.
    """
    raw = model.module if hasattr(model, "module") else model
    lr = lr_at(step, settings.lr, settings.min_lr, settings.warmup_steps, settings.max_steps)
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=device)
    for micro in range(settings.grad_accum):
        # DDP: all-reduce the gradients only on the last micro-batch.
        sync = (micro == settings.grad_accum - 1) or not hasattr(model, "no_sync")
        ctx = contextlib.nullcontext() if sync else model.no_sync()
        with ctx, _autocast(device):
            micro_loss = loss_fn(model, step, micro) / settings.grad_accum
        with ctx:
            micro_loss.backward()
        total += micro_loss.detach()
    distributed.average(total)
    norm = (nn.utils.clip_grad_norm_(raw.parameters(), settings.grad_clip)
            if settings.grad_clip > 0 else torch.zeros(()))
    grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # FSDP
    loss = float(total)
    applied = math.isfinite(loss) and math.isfinite(grad_norm)
    if applied:
        optimizer.step()
    else:
        optimizer.zero_grad(set_to_none=True)
    return lr, loss, grad_norm, applied


class _StopRequest:
    """SIGTERM/SIGINT during the loop: remembered, acted on at the end of the current step.

    Handlers are installed only in the main thread (Python's rule) and put back afterwards.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum:  # a second signal: stop now, without the checkpoint
            raise stopping.remember(Interrupted(
                signum, f"{signal.Signals(signum).name} again: stopped at once"))
        self.signum = signum

    def requested(self) -> int:
        """The signal received by any process of the world (0: none)."""
        if distributed.world() == 1:
            return self.signum
        flag = torch.tensor([self.signum])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag)


#: Per-step metrics the progress line leaves to MLflow (loss has its own place on the line).
_STEP_METRICS = frozenset({"loss", "lr", "grad_norm", "tokens_per_sec"})


class _Guard:
    """The loop's guards on each step's outcome: a skipped update (non-finite loss or
    gradients) is tolerated ``max_nonfinite_steps - 1`` times in a row, a loss above
    ``max_loss`` after warm-up ``max_loss_steps - 1`` times in a row; then training stops with
    one line saying what to change."""

    def __init__(self, settings: LoopSettings) -> None:
        self.settings = settings
        self.bad_in_row = self.skipped = self.high_in_row = 0

    def check(self, step: int, loss: float, grad_norm: float, applied: bool) -> bool:
        """Whether the step's update counts (False: it was skipped)."""
        s = self.settings
        if not applied:
            self.bad_in_row += 1
            self.skipped += 1
            what = (f"loss {loss:.4g} but gradient norm {grad_norm} (the gradients "
                    "overflowed)" if math.isfinite(loss) else f"non-finite loss ({loss})")
            log.warning("step %d: %s, update skipped (%d in a row)", step + 1, what,
                        self.bad_in_row)
            if self.bad_in_row >= s.max_nonfinite_steps:
                raise TrainingError(_nonfinite_message(s, step, loss, grad_norm,
                                                       self.bad_in_row))
            return False
        self.bad_in_row = 0
        self.high_in_row = self.high_in_row + 1 if (step >= s.warmup_steps
                                                    and loss > s.max_loss) else 0
        if self.high_in_row >= s.max_loss_steps:
            raise TrainingError(
                f"{s.kind}: the loss diverged: {loss:.4g} at step {step + 1} stayed "
                f"above {s.max_loss:.3g} (train.divergence_factor x ln(vocab), a "
                f"uniform guess) for {self.high_in_row} steps; {_lower_lr(s)}")
        return True


def _stopped(signum: int, settings: LoopSettings, done: int, checkpointed: bool,
             rank0: bool) -> Interrupted:
    """The stop by ``signum`` after step ``done`` (its checkpoint saved when ``checkpointed``),
    logged for the run's log (Prefect); the terminal gets the CLI's one line."""
    name = signal.Signals(signum).name
    where = "checkpoint saved; a re-run resumes here" if checkpointed \
        else "no checkpoints in this run"
    if rank0:
        log.warning("%s: %s at step %d: %s", settings.kind, name, done, where,
                    extra={progress.BAR_RECORD_ATTR: True})
    return stopping.remember(Interrupted(
        signum, f"{settings.kind}: stopped by {name} at step {done} of "
                f"{settings.max_steps} ({where})"))


def _evaluate_due(evaluations: Sequence[Evaluation], model: nn.Module, done: int, total: int,
                  checkpoint_due: bool) -> dict[str, float]:
    """The metrics of the evaluations due after step ``done``; ``model`` back in training mode.
    A checkpoint carries its validation loss (its MLflow model is ranked by it)."""
    raw = model.module if hasattr(model, "module") else model
    metrics: dict[str, float] = {}
    for e in evaluations:
        if _due(done, e.interval, total) or (checkpoint_due and e.at_checkpoints):
            metrics.update(e.fn(raw))
            model.train()
    return metrics


def _same_weights(raw: nn.Module) -> list[str]:
    """Every process's weight digest; different digests are a bug, said in one line."""
    digests = distributed.digests(raw)
    if len(set(digests)) > 1:
        raise TrainingError(f"the {len(digests)} training processes ended with different "
                            "weights; re-run with launch.nproc_per_node=1 and report this")
    return digests


def run_loop(model: nn.Module, loss_fn: LossFn, optimizer: torch.optim.Optimizer,
             settings: LoopSettings, device: torch.device,
             checkpoints: CheckpointPolicy | None = None,
             evaluation: Evaluation | Sequence[Evaluation] | None = None,
             throughput: Throughput | None = None, callback: MetricsCallback | None = None,
             ) -> LoopResult:
    """Run optimizer steps ``[start, max_steps)``, ``start`` being the resumed checkpoint's step.

    ``model`` may be DDP-wrapped; checkpoints store the unwrapped module. Only rank 0 logs,
    reports metrics and writes checkpoints. ``evaluation``: one or several, each on its own
    interval.
    """
    raw = model.module if hasattr(model, "module") else model
    evaluations = [evaluation] if isinstance(evaluation, Evaluation) else list(evaluation or ())
    rank0 = distributed.rank() == 0
    start = checkpoints.restore(raw, optimizer, device) if checkpoints is not None else 0
    total_steps = settings.max_steps
    tokens_per_step = throughput.tokens_per_step if throughput is not None else 0
    guard = _Guard(settings)
    loss = float("nan")
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    if throughput is not None:
        throughput.restart()
    model.train()
    # Progress (bar on a TTY, plain lines otherwise) for every kind of run: fine-tuning and SFT
    # have no tokens/s, yet log their step, loss and ETA all the same. Only rank 0 shows it.
    with progress.phase(settings.kind, total=total_steps, start=start, unit="step",
                        enabled=rank0) as bar, _StopRequest() as stop:
        for step in range(start, total_steps):
            try:
                lr, loss, grad_norm, applied = _optimizer_step(model, loss_fn, optimizer,
                                                               settings, step, device)
            except (torch.OutOfMemoryError, RuntimeError) as exc:
                if not _out_of_memory(exc):
                    raise
                raise TrainingError(_oom_message(settings.kind, step, device)) from None
            if not guard.check(step, loss, grad_norm, applied):
                bar.update(step + 1)
                continue
            done = step + 1
            metrics = {"loss": loss, "lr": lr, "grad_norm": grad_norm}
            if throughput is not None:
                metrics.update(throughput.tick(done, total_steps))
            checkpoint_due = checkpoints is not None and _due(done, checkpoints.interval,
                                                              total_steps)
            metrics.update(_evaluate_due(evaluations, model, done, total_steps, checkpoint_due))
            if rank0:
                bar.update(done, loss=loss, tokens=tokens_per_step,
                           **{k: v for k, v in metrics.items() if k not in _STEP_METRICS})
                if callback is not None:
                    callback(done, metrics)
                history.append({"step": done, **metrics})
            signum = stop.requested()  # SIGTERM/SIGINT: checkpoint this step, then stop
            if checkpoints is not None and (signum or checkpoint_due):
                path = checkpoints.save(done, raw, optimizer, device,
                                        {"kind": settings.kind, "world": distributed.world()})
                if path is not None and hasattr(callback, "checkpoint"):
                    callback.checkpoint(done, path)  # type: ignore[union-attr]
            if signum:
                raise _stopped(signum, settings, done, checkpoints is not None, rank0)
    seconds = time.perf_counter() - t0
    steps_run = total_steps - start
    digests = _same_weights(raw)
    return LoopResult(steps=steps_run, resumed_from=start, skipped_steps=guard.skipped,
                      final_loss=loss, history=history, seconds=seconds,
                      tokens_per_sec=tokens_per_step * steps_run / max(seconds, 1e-9),
                      rank_digests=digests)


def build_model(model_cfg: ModelConfig, vocab_size: int) -> GPT:
    """The architecture of ``model.*`` (random init), over a ``vocab_size``-token vocabulary."""
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=model_cfg.block_size,
                         n_layer=model_cfg.n_layer, n_head=model_cfg.n_head,
                         n_embd=model_cfg.n_embd, dropout=model_cfg.dropout,
                         bias=model_cfg.bias, vocab_multiple=model_cfg.vocab_multiple))


def initial_model(model_cfg: ModelConfig, data: TokenData) -> GPT:
    """What pretraining starts from: GPT-2's random init, or ``model.init_from``'s weights
    (after checking that ``data`` was encoded with its tokenizer). Same shape either way, so
    checkpoints and the final weights load into :func:`build_model`'s model."""
    if not model_cfg.init_from:
        return build_model(model_cfg, data.vocab_size)
    from gpt.hf import check_tokens, load_pretrained

    check_tokens(model_cfg, data.meta, data.dir)
    model = load_pretrained(model_cfg)
    log.info("model: starting from %s", model_cfg.init_from)
    return model


@torch.no_grad()
def estimate_loss(model: nn.Module, data: TokenData, split: str, batches: int, batch_size: int,
                  block_size: int, seed: int, device: torch.device,
                  label: str | None = None) -> float:
    """Mean next-token loss over fixed (seeded) batches of a split.

    ``label`` names a progress phase over the batches (none during training's periodic eval).
    """
    model.eval()
    losses = []
    for i in (progress.track(range(batches), label, unit="batch") if label else range(batches)):
        x, y = data.batch(split, batch_size, block_size, step_generator(seed, i, stream=1))
        _, loss = model(x.to(device), y.to(device), return_logits=False)
        losses.append(float(loss))
    return sum(losses) / len(losses)


@dataclass
class PretrainResult:
    model: GPT
    loop: LoopResult
    val_loss: float
    device: str


#: Below this many training tokens per parameter, training from scratch warns: the model can
#: memorise the corpus. The demo (tiny on the built-in corpus) has about 0.3; GPT-2 124M on it,
#: about 0.003.
MIN_TOKENS_PER_PARAM = 0.1


def capacity_warning(train_tokens: int, n_params: int,
                     minimum: float = MIN_TOKENS_PER_PARAM) -> str | None:
    """A warning when there are far too few training tokens per parameter, else None."""
    ratio = train_tokens / max(n_params, 1)
    if ratio >= minimum:
        return None
    return (f"{train_tokens:,} training tokens for {n_params / 1e6:.2f}M parameters: "
            f"{ratio:.3g} tokens per parameter (under {minimum:g}); the model can memorise "
            "the corpus: add documents (data.source, data.max_docs) or use a smaller model "
            "(e.g. --profile tiny), or start from a pretrained one (model.init_from)")


def pretrain(model_cfg: ModelConfig, train_cfg: TrainConfig, launch_cfg: LaunchConfig,
             tokens_dir: Path, out_dir: Path, resume: bool = True,
             callback: MetricsCallback | None = None,
             mixture: tuple[tuple[str, float], ...] = (),
             bench: Callable[[GPT], dict[str, float]] | None = None) -> PretrainResult:
    """Pretrain a GPT by next-token prediction on ``tokens_dir`` shards (a mixture's sources
    by their shares: ``DataConfig.mixture``).

    Writes checkpoints to ``out_dir/checkpoints`` and the final weights to
    ``out_dir/model.safetensors``. Under ``torchrun`` trains with DDP (or FSDP2:
    ``launch_cfg.strategy``) on ``launch_cfg.device``. ``bench(model)`` (benchmark metrics of
    the live model; every process calls it) runs every ``train_cfg.bench_interval`` steps.
    """
    out_dir = Path(out_dir)
    data = TokenData(tokens_dir, mixture)
    group = distributed.join(resolve_device(launch_cfg.device))
    device = group.device
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(train_cfg.seed)
    mine = distributed.rows(train_cfg.batch_size)  # before any work: a bad split fails now
    model = initial_model(model_cfg, data).to(device)  # a checkpoint to resume wins, below
    log.info("model: %.2fM parameters, vocab %d, device %s", model.num_params() / 1e6,
             model.config.vocab_size, device)
    warning = None if model_cfg.init_from else capacity_warning(
        int(data.meta["train_tokens"]), model.num_params())
    if warning and distributed.rank() == 0:
        log.warning("%s", warning)
    net: nn.Module = model
    if launch_cfg.strategy == "fsdp":
        net = distributed.wrap(model, device, "fsdp")  # shards ``model`` itself, in place
    if train_cfg.compile:
        before_compile()
        net = torch.compile(net)  # type: ignore[assignment]
    if launch_cfg.strategy == "ddp":
        net = distributed.wrap(net, device, "ddp")
    optimizer = make_optimizer(model, train_cfg.lr, train_cfg.weight_decay,
                               (train_cfg.beta1, train_cfg.beta2), device)
    bs, T = train_cfg.batch_size, model_cfg.block_size
    tokens_per_step = bs * T * train_cfg.grad_accum
    if distributed.world() > 1 and distributed.rank() == 0:
        log.info("%d processes (%s): %d sequences per process per micro-batch, %d tokens per "
                 "optimizer step in all", distributed.world(), launch_cfg.strategy,
                 mine.stop - mine.start, tokens_per_step)

    def loss_fn(m: nn.Module, step: int, micro: int) -> torch.Tensor:
        x, y = data.batch("train", bs, T, step_generator(train_cfg.seed, step, stream=2 + micro),
                          rows=mine)
        _, loss = m(x.to(device), y.to(device), return_logits=False)
        return loss

    def eval_fn(m: nn.Module) -> dict[str, float]:
        return {"val_loss": estimate_loss(m, data, "val", train_cfg.eval_batches, bs, T,
                                          train_cfg.seed, device)}

    result = run_loop(
        net, loss_fn, optimizer, LoopSettings.from_train(train_cfg, model.config.vocab_size),
        device,
        checkpoints=CheckpointPolicy(out_dir / "checkpoints", train_cfg.checkpoint_interval,
                                     resume),
        evaluation=[Evaluation(eval_fn, train_cfg.eval_interval),
                    *([Evaluation(lambda _m: bench(model), train_cfg.bench_interval, False)]
                      if bench is not None and train_cfg.bench_interval else [])],
        throughput=Throughput(tokens_per_step, train_cfg.log_interval),
        callback=callback)
    val_loss = next((h["val_loss"] for h in reversed(result.history) if "val_loss" in h),
                    float("nan"))
    tensors = distributed.full_state_dict(model) if distributed.is_sharded(model) else None
    if distributed.rank() == 0:
        ckpt.save_weights(model, out_dir / "model.safetensors", tensors)
    group.leave()
    return PretrainResult(model=model.cpu(), loop=result, val_loss=val_loss, device=str(device))
