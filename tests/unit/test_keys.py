"""Step keys hash exactly what each step reads (DVC's rule, applied to training)."""

import pytest

from gpt.config import load_params
from gpt.pipeline import keys
from tests.conftest import PROJECT_ROOT

PARAMS = PROJECT_ROOT / "params.yaml"
DV = "data-v1"


def all_keys(overrides: list[str], data_version: str = DV) -> dict[str, str]:
    p = load_params(PARAMS, overrides=overrides)
    out = {"pretrain": keys.pretrain(p, data_version).digest,
           "finetune": keys.finetune(p, data_version).digest,
           "sft": keys.sft(p, data_version).digest}
    out.update({f"eval-{k}": keys.evaluation(k, p, data_version).digest
                for k in ("base", "task", "sft")})
    return out


BASE = all_keys([])


@pytest.mark.parametrize("override, changed", [
    ("finetune.lr=0.002", {"finetune", "eval-task"}),
    ("finetune.lora_rank=4", {"finetune", "eval-task"}),
    ("sft.lr=0.002", {"sft", "eval-sft"}),
    ("evaluate.max_items=7", {"eval-base", "eval-sft"}),  # SFT pairs and benchmark items
    ("sft.task_type=qa", {"eval-sft"}),
    ("sft.max_new_tokens=7", {"eval-sft"}),
    ("sft.enabled=false", set()),
    ("evaluate.ppl_batches=3", {"eval-base"}),
    ("registry.tracking_uri=sqlite:////tmp/x.db", set()),
    ("registry.task_model=other", set()),
    ("train.lr=0.001", set(BASE)),  # everything builds on the base
    # Where and over how many processes training runs changes no result (the global batch is
    # the same): the launch section is in no key.
    ("launch.nproc_per_node=4", set()),
    ("launch.strategy=fsdp", set()),
    ("launch.device=cpu", set()),
    ("train.checkpoints=6", set(BASE)),  # pretraining reads it (as fine-tuning reads its own)
    # The benchmark curve watches pretraining and changes no weight (test_pretrain_bench.py).
    ("train.bench_interval=5", set()),
    ("train.bench_limit=5", set()),
    ("train.min_lr_factor=0.2", set(BASE)),
    ("model.n_layer=2", set(BASE)),
])
def test_a_change_rekeys_exactly_the_steps_that_read_it(override, changed):
    new = all_keys([override])
    assert {k for k in BASE if new[k] != BASE[k]} == changed


def test_a_new_data_version_rekeys_everything():
    new = all_keys([], "data-v2")
    assert all(new[k] != BASE[k] for k in BASE)


def test_task_files_are_keyed_by_content_not_path(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("text,label\nhello,x\n")
    b.write_text("text,label\nhello,x\n")
    sets = ["finetune.task=file"]
    at_a = all_keys([*sets, f"finetune.task_path={a}"])["finetune"]
    assert all_keys([*sets, f"finetune.task_path={b}"])["finetune"] == at_a  # moved: same
    b.write_text("text,label\nhello,y\n")
    assert all_keys([*sets, f"finetune.task_path={b}"])["finetune"] != at_a  # edited: new


def test_a_key_records_what_it_was_made_of():
    p = load_params(PARAMS, overrides=["finetune.lr=0.002"])
    k = keys.finetune(p, DV)
    assert k.reads["pretrain"] == keys.pretrain(p, DV).digest
    assert k.reads["finetune"]["lr"] == 0.002
    assert len(k.short) == 8 and k.digest.startswith(k.short)


def test_a_registered_base_rekeys_the_tuned_models_only():
    p = load_params(PARAMS)
    assert keys.finetune(p, DV, base="abc").digest != keys.finetune(p, DV).digest
    assert keys.sft(p, DV, base="abc").digest != keys.sft(p, DV).digest
    assert keys.finetune(p, DV, base="abc").reads["pretrain"] == "abc"
    assert keys.model("base", p, DV, base="abc") == keys.pretrain(p, DV)


@pytest.mark.parametrize("spec, ok", [
    ("", True), ("models:/gptops-base@champion", True), ("models:/gptops-base/3", True),
    ("gptops-base", False), ("models:/gptops-base", False), ("hf:./gpt2", False),
])
def test_base_specs(spec, ok):
    from gpt.errors import ConfigError
    from gpt.pipeline.base import parse

    if ok:
        parse(spec)
    else:
        with pytest.raises(ConfigError, match="bad --base"):
            parse(spec)


def test_a_resolved_base_pins_its_version():
    from gpt.pipeline.base import Base

    assert Base("models:/m@champion", "d", "m", "3").pinned == "models:/m/3"
    assert Base("", "d").pinned == ""


# --- keys see the code ---------------------------------------------------------------------------

#: The modules each step's code starts from (what the step functions import to do the work), and
#: the steps whose key its key holds (their files count as its own).
STEP_ENTRIES = {
    "pretrain": (("gpt.train",), ()),
    "finetune": (("gpt.finetune", "gpt.data.shards"), ()),  # tasks are built from the documents
    "sft": (("gpt.finetune", "gpt.data.shards"), ()),
    "evaluate": (("gpt.evaluate",), ("pretrain",)),
    "benchmarks": (("gpt.benchmarks",), ("pretrain",)),
}


def _module_file(module: str) -> str | None:
    base = PROJECT_ROOT / module.replace(".", "/")
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path.relative_to(PROJECT_ROOT).as_posix()
    return None


def _imports(rel: str) -> set[str]:
    """The ``gpt`` files ``rel`` imports, at module level or inside functions."""
    import ast

    out: set[str] = set()
    for node in ast.walk(ast.parse((PROJECT_ROOT / rel).read_text())):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gpt"):
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("gpt")]
        for name in names:
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # packages run their __init__ too
                found = _module_file(".".join(parts[:i]))
                if found:
                    out.add(found)
    return out


