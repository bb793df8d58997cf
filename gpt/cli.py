"""``gptops`` library commands (no Prefect here; ``flows.cli`` adds ``run`` and ``serve``).

Every command is a thin entry point over ``gpt.*`` functions. Errors caused by input print one
line naming the input and the fix, and exit with status 2.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from gpt.errors import ERROR_FILE_ENV, GptopsError

app = typer.Typer(help="Train GPT models end to end: data → pretrain → fine-tune → evaluate → "
                       "register (MLflow), orchestrated by Prefect.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
data_app = typer.Typer(help="DVC data stages (what `dvc repro` runs).", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console()

Workdir = Annotated[Path, typer.Option("--workdir", "-w", help="gptops workspace (holds "
                                       "params.yaml and dvc.yaml)")]
Profile = Annotated[str, typer.Option("--profile", "-p", help="profile in params.yaml: tiny "
                                      "(CPU demo) or gpt2-124m (GPU)")]
Overrides = Annotated[list[str] | None, typer.Option("--set", "-s", help="override a "
                                                     "parameter, e.g. --set train.max_steps=50")]


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("httpx", "httpcore", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _params(workdir: Path, profile: str = "tiny", overrides: list[str] | None = None):
    from gpt.config import load_params

    return load_params(Path(workdir) / "params.yaml", profile, overrides)


def _tracking_uri(workdir: Path, params) -> str:
    from gpt.registry import resolve_tracking_uri

    return resolve_tracking_uri(params.registry.tracking_uri, workdir)


@data_app.command("ingest")
def data_ingest(workdir: Workdir = Path(".")) -> None:
    """Read the configured source (default: the built-in corpus) into data/raw."""
    from gpt.data import stages

    setup_logging()
    stages.ingest(_params(workdir), workdir)


@data_app.command("clean")
def data_clean(workdir: Workdir = Path(".")) -> None:
    """Clean data/raw into data/clean (every document kept or rejected with a reason)."""
    from gpt.data import stages

    setup_logging()
    stages.clean(_params(workdir), workdir)


@data_app.command("tokenize")
def data_tokenize(workdir: Workdir = Path(".")) -> None:
    """Train the BPE tokenizer and write train/val token shards to data/tokens."""
    from gpt.data import stages

    setup_logging()
    stages.tokenize(_params(workdir), workdir)


def _step(name: str, workdir: Path, profile: str, overrides: list[str] | None) -> None:
    """Run one training step of ``gpt.steps`` on the workspace's current data version."""
    from gpt import steps, workspace

    setup_logging()
    params = _params(workdir, profile, overrides)
    version = workspace.data_version(workdir)
    if name == "evaluate":
        out = steps.evaluate_step(workdir, params, version)
    else:
        fn = steps.pretrain_step if name == "pretrain" else steps.finetune_step
        out = fn(workdir, params, version, _tracking_uri(workdir, params))
    console.print_json(json.dumps(out, default=str))


@app.command()
def pretrain(workdir: Workdir = Path("."), profile: Profile = "tiny",
             overrides: Overrides = None) -> None:
    """Pretrain the base model on data/tokens (resumes from the newest valid checkpoint)."""
    _step("pretrain", workdir, profile, overrides)


@app.command()
def finetune(workdir: Workdir = Path("."), profile: Profile = "tiny",
             overrides: Overrides = None) -> None:
    """Fine-tune the pretrained base on the package-classification task."""
    _step("finetune", workdir, profile, overrides)


@app.command()
def evaluate(workdir: Workdir = Path("."), profile: Profile = "tiny",
             overrides: Overrides = None) -> None:
    """Evaluate base perplexity and task metrics (vs the majority baseline)."""
    _step("evaluate", workdir, profile, overrides)


