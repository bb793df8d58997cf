"""The training world: how many processes a step gets, and the settings that refuse early."""

import pytest

from gpt.config import load_params
from gpt.errors import ConfigError
from gpt.launch import World
from tests.conftest import PROJECT_ROOT

PARAMS = PROJECT_ROOT / "params.yaml"


def train(*overrides: str):
    return load_params(PARAMS, overrides=list(overrides)).train


def test_one_process_is_the_default_on_a_machine_without_gpu():
    t = train()
    assert t.nproc_per_node == "auto" and t.nnodes == 1
    assert World.of(t, t.batch_size, "train.batch_size").size == 1


def test_an_explicit_count_and_nodes_make_the_world():
    t = train("train.nproc_per_node=2", "train.nnodes=2", "train.node_rank=1",
              "train.rdzv_endpoint=trainer-0:29500")
    w = World.of(t, 16, "train.batch_size")
    assert (w.nproc, w.nnodes, w.node_rank, w.size, w.endpoint) == \
        (2, 2, 1, 4, "trainer-0:29500")


def test_a_batch_the_world_does_not_divide_is_refused_before_any_work():
    t = train("train.nproc_per_node=3")
    with pytest.raises(ConfigError, match=r"finetune.batch_size=16 is not a multiple of the 3 "
                       r"training processes.*set finetune.batch_size to a multiple of 3"):
        World.of(t, 16, "finetune.batch_size")


@pytest.mark.parametrize("overrides, message", [
    (["train.nnodes=2"], "train.*nnodes=2 needs rdzv_endpoint as host:port"),
    (["train.nnodes=2", "train.rdzv_endpoint=trainer-0"], "needs rdzv_endpoint as host:port"),
    (["train.node_rank=1"], "node_rank=1 must be below nnodes=1"),
    (["train.nproc_per_node=0"], "nproc_per_node=0"),
    (["train.nproc_per_node=many"], "train.nproc_per_node"),
    (["train.strategy=zero3"], "train.strategy"),
])
def test_bad_launch_settings_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        train(*overrides)
