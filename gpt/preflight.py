"""Checks of a run's inputs before any long work starts.

Everything that can be known to be wrong without training is checked here, in seconds: the
profile and overrides (by loading the params), the data source, the pretrained checkpoint and
tokenizer (found on this machine, GPT-2's architecture, ``model.*`` matching it), the fine-tuning
task file and the SFT file (read and validated the same way the steps read them), and the
tracking URI. Each problem raises one ``GptopsError`` naming the input and the fix.
(The one check that needs the data and the model, ``gpt.train.capacity_warning``, runs when
pretraining starts.)
"""

from __future__ import annotations

import glob
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from gpt.config import Params
from gpt.errors import ConfigError, DataError

#: MLflow tracking URI schemes gptops knows how to use.
TRACKING_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg", "postgresql+psycopg2", "mysql",
                    "mysql+pymysql", "mssql", "http", "https", "file", "databricks")


def check_source(source: str) -> None:
    """``data.source``: the built-in corpus, an existing ``hf:`` folder or name, or a glob."""
    if not source.strip():
        raise DataError("data.source is empty; set it to 'builtin', 'hf:<dataset>' or a glob of "
                        "local files")
    if source == "builtin":
        return
    if source.startswith("hf:"):
        spec = source.removeprefix("hf:").split(":", 1)[0]
        if not spec:
            raise DataError("data.source 'hf:' names no dataset; write hf:<folder> or hf:<name>")
        looks_local = spec.startswith((".", "/", "~"))  # else a hub name such as user/data
        if looks_local and not Path(os.path.expanduser(spec)).exists():
            raise DataError(f"data.source '{source}': dataset folder '{spec}' does not exist; "
                            "check the path")
        return
    if not glob.glob(os.path.expanduser(source), recursive=True):
        raise DataError(f"data.source '{source}' matches no files; check the path or set "
                        "data.source=builtin")


def check_tasks(params: Params) -> None:
    """The fine-tuning and SFT files, read and validated as the steps will read them."""
    from gpt.finetune import build_sft_file_task, build_task

    ft = params.finetune
    if ft.task == "file":
        if not ft.task_path:
            raise ConfigError("finetune.task=file needs finetune.task_path (a .csv/.jsonl/"
                              ".parquet with columns text,label)")
        build_task(ft, None)  # type: ignore[arg-type] - file tasks do not read the corpus
    if params.sft.enabled and params.sft.task == "file":
        if not params.sft.task_path:
            raise ConfigError("sft.task=file needs sft.task_path (a .csv/.jsonl/.parquet with "
                              "columns prompt,completion)")
        build_sft_file_task(params.sft.task_path, params.sft.test_fraction, params.sft.seed)


def check_tracking_uri(uri: str) -> None:
    """A known scheme, and for a server: something listening at its address."""
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if not scheme or (len(scheme) == 1 and os.name == "nt"):  # a plain path: MLflow's file store
        return
    if scheme not in TRACKING_SCHEMES:
        raise ConfigError(f"registry.tracking_uri '{uri}': unknown scheme '{scheme}' (known: "
                          f"{', '.join(TRACKING_SCHEMES)}); e.g. sqlite:///path/mlflow.db or "
                          "http://host:5000")
    if scheme == "sqlite":
        path = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
        if path is not None and not path.is_absolute():
            path = Path.cwd() / path
        if path is not None and not path.parent.is_dir():
            raise ConfigError(f"registry.tracking_uri '{uri}': folder {path.parent} does not "
                              "exist; create it or fix the URI")
        return
    if scheme in ("file", "databricks"):
        return
    host = parsed.hostname or "localhost"
    default_port = {"http": 80, "https": 443, "mysql": 3306, "mssql": 1433}.get(
        scheme.split("+")[0], 5432)
    try:
        port = parsed.port or default_port
    except ValueError as exc:  # "host:notaport"
        raise ConfigError(f"registry.tracking_uri '{uri}': {exc}; write host:port with a "
                          "number, e.g. postgresql+psycopg://user@host:5432/mlflow") from exc
    try:
        with socket.create_connection((host, port), timeout=5):
            pass
    except OSError as exc:
        raise ConfigError(f"registry.tracking_uri '{uri}': nothing answers at {host}:{port} "
                          f"({exc.strerror or exc}); start the tracking server or fix the URI"
                          ) from exc
    if scheme.split("+")[0] == "postgresql":
        _check_postgres(uri)


