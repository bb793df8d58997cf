"""Where a workspace keeps everything: the one place that names its files and folders.

A workspace is a folder holding ``params.yaml`` and ``dvc.yaml``. DVC versions its data stages'
outputs under ``data/``; everything gptops keeps for itself (stores, locks, run history, step
outputs, logs) lives under ``.gptops/``. :class:`Workspace` spells out each path; every other
module asks it instead of joining names by hand (``tests/unit/test_layout.py`` holds them to
that). It imports nothing of ``gpt``, so any module can use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: The gptops project folder (the one holding ``gpt/``): its params.yaml and dvc.yaml are the
#: templates a new workspace gets.
PROJECT_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Workspace:
    """Every path of the workspace at ``root``. ``Workspace.relative()`` gives them relative
    to the root (as DVC and the messages name them)."""

    root: Path

    @classmethod
    def relative(cls) -> Workspace:
        """The layout with an empty root: each path as it is named inside any workspace."""
        return cls(Path())

    # --- the files the user edits and DVC reads -----------------------------------------------

    @property
    def params_yaml(self) -> Path:
        return self.root / "params.yaml"

    @property
    def dvc_yaml(self) -> Path:
        return self.root / "dvc.yaml"

    @property
    def dvc_lock(self) -> Path:
        return self.root / "dvc.lock"

    @property
    def dvc_dir(self) -> Path:
        """DVC's own folder (config, cache, ``tmp/`` with its lock files)."""
        return self.root / ".dvc"

    @property
    def metrics(self) -> Path:
        """The models' metrics and curves that ``dvc.yaml`` shows (``dvc metrics diff``)."""
        return self.root / "metrics"

    # --- the data stages' outputs (``dvc.yaml``'s ``outs``) -----------------------------------

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def raw(self) -> Path:
        """Ingest's shards (``part-NNNNN.parquet``) and its rejected records."""
        return self.data / "raw"

    @property
    def clean(self) -> Path:
        """The kept documents' shards (``part-NNNNN.parquet``)."""
        return self.data / "clean"

    @property
    def clean_report(self) -> Path:
        return self.clean / "report.md"

    @property
    def clean_stats(self) -> Path:
        return self.data / "clean_stats.json"

    @property
    def tokens(self) -> Path:
        return self.data / "tokens"

    @property
    def tokenizer(self) -> Path:
        return self.tokens / "tokenizer.json"

    @property
    def token_meta(self) -> Path:
        return self.tokens / "meta.json"

    # --- gptops' own state ---------------------------------------------------------------------

    @property
    def state(self) -> Path:
        """``.gptops/``: everything gptops keeps for itself (never versioned by DVC)."""
        return self.root / ".gptops"

    @property
    def mlflow_db(self) -> Path:
        """The workspace's own MLflow store (SQLite)."""
        return self.state / "mlflow.db"

    @property
    def mlartifacts(self) -> Path:
        """Where the workspace's own MLflow store keeps its artifacts."""
        return self.state / "mlartifacts"

    @property
    def prefect_db(self) -> Path:
        """The workspace's Prefect database: ``gptops run`` and ``gptops serve`` share it."""
        return self.state / "prefect.db"

    @property
    def prefect_home(self) -> Path:
        return self.state / "prefect-home"

    @property
    def prefect_server_log(self) -> Path:
        """The output of the Prefect server a run starts for itself."""
        return self.state / "prefect-server.log"

    @property
    def prefect_start_lock(self) -> Path:
        """Held while one run starts the workspace's Prefect server."""
        return self.state / "prefect-server.start.lock"

    @property
    def serve_file(self) -> Path:
        """The address of a live ``gptops serve`` on this workspace."""
        return self.state / "serve.json"

    @property
    def logs(self) -> Path:
        """The servers' own output under ``gptops serve`` (``<name>.log``)."""
        return self.state / "logs"

    @property
    def optuna_db(self) -> Path:
        """The tuning studies (Optuna's RDB storage on SQLite)."""
        return self.state / "optuna.db"

    @property
    def watch_state(self) -> Path:
        """The data source's files as ``gptops serve``'s watcher last announced them."""
        return self.state / "watch.json"

    @property
    def ingest_state(self) -> Path:
        """The local source's files as the ingest stage last read them (``gptops run`` says
        when they changed since: a plain run does not re-read them)."""
        return self.state / "ingested.json"

    @property
    def lock_file(self) -> Path:
        """Locked by the one pipeline (or command writing the workspace) at a time."""
        return self.state / "workspace.lock"

    @property
    def live_runs(self) -> Path:
        """One locked record per live run of the workspace (``<run id>.lock``)."""
        return self.state / "live-runs"

    def live_run(self, run_id: str) -> Path:
        return self.live_runs / f"{run_id}.lock"

    @property
    def params_backup(self) -> Path:
        """The workspace's own params.yaml while a run's one-off overrides are in place."""
        return self.state / "params.before-run.yaml"

    @property
    def dvc_remote(self) -> Path:
        """The local default DVC remote a new workspace gets."""
        return self.state / "dvc-remote"

    @property
    def pushed_mark(self) -> Path:
        """Written after a push succeeds: a remote found missing later is known to be lost."""
        return self.state / "dvc-remote.pushed"

    def stage_error(self, stage: str) -> Path:
        """The one-line error a failed data stage's command leaves for the run to show."""
        return self.state / f"{stage}.error"

    @property
    def runs(self) -> Path:
        """The training and evaluation steps' outputs, ``<step>/<key digest>/``."""
        return self.state / "runs"

    def step_dir(self, step: str, digest: str) -> Path:
        """One step's folder: checkpoints, weights, ``key.json`` and ``result.json``."""
        return self.runs / step / digest
