"""One run's context, made once: the workspace, its params, the data version, tracking, the base.

:func:`prepare_run` checks every input of a pipeline run and loads the params once; ``gptops
run`` calls it before its Prefect server starts, and the flow calls it again only when nobody in
its process did (:func:`handed_over`). The steps (:mod:`gpt.pipeline.steps`) take the
:class:`RunContext` instead of the same five loose arguments; it grows as the run goes, by
``dataclasses.replace``: the data version after the data stages, the pinned base, the parent
MLflow run. It is plain data (frozen, picklable), so it crosses Prefect task and process
boundaries like the values it holds.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from gpt.config import PROJECT_PARAMS, Params, load_params
from gpt.layout import Workspace
from gpt.pipeline import base as base_mod
from gpt.pipeline.base import Base
from gpt.registry import Tracking, resolve_tracking_uri
from gpt.registry import tags as tag

if TYPE_CHECKING:
    from gpt.pipeline.paths import RunPaths

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunContext:
    """What every step of one run reads; made by :func:`prepare_run` (a whole run) or
    :meth:`of` (one step), then extended with ``dataclasses.replace``."""

    workdir: Path  #: the workspace, absolute
    params: Params  #: loaded once, profile and overrides applied
    tracking_uri: str  #: ``registry.tracking_uri``, else ``MLFLOW_TRACKING_URI``, else the
    #: workspace's SQLite: resolved once
    base_spec: str = ""  #: "" = this run's pretraining, or ``models:/<name>@<alias>|/<n>``
    overrides: tuple[str, ...] = ()  #: the run's ``section.key=value`` overrides
    params_digest: str = ""  #: sha256 of the params file the params were loaded from
    data_version: str = ""  #: set once the data stages ran
    pinned_base: Base | None = None  #: ``base_spec`` resolved to one version (:func:`pin_base`)
    tracking: Tracking | None = None  #: where MLflow runs go (with the parent run, once open)

    @classmethod
    def of(cls, workdir: Path | str, params: Params, base: str = "", data_version: str = "",
           tracking: Tracking | None = None) -> RunContext:
        """The context of one step on ``workdir`` (a CLI step command, a test)."""
        ws = Path(workdir).resolve()
        return cls(ws, params, resolve_tracking_uri(params.registry.tracking_uri, ws), base,
                   data_version=data_version, tracking=tracking)

    @property
    def paths(self) -> RunPaths:
        from gpt.pipeline.paths import RunPaths  # torch, pandas: not for the checks

        return RunPaths(self.workdir)

    @property
    def base(self) -> Base:
        """The base tuned models start from: the pinned registered version, else this run's
        pretraining (an unpinned registered base is read from the registry now)."""
        if self.pinned_base is not None:
            return self.pinned_base
        return base_mod.resolve(self.base_spec, self.params, self.data_version, self.tracking_uri)

    def tracked(self, flow_run_id: str | None = None, flow_run_url: str = "") -> Tracking:
        """Where this run's MLflow runs go, tagged with its lineage (no parent run yet);
        ``flow_run_url``: the flow run's page, when a Prefect UI serves it."""
        return Tracking(self.tracking_uri, self.params.registry.experiment,
                        tags=lineage(self.params, self.data_version, flow_run_id, flow_run_url))


def pin_base(ctx: RunContext) -> RunContext:
    """``ctx`` with its registered base read once (an alias pinned to the version it names now),
    so a promotion mid-run cannot change the base of the later steps. No-op without one."""
    if not ctx.base_spec or ctx.pinned_base is not None:
        return ctx
    return replace(ctx, pinned_base=ctx.base)


