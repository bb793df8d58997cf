"""The committed ``dvc.lock`` records the code and params the data stages have now.

Otherwise a fresh clone's first run rewrites it and leaves the clone dirty (the slow check of that
is tests/e2e/test_fresh_clone.py; this one needs no data). Any edit of a file a stage lists in
``dvc.yaml``'s ``deps:``, or of the params it reads, makes the lock stale: regenerate it.
"""

from __future__ import annotations

import hashlib

import yaml

from tests.conftest import PROJECT_ROOT

FIX = "regenerate it with `bash scripts/lock-data.sh` and commit dvc.lock"


def _load(name: str) -> dict:
    return yaml.safe_load((PROJECT_ROOT / name).read_text(encoding="utf-8"))


def _stale() -> list[str]:
    spec, lock = _load("dvc.yaml")["stages"], _load("dvc.lock")["stages"]
    params = _load("params.yaml")
    outs = {o for body in spec.values() for o in body.get("outs", [])}
    wrong: list[str] = []
    if set(spec) != set(lock):
        return [f"stages {sorted(spec)} in dvc.yaml, {sorted(lock)} in dvc.lock"]
    for stage, body in spec.items():
        rec = lock[stage]
        if rec["cmd"] != body["cmd"]:
            wrong.append(f"{stage}: cmd {rec['cmd']!r}, dvc.yaml says {body['cmd']!r}")
        code = {d for d in body["deps"] if d not in outs}  # outputs are checked by DVC's run
        recorded = {d["path"]: d for d in rec["deps"] if d["path"] not in outs}
        wrong += [f"{stage}: {d} is a dep in dvc.yaml, not in dvc.lock"
                  for d in sorted(code - set(recorded))]
        wrong += [f"{stage}: {d} is in dvc.lock, no longer a dep in dvc.yaml"
                  for d in sorted(set(recorded) - code)]
        for path in sorted(code & set(recorded)):
            md5 = hashlib.md5((PROJECT_ROOT / path).read_bytes()).hexdigest()
            if recorded[path]["md5"] != md5:
                wrong.append(f"{stage}: {path} changed since dvc.lock was written")
        read = rec["params"]["params.yaml"]
        for key in body.get("params", []):
            value = params
            for part in key.split("."):
                value = value[part]
            if read.get(key) != value:
                wrong.append(f"{stage}: params.yaml's {key} is not what dvc.lock records")
    return wrong


def test_dvc_lock_records_the_data_stages_code_and_params_as_they_are():
    stale = _stale()
    assert not stale, "dvc.lock is stale: " + "; ".join(stale) + f"; {FIX}"
