"""`gptops import` as a user meets it: a wrong spec is named at once, and a new folder becomes
a workspace whose data is made (with the checkpoint's tokenizer) before the import is scored."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DATA_OVERRIDES, PROJECT_ROOT, RUN_OVERRIDES


def gptops(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT),
                               "GPTOPS_PROGRESS": "plain"})


@pytest.mark.parametrize("spec, says", [
    ("hf:/no/such/dir", "folder /no/such/dir does not exist"),
    ("gpt2", "write hf:<save_pretrained folder> or hf:<hub id>"),
])
def test_a_wrong_spec_is_named_before_anything_is_written(tmp_path, spec, says):
    ws = tmp_path / "new"
    out = gptops("import", spec, "-w", str(ws), cwd=tmp_path, timeout=60)
    assert out.returncode == 2, out.stdout + out.stderr
    assert says in out.stdout and "model.init_from" not in out.stdout
    assert len(out.stdout.strip().splitlines()) == 1, out.stdout
    assert not ws.exists()


@pytest.mark.slow
def test_import_into_a_new_folder_makes_the_workspace_and_its_data(tmp_path):
    from gpt.registry import list_versions, resolve_tracking_uri
    from tests.unit.test_hf import make_gpt2_folder

    spec = f"hf:{make_gpt2_folder(tmp_path / 'tiny-gpt2')}"
    ws = tmp_path / "new"
    small = [o for o in DATA_OVERRIDES if not o.startswith("data.max_docs=")]
    sets = [a for o in [*small, "data.max_docs=400", *RUN_OVERRIDES,
                        f"tokenizer.pretrained={spec}"] for a in ("--set", o)]
    out = gptops("import", spec, "-w", str(ws), *sets, cwd=tmp_path)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert "import: evaluating" in out.stderr and "on data version" in out.stderr
    assert (ws / "dvc.lock").is_file() and (ws / "data" / "tokens").is_dir()
    versions = list_versions(resolve_tracking_uri("", ws))
    assert [(v["name"], v["version"]) for v in versions] == [("gptops-base", "1")]
    assert versions[0]["tags"]["init_from"] == spec
    # the one-off data overrides were for this command only
    assert spec not in (ws / "params.yaml").read_text()
