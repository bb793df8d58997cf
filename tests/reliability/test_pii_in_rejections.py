"""Scenario 10: no PII leaves through ``rejected.parquet`` (DVC-tracked and pushed).

Documents of every PII kind are rejected for several reasons (exact duplicate, too short, low
share of letters, repeated lines), one with an address cut by the excerpt's end; the cleaning
stage writes its outputs, and no raw value appears in any rejected row, where the placeholders
stand instead.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from gpt.config import load_params
from gpt.data.records import DOC_COLUMNS
from gpt.data.shards import read_parts
from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.reliability

PII = {"email": "jane.doe@example.org", "ip": "192.168.10.20",
       "phone": "+1 415 555 0134", "secret": "AKIAIOSFODNN7EXAMPLE"}
PLACEHOLDER = {"email": "<EMAIL>", "ip": "<IP>", "phone": "<PHONE>", "secret": "<SECRET>"}


def _docs() -> list[str]:
    body = ("Write to {email} or call {phone} from host {ip} with key {secret} when the "
            "service at the office is down, and say which build you run today.").format(**PII)
    cut = "x" * 185 + " mail " + PII["email"] + " then more words follow here as usual."
    return [
        body,                                          # kept
        body,                                          # duplicate_of the first
        f"{PII['email']} {PII['ip']}",                 # too_short
        # low_alpha
        f"{PII['phone']} ; {PII['ip']} ; {PII['secret']} ; 42 ; 42 ; 42 ; 42 ; 42 ; 42",
        "\n".join([f"Contact {PII['email']} now."] * 6),  # repeated_lines
        cut,                                           # the address straddles char 200
    ]


def test_rejected_rows_hold_no_pii(tmp_path):
    from gpt.data.stages import clean

    ws = tmp_path
    (ws / "data" / "raw").mkdir(parents=True)
    texts = _docs()
    ids = [f"d{i}" for i in range(len(texts))]
    pd.DataFrame({"doc_id": ids, "source": "hostile", "name": ids, "text": texts},
                 columns=DOC_COLUMNS).to_parquet(ws / "data" / "raw" / "part-00000.parquet")
    (ws / "data" / "raw" / "manifest.json").write_text(json.dumps({"docs": len(texts)}))
    params = load_params(PROJECT_ROOT / "params.yaml")
    clean(params, ws)
    rejected = read_parts(ws / "data" / "clean", "clean", "rejected-")
    kept = read_parts(ws / "data" / "clean", "clean")
    assert len(kept) + len(rejected) == len(texts)
    reasons = {r.split("=")[0] for r in rejected["reason"]}
    assert {"duplicate_of", "too_short", "low_alpha"} <= reasons, reasons
    everything = "\n".join(rejected.astype(str).agg(" ".join, axis=1))
    for kind, value in PII.items():
        assert value not in everything, f"{kind} leaked into rejected.parquet"
        assert PLACEHOLDER[kind] in everything, kind
    # The address cut by the excerpt's end left no prefix of itself either.
    assert "jane.doe@exam" not in everything and "jane.doe" not in everything
    kept_text = "\n".join(kept["text"])
    assert all(v not in kept_text for v in PII.values())