def _params_file(ws: Path) -> Path:
    """The workspace's params.yaml, or the project's for a folder that is not a workspace yet
    (it gets a copy of that one)."""
    own = Workspace(ws).params_yaml
    return own if own.is_file() else PROJECT_PARAMS


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def _load(ws: Path, profile: str, overrides: tuple[str, ...], base: str) -> RunContext:
    """Load the params once and check every input a run reads (one clear error each)."""
    from gpt.preflight import check_run

    path = _params_file(ws)
    params = load_params(path, profile, list(overrides))
    ctx = replace(RunContext.of(ws, params, base), overrides=overrides,
                  params_digest=_digest(path))
    check_run(params, ctx.tracking_uri)
    return ctx


#: A context its caller prepared for the flow it runs in this process (:func:`handed_over`).
_HANDED_OVER: ContextVar[RunContext | None] = ContextVar("gptops_run_context", default=None)


@contextmanager
def handed_over(ctx: RunContext) -> Iterator[None]:
    """Within this block, :func:`prepare_run` with the same inputs returns ``ctx`` as it is:
    ``gptops run`` checks the run before its Prefect server starts, and the flow it then runs
    takes those checks instead of repeating them."""
    token = _HANDED_OVER.set(ctx)
    try:
        yield
    finally:
        _HANDED_OVER.reset(token)


def prepare_run(workdir: Path | str, profile: str, overrides: list[str] | None = None,
                base: str = "", init: bool = False) -> RunContext:
    """Check a pipeline run's inputs and load its params once, before anything is written.

    ``init``: make a non-empty folder that is not a workspace into one first.

    Raises:
        ConfigError, DataError, RegistryError: one line naming the bad input and the fix.
    """
    from gpt.preflight import check_workdir, check_writable

    ws = Path(workdir).expanduser().resolve()
    wanted = tuple(overrides or ())
    given = _HANDED_OVER.get()
    if given is not None and (given.workdir, given.params.profile, given.overrides,
                              given.base_spec) == (ws, profile, wanted, base):
        return given
    base_mod.parse(base)  # a malformed --base fails before any work
    check_workdir(ws, init)  # nothing (not even a lock file) is written into a refused folder
    check_writable(ws)
    if init:
        from gpt.dvc_repo import ensure_workspace

        ensure_workspace(ws, init=True)
    return _load(ws, profile, wanted, base)


def open_workspace(ctx: RunContext, save: bool = False) -> RunContext:
    """Make the folder a DVC workspace and write the run's data overrides into its params.yaml
    (DVC reads them there; kept only with ``save``). Called holding the workspace's lock.

    The params stay those :func:`prepare_run` loaded, unless the file changed since (a killed
    run's one-off overrides put back, keys of a newer gptops added): then they are loaded again.
    """
    from gpt.dvc_repo import ensure_workspace
    from gpt.params_file import apply_run_overrides, restore_params

    ws = ensure_workspace(ctx.workdir)
    restore_params(ws)
    if _digest(Workspace(ws).params_yaml) != ctx.params_digest:
        log.info("params.yaml changed since the run was checked: loading it again")
        ctx = _load(ws, ctx.params.profile, ctx.overrides, ctx.base_spec)
    apply_run_overrides(ws, list(ctx.overrides), save=save)
    return ctx


def lineage(params: Params, data_version: str, flow_run_id: str | None,
            flow_run_url: str = "") -> dict[str, str]:
    """Tags every run and model version of a pipeline run carries (``git_dirty``: the tracked
    code differs from ``git_commit``; each version adds its step's ``code_hash``;
    ``flow_run_url``: the flow run's page, when a Prefect UI serves it)."""
    from gpt.gitinfo import git_state

    commit, dirty = git_state()
    tags = {tag.DATA_VERSION: data_version, tag.GIT_COMMIT: commit, tag.GIT_DIRTY: dirty,
            tag.FLOW_RUN: flow_run_id or "none", tag.PROFILE: params.profile,
            tag.INIT_FROM: params.model.init_from or "scratch"}
    if flow_run_url:
        tags[tag.FLOW_RUN_URL] = flow_run_url
    if params.model.init_from:
        from gpt.hf import checkpoint_digest

        tags[tag.INIT_FROM_SHA] = checkpoint_digest(params.model.init_from)
    return tags
