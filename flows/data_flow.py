"""The clean and tokenize stages fanned out as Prefect tasks, one per shard, on Dask.

``data_flow`` runs the stages' per-shard work (filtering a shard; encoding a shard) with the
flow's task runner: a local Dask cluster by default, or an existing scheduler by address (for
example one started by dask-kubernetes). Dedup across shards, the tokenizer's training and the
manifests run in the flow. The outputs are byte-identical to ``gptops data clean`` and
``gptops data tokenize``. The workers read and write the workspace's shard folders, so they
need it on shared storage (the same path on every worker). Record the outputs in ``dvc.lock``
afterwards with ``dvc commit clean tokenize``.

    python -m flows.data_flow --workdir /shared/ws --address tcp://scheduler:8786
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect_dask import DaskTaskRunner

from gpt.config import load_params
from gpt.data import stages
from gpt.data.clean import render_report
from gpt.layout import Workspace

#: The stages ``data_flow`` can run, in order.
STAGES = ("clean", "tokenize")


@task(name="shard", task_run_name="{label}", cache_policy=NO_CACHE)
def shard_task(fn: Any, job: tuple, label: str) -> Any:
    """One shard's work (the per-shard half of a stage)."""
    return fn(job)


def dask_runner(address: str | None = None, n_workers: int = 2) -> DaskTaskRunner:
    """A runner on an existing Dask scheduler, or on a local cluster of processes."""
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": n_workers, "threads_per_worker": 1,
                                          "processes": True, "dashboard_address": None})


def _mapper(stage: str):
    def mapper(fn, jobs):
        futures = [shard_task.submit(fn, job, f"{stage}-{i:05d}") for i, job in enumerate(jobs)]
        return [f.result() for f in futures]
    return mapper


@flow(name="data_flow")
def data_flow(workdir: str = ".", stages_: list[str] | None = None) -> dict[str, Any]:
    """Run the clean and/or tokenize stage of a workspace with one task per shard.

    Args:
        workdir: the gptops workspace (its ``data/raw`` written by ``gptops data ingest``).
        stages_: the stages to run (default both, in order).
    """
    ws = Path(workdir)
    params = load_params(Workspace(ws).params_yaml)
    out: dict[str, Any] = {}
    for stage in stages_ or list(STAGES):
        if stage == "clean":
            out["clean"] = stages.clean(params, ws, mapper=_mapper("clean"))
            create_markdown_artifact(render_report(out["clean"]), key="cleaning-report")
        elif stage == "tokenize":
            out["tokenize"] = stages.tokenize(params, ws, mapper=_mapper("tokenize"))
        else:
            raise ValueError(f"unknown stage '{stage}' (use {', '.join(STAGES)})")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=".")
    parser.add_argument("--address", default=None, help="Dask scheduler (default: a local one)")
    parser.add_argument("--workers", type=int, default=2, help="local cluster processes")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    args = parser.parse_args()
    runner = dask_runner(args.address, args.workers)
    data_flow.with_options(task_runner=runner)(args.workdir, args.stages)


if __name__ == "__main__":
    main()
