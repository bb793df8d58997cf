"""Cleaning fanned out as Prefect tasks, one per shard, on any task runner (Dask for clusters).

``clean_flow`` maps ``filter_shard`` over the corpus shards with the flow's task runner (a local
Dask cluster by default, or an existing scheduler by address), then deduplicates across all shards
in the flow — the outputs are identical to ``gptops data clean``. Record them in ``dvc.lock``
afterwards with ``dvc commit clean``.

    python -m flows.clean_flow --workdir . --address tcp://scheduler:8786
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


@task(name="filter-shard", cache_policy=NO_CACHE)
def filter_shard(fn: Any, job: tuple) -> Any:
    """Normalise, filter, scrub and sign one shard (the per-shard half of cleaning)."""
    return fn(job)


def dask_runner(address: str | None = None, n_workers: int = 2) -> DaskTaskRunner:
    """A runner on an existing Dask scheduler, or on a local cluster of processes."""
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": n_workers, "threads_per_worker": 1,
                                          "processes": True, "dashboard_address": None})


@flow(name="clean_flow")
def clean_flow(workdir: str = ".", shard_docs: int = stages.SHARD_DOCS) -> dict[str, Any]:
    """Clean the workspace's raw documents with one task per shard.

    Args:
        workdir: the gptops workspace.
        shard_docs: documents per shard (one task each).
    """
    params = load_params(Path(workdir) / "params.yaml")

    def mapper(fn, jobs):
        futures = [filter_shard.submit(fn, job) for job in jobs]
        return [f.result() for f in futures]

    result = stages.clean(params, Path(workdir), mapper=mapper, shard_docs=shard_docs)
    create_markdown_artifact(render_report(result), key="cleaning-report")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=".")
    parser.add_argument("--address", default=None, help="Dask scheduler (default: local)")
    parser.add_argument("--workers", type=int, default=2, help="local cluster processes")
    parser.add_argument("--shard-docs", type=int, default=stages.SHARD_DOCS)
    args = parser.parse_args()
    runner = dask_runner(args.address, args.workers)
    clean_flow.with_options(task_runner=runner)(args.workdir, args.shard_docs)


if __name__ == "__main__":
    main()