@app.command()
def generate(prompt: Annotated[str, typer.Argument(help="text to continue")],
             workdir: Workdir = Path("."),
             model: Annotated[str, typer.Option(help="registered model name")] = "",
             alias: Annotated[str, typer.Option(help="registry alias")] = "champion",
             max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n")] = 80,
             temperature: Annotated[float, typer.Option("--temperature", "-t")] = 0.8,
             top_k: Annotated[int, typer.Option("--top-k")] = 50,
             top_p: Annotated[float, typer.Option("--top-p")] = 0.95,
             seed: Annotated[int, typer.Option()] = 0,
             tracking_uri: Annotated[str, typer.Option(help="MLflow URI (default: the "
                                                       "workspace's)")] = "") -> None:
    """Sample text from a registered model (default: the base model's champion), streaming."""
    import torch

    from gpt.hf import from_hf_lm
    from gpt.registry import load_champion_components

    params = _params(workdir)
    uri = tracking_uri or _tracking_uri(workdir, params)
    name = model or params.registry.base_model
    comps = load_champion_components(uri, name, alias)
    gpt_model, tok = from_hf_lm(comps["model"]), comps["tokenizer"]
    ids = tok(prompt)["input_ids"] or [tok.eos_token_id]
    x = torch.tensor([ids], dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    sys.stdout.write(prompt)
    for nxt in gpt_model.generate_stream(x, max_new_tokens, temperature=temperature,
                                         top_k=top_k, top_p=top_p,
                                         stop_token=tok.eos_token_id, generator=g):
        token = int(nxt[0, 0])
        if token == tok.eos_token_id:
            break
        sys.stdout.write(tok.decode([token]))
        sys.stdout.flush()
    sys.stdout.write("\n")


@app.command()
def models(workdir: Workdir = Path("."),
           name: Annotated[str, typer.Option(help="only this registered model")] = "",
           history: Annotated[bool, typer.Option("--history", help="also show each model's "
                                                 "champion history")] = False,
           tracking_uri: Annotated[str, typer.Option()] = "") -> None:
    """List registered models, versions, aliases, lineage and metrics."""
    from gpt.registry import champion_history, list_versions

    uri = tracking_uri or _tracking_uri(workdir, _params(workdir))
    if name:
        champion_history(uri, name)  # unknown model: one-line error listing the known ones
    rows = list_versions(uri, name or None)
    table = Table(title=f"registered models at {uri}")
    for col in ("model", "version", "aliases", "data", "commit", "primary metric"):
        table.add_column(col)
    for r in rows:
        t = r["tags"]
        metric = t.get("primary_metric", "")
        table.add_row(r["name"], r["version"], ",".join(r["aliases"]), t.get("data_version", ""),
                      t.get("git_commit", "")[:12],
                      f"{metric}={t.get('metric.' + metric, '')}" if metric else "")
    console.print(table)
    if history:
        for model_name in sorted({r["name"] for r in rows}):
            _print_history(model_name, champion_history(uri, model_name))


def _print_history(name: str, history: list[dict]) -> None:
    table = Table(title=f"{name}: champion history (oldest first)")
    for col in ("at", "action", "champion", "previous", "reason"):
        table.add_column(col)
    for h in history:
        table.add_row(h.get("at", ""), h.get("action", "gate"), f"v{h['version']}",
                      f"v{h['previous']}" if h.get("previous") else "", h.get("reason", ""))
    console.print(table)


Reason = Annotated[str, typer.Option("--reason", "-r", help="why (kept in the champion "
                                     "history)")]


@app.command()
def promote(model: Annotated[str, typer.Argument(help="registered model name")],
            version: Annotated[str, typer.Argument(help="version to make champion")],
            reason: Reason,
            workdir: Workdir = Path("."),
            tracking_uri: Annotated[str, typer.Option()] = "") -> None:
    """Make VERSION the champion of MODEL by hand (recorded with its reason)."""
    from gpt import registry

    uri = tracking_uri or _tracking_uri(workdir, _params(workdir))
    out = registry.promote(uri, model, version, reason)
    console.print(f"{model}: champion v{out['previous'] or '-'} -> v{out['version']} "
                  f"({out['reason']})", highlight=False)


@app.command()
def rollback(model: Annotated[str, typer.Argument(help="registered model name")],
             reason: Reason,
             workdir: Workdir = Path("."),
             tracking_uri: Annotated[str, typer.Option()] = "") -> None:
    """Move MODEL's champion back to the previous champion (recorded with its reason)."""
    from gpt import registry

    uri = tracking_uri or _tracking_uri(workdir, _params(workdir))
    out = registry.rollback(uri, model, reason)
    console.print(f"{model}: champion v{out['previous']} -> v{out['version']} (rollback: "
                  f"{out['reason']})", highlight=False)


@app.command()
def doctor(workdir: Workdir = Path(".")) -> None:
    """Check the environment: versions, CUDA, workspace files, tracking URI."""
    import mlflow
    import torch
    import transformers

    console.print(f"python {sys.version.split()[0]}  torch {torch.__version__}  "
                  f"transformers {transformers.__version__}  mlflow {mlflow.__version__}")
    console.print(f"CUDA available: {torch.cuda.is_available()}  threads: "
                  f"{torch.get_num_threads()}  cpus: {os.cpu_count()}")
    for f in ("params.yaml", "dvc.yaml", ".dvc", "dvc.lock"):
        console.print(f"{f}: {'ok' if (Path(workdir) / f).exists() else 'missing'}")
    console.print(f"tracking URI: {_tracking_uri(workdir, _params(workdir))}")


def run_app(application: typer.Typer) -> None:
    """Run a typer app, printing input errors as one line with exit status 2."""
    try:
        application(standalone_mode=False)
    except GptopsError as exc:
        if os.environ.get(ERROR_FILE_ENV):  # let a parent (DVC → pipeline) surface the message
            Path(os.environ[ERROR_FILE_ENV]).write_text(str(exc), encoding="utf-8")
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", getattr(exc, "code", 0))
        sys.exit(code or 0)
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(130)
        raise


def main() -> None:
    run_app(app)
