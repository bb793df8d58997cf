"""The training world: how many processes a step gets, and the settings that refuse early."""

import shutil
import subprocess
import sys

import pytest

from gpt.config import load_params
from gpt.errors import ConfigError
from gpt.launch import World
from tests.conftest import PROJECT_ROOT

PARAMS = PROJECT_ROOT / "params.yaml"


def launch(*overrides: str):
    return load_params(PARAMS, overrides=list(overrides)).launch


def test_one_process_is_the_default_on_a_machine_without_gpu():
    t = launch()
    assert t.nproc_per_node == "auto" and t.nnodes == 1
    assert World.of(t, 16, "train.batch_size").size == 1


def test_an_explicit_count_and_nodes_make_the_world():
    t = launch("launch.nproc_per_node=2", "launch.nnodes=2", "launch.node_rank=1",
               "launch.rdzv_endpoint=trainer-0:29500")
    w = World.of(t, 16, "train.batch_size")
    assert (w.nproc, w.nnodes, w.node_rank, w.size, w.endpoint) == \
        (2, 2, 1, 4, "trainer-0:29500")


def test_a_batch_the_world_does_not_divide_is_refused_before_any_work():
    t = launch("launch.nproc_per_node=3")
    with pytest.raises(ConfigError, match=r"finetune.batch_size=16 is not a multiple of the 3 "
                       r"training processes.*set finetune.batch_size to a multiple of 3"):
        World.of(t, 16, "finetune.batch_size")


@pytest.mark.parametrize("overrides, message", [
    (["launch.nnodes=2"], "launch.*nnodes=2 needs rdzv_endpoint as host:port"),
    (["launch.nnodes=2", "launch.rdzv_endpoint=trainer-0"], "needs rdzv_endpoint as host:port"),
    (["launch.node_rank=1"], "node_rank=1 must be below nnodes=1"),
    (["launch.nproc_per_node=0"], "nproc_per_node=0"),
    (["launch.nproc_per_node=many"], "launch.nproc_per_node"),
    (["launch.strategy=zero3"], "launch.strategy"),
])
def test_bad_launch_settings_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        launch(*overrides)


@pytest.mark.parametrize("old, new", [
    ("train.device=cuda", r"'train.device' is now 'launch.device' \(write launch.device=cuda\)"),
    ("train.nproc_per_node=2", r"is now 'launch.nproc_per_node' \(write launch.nproc_per_node=2"),
    ("train.strategy=fsdp", r"is now 'launch.strategy'"),
    ("train.min_lr=0.0003", r"is now 'train.min_lr_factor', the floor as a fraction of train.lr"),
    ("train.checkpoint_interval=50", r"is now 'train.checkpoints', checkpoints per run"),
])
def test_an_old_key_in_an_override_names_the_new_one(old, new):
    with pytest.raises(ConfigError, match=new):
        launch(old)


def test_the_cli_refuses_an_old_key_in_one_line_with_exit_2(tmp_path):
    shutil.copy(PARAMS, tmp_path / "params.yaml")
    r = subprocess.run([sys.executable, "-m", "flows.cli", "pretrain", "-w", str(tmp_path),
                        "--set", "train.device=cpu"], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path, env={"PYTHONPATH": str(PROJECT_ROOT),
                                                       "HOME": str(tmp_path), "PATH": "/usr/bin"})
    assert r.returncode == 2, r.stderr
    lines = [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "launch.device" in lines[0], lines

