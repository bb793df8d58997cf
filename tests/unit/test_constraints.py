"""The venv holds exactly the versions constraints.txt pins (what scripts/setup.sh installs).

The data stages' parquet files carry the pandas and pyarrow versions that wrote them, so the
committed dvc.lock (and the default run's data version) hold only for the pinned libraries: CI
once failed because a fresh setup got a newer pandas/pyarrow than the one that wrote dvc.lock.
"""

from __future__ import annotations

from importlib import metadata

from packaging.utils import canonicalize_name

from tests.conftest import PROJECT_ROOT

FIX = "run `bash scripts/setup.sh` (it installs constraints.txt's versions)"
UNPINNED = {"torch", "gptops", "nvidia-ml-py"}  # setup.sh picks torch's build; the GPU extra


def pins() -> dict[str, str]:
    found = {}
    for line in (PROJECT_ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin (name==version)"
            found[canonicalize_name(name)] = version
    return found


def installed() -> dict[str, str]:
    return {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}


def test_every_pinned_package_is_installed_at_its_version():
    have = installed()
    wrong = {n: (v, have.get(n)) for n, v in pins().items() if have.get(n) != v}
    assert not wrong, f"pinned vs installed: {wrong}; {FIX}"


def test_every_installed_package_is_pinned():
    pinned = pins()
    loose = sorted(n for n in installed() if n not in pinned and n not in UNPINNED
                   and n not in {"pip", "setuptools", "wheel"}
                   and not n.startswith("nvidia-"))
    assert not loose, (f"installed but not in constraints.txt: {loose}; add them with "
                       "`bash scripts/lock-deps.sh`")
    assert "torch" not in pinned and {"pandas", "pyarrow"} <= pinned.keys()
