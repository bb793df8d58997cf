"""PII in the raw shards is a documented choice: ``data.scrub_raw``.

Before: documents with e-mails, phone numbers and IPs stayed in ``data/raw/*.parquet`` as read,
and so in the DVC cache and remote, with no switch and no word in the README. Now
``data.scrub_raw: true`` replaces them at ingest with cleaning's scrubber (nothing in data/raw,
the cache or the remote); ``false`` (the default) keeps the text as read, as documented, and
switching it re-runs ingest.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.reliability

PII = ["ada.lovelace@example.org", "+44 20 7946 0958", "(555) 123-4567", "203.0.113.57",
       "2001:db8:85a3::8a2e:370:7334"]


def _corpus(path: Path) -> Path:
    lines = [f"Document {i}: write to {PII[0]} or call {PII[1]} (US: {PII[2]}); the build "
             f"server at {PII[3]} and {PII[4]} answers every night, as the notes say."
             for i in range(30)]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in lines), encoding="utf-8")
    return path


def _texts(folder: Path) -> str:
    """Every string in every file under ``folder``: parquet read as tables (its pages are
    compressed), anything else as bytes."""
    out = []
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            table = pq.read_table(f)
        except (pa.ArrowInvalid, OSError):
            out.append(f.read_bytes().decode("utf-8", "replace"))
            continue
        for col in table.columns:
            if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
                out.extend(v for v in col.to_pylist() if v)
    return "\n".join(out)


def _found(folder: Path) -> list[str]:
    text = _texts(folder)
    return [p for p in PII if p in text]


@pytest.mark.timeout(300)
def test_scrub_raw_keeps_pii_out_of_raw_shards_the_dvc_cache_and_the_remote(tmp_path):
    from gpt.dvc_repo import push, run_stage
    from gpt.params_file import apply_data_overrides
    from tests.conftest import make_workspace

    corpus = _corpus(tmp_path / "corpus.jsonl")

    # On from the start: no PII in data/raw, the cache or the remote.
    on = make_workspace(tmp_path / "on", [f"data.source={corpus}", "data.scrub_raw=true"])
    assert run_stage(on, "ingest").ran
    push(on)
    for folder in (on / "data" / "raw", on / ".dvc" / "cache", on / ".gptops" / "dvc-remote"):
        assert _texts(folder), folder  # the check reads something there
        assert _found(folder) == [], folder
    raw = _texts(on / "data" / "raw")
    assert "<EMAIL>" in raw and "<PHONE>" in raw and "<IP>" in raw
    manifest = json.loads((on / "data" / "raw" / "manifest.json").read_text())
    assert manifest["pii_scrubbed"] == {"email": 30, "phone": 60, "ip": 60}

    # Off (the default): the raw shards and the cache keep the text as read, as documented.
    off = make_workspace(tmp_path / "off", [f"data.source={corpus}"])
    assert run_stage(off, "ingest").ran
    assert _found(off / "data" / "raw") == PII
    assert _found(off / ".dvc" / "cache") == PII
    # Switching it on re-runs ingest (dvc.yaml lists the key) and scrubs data/raw.
    apply_data_overrides(off, ["data.scrub_raw=true"])
    assert run_stage(off, "ingest").ran
    assert _found(off / "data" / "raw") == []