def _check_postgres(uri: str) -> None:
    """Log in and open the database now (5 s at most), not after minutes of MLflow retries."""
    try:
        import psycopg
    except ImportError:  # another driver: MLflow will say
        return
    conninfo = "postgresql" + uri[uri.index("://"):]
    try:
        psycopg.connect(conninfo, connect_timeout=5).close()
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        raise ConfigError(f"registry.tracking_uri '{uri}': PostgreSQL refused it ({first}); "
                          "create the database (createdb) or fix the user, password or name"
                          ) from exc


def check_pretrained(params: Params) -> None:
    """``model.init_from`` and ``tokenizer.pretrained``: on this machine (a folder, or a hub id
    in the Hugging Face cache or downloadable now), GPT-2's architecture, ``model.*`` matching
    the checkpoint's config, and a tokenizer next to it."""
    from gpt import hf

    if params.model.init_from:
        ck = hf.resolve(params.model.init_from, "model.init_from")
        hf.check_model_config(params.model, ck)
        hf.weight_files(ck)
    if params.tokenizer.pretrained:
        hf.tokenizer_files(hf.resolve(params.tokenizer.pretrained, "tokenizer.pretrained",
                                      need="tokenizer"))


#: What a folder may hold and still count as empty: a fresh `git init` (DVC versions the data
#: in git), and gptops' own folder.
_EMPTY_OK = {".git", ".gptops"}
#: Files that mark a gptops workspace.
_WORKSPACE_FILES = ("params.yaml", "dvc.yaml")


def check_workdir(workdir: Path, init: bool = False) -> None:
    """``--workdir``: never the filesystem root or the home folder itself; a non-empty folder
    that is not a workspace only with ``init`` (it gets params.yaml, dvc.yaml, .dvc/, .gptops/).
    """
    path = Path(workdir).expanduser().resolve()
    if path == Path(path.anchor):
        raise ConfigError(f"--workdir {path} is the filesystem root: gptops writes params.yaml, "
                          "dvc.yaml, .dvc/ and .gptops/ into its workspace; use a folder of its "
                          "own, e.g. -w ~/gptops-ws")
    if path == Path.home().resolve():
        raise ConfigError(f"--workdir {path} is your home folder: gptops writes params.yaml, "
                          "dvc.yaml, .dvc/ and .gptops/ into its workspace; use a folder of its "
                          "own, e.g. -w ~/gptops-ws")
    if init or not path.is_dir() or any((path / f).is_file() for f in _WORKSPACE_FILES):
        return
    others = sorted(p.name for p in path.iterdir() if p.name not in _EMPTY_OK)
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise ConfigError(f"--workdir {path} is not empty ({shown}) and not a gptops workspace "
                          "(no params.yaml or dvc.yaml): pass --init to make it one, or use an "
                          "empty or new folder")


def check_benchmarks(params: Params) -> None:
    """``evaluate.benchmarks``/``benchmark_dirs`` can run here (lm-eval is imported only when
    a hub task is named), and ``registry.gate`` lists metrics each model kind will have."""
    from gpt import benchmarks as bm
    from gpt.pipeline.candidates import KIND_METRICS, gate_metrics

    e = params.evaluate
    bm.check_hub_tasks(e.benchmarks, e.benchmark_dirs)
    tasks = set(bm.suite(None, e.benchmarks, e.benchmark_dirs, 0).tasks)
    if e.builtin_benchmarks:
        tasks |= set(bm.BUILTIN)
    for kind, own in KIND_METRICS.items():
        for metric in gate_metrics(kind, params):
            if metric in own:
                continue
            task = metric.split(".")[1] if metric.startswith("bench.") else None
            if kind != "task" and task in tasks and metric.count(".") >= 2:
                continue
            bench = (f"; or bench.<task>.<metric> of a task it runs ({', '.join(sorted(tasks))})"
                     if kind != "task" and tasks else "")
            raise ConfigError(f"registry.gate.{kind} lists '{metric}', which the {kind} model's "
                              f"evaluation does not produce; use one of {', '.join(own)}{bench}")


def check_run(params: Params, tracking_uri: str) -> None:
    """Every input of a pipeline run (the params themselves are already valid)."""
    from gpt.pipeline.candidates import NAMED, model_name

    check_source(params.data.source)
    check_pretrained(params)
    check_tasks(params)
    check_benchmarks(params)
    for kind in NAMED:  # a name MLflow cannot register fails now, not after training
        model_name(kind, params)
    check_tracking_uri(tracking_uri)
