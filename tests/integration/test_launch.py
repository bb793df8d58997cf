"""``gpt.launch.run``: torch's elastic launcher with 2 gloo processes on CPU."""

from __future__ import annotations

import logging

import pytest

from gpt.errors import DataError
from gpt.launch import Job, World, run
from tests.integration import launch_fns

pytestmark = pytest.mark.slow


def test_two_processes_return_rank0s_result_and_relay_their_logs(caplog):
    with caplog.at_level(logging.INFO, logger="gpt"):
        out = run(Job("demo", "k1", World(2), "cpu", launch_fns.sum_of_ranks), scale=10)
    assert out == {"rank": 0, "world": 2, "sum": 10}  # rank 0's, after a real all-reduce
    for rank in (0, 1):
        assert any(r.message == f"[rank{rank}] rank {rank} says hello"
                   and r.levelno == logging.WARNING for r in caplog.records)


def test_one_process_runs_here_without_the_launcher():
    import torch.distributed as dist

    with pytest.raises(ValueError, match="Default process group has not been initialized"):
        run(Job("demo", "k1", World(1), "cpu", launch_fns.sum_of_ranks), scale=10)
    assert not dist.is_initialized()


def test_an_input_error_in_one_rank_is_raised_as_itself():
    with pytest.raises(DataError, match=r"^data/tokens/train.bin is empty; re-run gptops data "
                       r"tokenize$"):
        run(Job("demo", "k2", World(2), "cpu", launch_fns.bad_input_on_rank1))