def _closure(modules: tuple[str, ...]) -> set[str]:
    seen: set[str] = set()
    todo = [f for m in modules if (f := _module_file(m))]
    while todo:
        rel = todo.pop()
        if rel not in seen:
            seen.add(rel)
            todo.extend(_imports(rel))
    return seen


@pytest.mark.parametrize("step", sorted(STEP_ENTRIES))
def test_each_step_declares_the_library_files_it_executes(step):
    entries, upstream = STEP_ENTRIES[step]
    executed = _closure(entries)
    declared = {f for s in (step, *upstream) for f in keys.CODE[s]}
    # hf.py: keyed where a checkpoint is converted (init_from, a registered base)
    missing = executed - declared - set(keys.NOT_COMPUTING) - set(keys.CODE["hf"])
    assert not missing, (f"{step} executes {sorted(missing)}: add them to keys.CODE[{step!r}] "
                         "(or, if they compute nothing, to keys.NOT_COMPUTING, saying why)")
    stale = {f for f in keys.CODE[step] if f.endswith(".py")} - executed
    assert not stale, f"keys.CODE[{step!r}] lists {sorted(stale)}, which {step} never imports"


def test_declared_code_exists_and_is_outside_the_cli_registry_and_flows():
    listed = {f for files in keys.CODE.values() for f in files} | set(keys.NOT_COMPUTING)
    assert all((keys.CODE_ROOT / f).exists() for f in listed), listed
    assert not [f for f in listed if f.startswith(("gpt/cli", "gpt/registry", "gpt/pipeline",
                                                   "flows/"))]
    assert {f for f in keys.pretrain(load_params(PARAMS), DV).reads["code"]} == \
        set(keys.CODE["pretrain"])


def test_key_json_lists_each_file_with_its_content_hash():
    import hashlib

    code = keys.pretrain(load_params(PARAMS), DV).reads["code"]
    model = (PROJECT_ROOT / "gpt" / "model.py").read_bytes()
    assert code["gpt/model.py"] == hashlib.sha256(model).hexdigest()
    bench = keys.evaluation("base", load_params(PARAMS), DV).reads["code"]
    assert "gpt/bench_tasks/gptops_cloze.yaml" in bench  # a folder: each file in it


@pytest.fixture
def code_copy(tmp_path, monkeypatch):
    """The library copied elsewhere, and the keys reading the copy."""
    import shutil

    shutil.copytree(PROJECT_ROOT / "gpt", tmp_path / "gpt",
                    ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(keys, "CODE_ROOT", tmp_path)
    return tmp_path


def test_a_copied_project_keeps_its_keys(code_copy):
    assert all_keys([]) == BASE


TUNED = {"finetune", "sft", "eval-task", "eval-sft"}
EVALS = {"eval-base", "eval-task", "eval-sft"}
BENCH = {"eval-base", "eval-sft"}


@pytest.mark.parametrize("edited, changed", [
    ("gpt/model.py", set(BASE)),  # everything builds on the base
    ("gpt/train.py", set(BASE)),
    ("gpt/data/loader.py", set(BASE)),
    ("gpt/lora.py", TUNED),
    ("gpt/finetune.py", TUNED),
    ("gpt/evaluate.py", EVALS),
    ("gpt/benchmarks.py", BENCH),
    ("gpt/bench_tasks/gptops_cloze.yaml", BENCH),
    ("gpt/harness.py", BENCH),
    ("gpt/hf.py", set()),  # only where a checkpoint is converted (init_from, a registered base)
    ("gpt/cli.py", set()),
    ("gpt/config.py", set()),
    ("gpt/registry/gate.py", set()),
    ("gpt/pipeline/steps.py", set()),
])
def test_an_edit_rekeys_exactly_the_steps_that_execute_the_file(code_copy, edited, changed):
    with (code_copy / edited).open("a") as fh:
        fh.write("# an edit\n")
    new = all_keys([])
    assert {k for k in BASE if new[k] != BASE[k]} == changed


def test_a_registered_base_is_converted_by_hf_py(code_copy):
    p = load_params(PARAMS)
    registered = keys.finetune(p, DV, base="abc")
    assert "gpt/hf.py" in registered.reads["code"]
    assert "gpt/hf.py" not in keys.finetune(p, DV).reads["code"]
    (code_copy / "gpt" / "hf.py").write_text("# an edit\n", encoding="utf-8")
    assert keys.finetune(p, DV, base="abc").digest != registered.digest


def test_git_state_names_the_commit_and_whether_tracked_code_changed(tmp_path):
    import subprocess

    from gpt.gitinfo import git_state

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True,
                              text=True).stdout.strip()

    assert git_state(tmp_path) == ("unknown", "unknown")
    git("init", "-q")
    for name in ("model.py", "dvc.lock", "params.yaml"):
        (tmp_path / name).write_text("v1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    sha = git("rev-parse", "HEAD")
    assert git_state(tmp_path) == (sha, "false")
    (tmp_path / "new.py").write_text("untracked\n")
    (tmp_path / "dvc.lock").write_text("v2\n")  # a run's data version and keys, not code
    (tmp_path / "params.yaml").write_text("v2\n")
    assert git_state(tmp_path) == (sha, "false")
    (tmp_path / "model.py").write_text("v2\n")
    assert git_state(tmp_path) == (sha, "true")
