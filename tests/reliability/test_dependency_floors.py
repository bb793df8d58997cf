"""Scenario 13: dependency floors stay at versions without known advisories, and a new venv's
bundled pip (23.x, with advisories) is upgraded by scripts/setup.sh."""

from __future__ import annotations

import subprocess
import sys
import tomllib

from packaging.requirements import Requirement
from packaging.version import Version

from tests.conftest import PROJECT_ROOT

#: The lowest versions without a known advisory (the developers' guide; CVE-2026-4372 for
#: transformers < 5.3).
SAFE_FLOORS = {"mlflow": "3.16.1", "prefect": "3.6.28", "torch": "2.10",
               "transformers": "5.3"}


def _floors() -> dict[str, Version]:
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    out = {}
    for line in project["dependencies"]:
        req = Requirement(line)
        lows = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
        if lows:
            out[req.name.lower()] = max(lows)
    return out


def test_no_floor_allows_a_version_with_a_known_advisory():
    floors = _floors()
    for name, safe in SAFE_FLOORS.items():
        assert name in floors, f"{name} has no lower bound in pyproject.toml"
        assert floors[name] >= Version(safe), f"{name}>={floors[name]} allows < {safe}"


def test_setup_upgrades_an_old_pip(tmp_path):
    """The check setup.sh runs says 'upgrade' for pip 23 and 'keep' for the venv's own."""
    script = (PROJECT_ROOT / "scripts" / "setup.sh").read_text()
    assert 'install --upgrade "pip>=25"' in script
    check = script.split('.venv/bin/python -c "', 1)[1].split('"', 1)[0]
    fake = tmp_path / "pip"
    fake.mkdir()
    (fake / "__init__.py").write_text("__version__ = '23.2.1'\n")
    old = subprocess.run([sys.executable, "-c", check], cwd=tmp_path,
                         env={"PYTHONPATH": str(tmp_path)})
    assert old.returncode == 1  # upgrade
    (fake / "__init__.py").write_text("__version__ = '26.3'\n")
    new = subprocess.run([sys.executable, "-c", check], cwd=tmp_path,
                         env={"PYTHONPATH": str(tmp_path)})
    assert new.returncode == 0  # keep
