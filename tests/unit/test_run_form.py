"""The Run form is one table: the flow's parameters, the overrides and the values shown come from
``flows.form.FIELDS``, and importing ``flows`` reads no params.yaml."""

from __future__ import annotations

import subprocess
import sys
import typing

from flows import form
from gpt.config import DEFAULT_PROFILE, PROJECT_PARAMS, Params, get_dotted, load_params
from tests.conftest import PROJECT_ROOT

READS_AT_IMPORT = """
import sys
opened = []
sys.addaudithook(lambda ev, args: opened.append(str(args[0])) if ev == "open" else None)
import flows.pipeline, flows.tune, flows.cli, flows.deploy, flows.form  # noqa: E401
print([p for p in opened if p.endswith("params.yaml")])
"""


def test_importing_the_flows_reads_no_params_file():
    out = subprocess.run([sys.executable, "-c", READS_AT_IMPORT], cwd=PROJECT_ROOT,
                         capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_the_flow_parameters_are_the_tables_fields_typed_with_the_projects_values():
    from flows.pipeline import training_pipeline

    props = training_pipeline.parameters.properties
    project = load_params(PROJECT_PARAMS, DEFAULT_PROFILE)
    names = [f.name for f in form.FIELDS]
    assert list(props)[1:1 + len(names)] == names  # after profile, in the table's order
    for f in form.FIELDS:
        section, key = f.key.split(".")
        assert key in type(getattr(project, section)).model_fields  # a real params key
        assert props[f.name]["default"] == f.show(get_dotted(project, f.key))
        assert props[f.name]["description"] == f.help
    assert props["max_steps"]["type"] == "integer" and props["learning_rate"]["type"] == "number"
    assert props["strategy"]["enum"] == list(typing.get_args(
        Params.model_fields["launch"].annotation.model_fields["strategy"].annotation))
    assert props["processes"]["type"] == "string"  # "auto" or a count, as text
    assert props["profile"]["default"] == DEFAULT_PROFILE and "tiny" in props["profile"]["enum"]
    assert {"base", "reclean", "save_overrides", "wait", "overrides", "workdir"} < set(props)


def test_a_field_at_the_value_shown_is_no_override():
    shown = {"max_steps": 30, "task_file": "", "processes": "1"}
    asked = []

    def workspace() -> dict:
        asked.append(1)
        return {"max_steps": 50}

    assert form.overrides(dict(shown), shown, workspace) == []
    assert asked == []  # the workspace's values are read only when a value differs
    assert form.overrides({**shown, "max_steps": 50}, shown, workspace) == []  # the deployment's
    assert form.overrides({**shown, "max_steps": 7, "processes": "2", "task_file": "t.csv"},
                          shown, workspace) == [  # in the table's order
        "train.max_steps=7", 'finetune.task_path="t.csv"', "finetune.task=file",
        "launch.nproc_per_node=2"]
    assert form.overrides({**shown, "processes": "auto"}, shown, lambda: {}) == [
        'launch.nproc_per_node="auto"']
