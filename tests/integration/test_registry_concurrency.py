"""Two processes registering the same model on PostgreSQL at once: no error, distinct versions,
and the champion alias ends on the better one (the promotion gate holds a per-model lock)."""

from __future__ import annotations

import json
import multiprocessing as mp
import traceback
from dataclasses import asdict
from pathlib import Path

import pytest

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

NAME = "gptops-race"


def _register(uri: str, tok_path: str, experiment: str, value: float, barrier,
              out: str) -> None:
    """Child process: build a tiny model, wait for the sibling, register with ``val_ppl=value``."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers import GPT2Config, GPT2LMHeadModel

        from gpt import registry
        from gpt.data.tokenizer import load_hf_tokenizer

        tok = load_hf_tokenizer(Path(tok_path))
        model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=300,
                                           n_positions=32))
        from tests.integration.test_registry import candidate

        c = candidate(NAME, model, tok, value, "same-split")
        barrier.wait(timeout=120)
        r = registry.register(c, registry.Tracking(uri, experiment))
        Path(out).write_text(json.dumps(asdict(r)))
    except BaseException:  # noqa: BLE001 - report to the parent
        Path(out).write_text(json.dumps({"error": traceback.format_exc()}))
        raise


def test_concurrent_registration_on_postgres(postgres_uri, tmp_path):
    from gpt import registry
    from gpt.data.tokenizer import save_tokenizer, train_tokenizer
    from tests.integration.test_registry import TEXTS

    tok_path = tmp_path / "tokenizer.json"
    save_tokenizer(train_tokenizer(TEXTS, 300), tok_path)
    client = registry.client(postgres_uri)  # creates the schema once, before the race
    client.create_experiment("race", artifact_location=(tmp_path / "art").as_uri())

    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    values = {"worse": 12.0, "better": 7.0}
    procs = {k: ctx.Process(target=_register, args=(postgres_uri, str(tok_path), "race", v,
                                                    barrier, str(tmp_path / f"{k}.json")))
             for k, v in values.items()}
    for p in procs.values():
        p.start()
    for p in procs.values():
        p.join(timeout=300)
    results = {k: json.loads((tmp_path / f"{k}.json").read_text()) for k in procs}
    for k, r in results.items():
        assert "error" not in r, f"{k}: {r.get('error')}"
        assert procs[k].exitcode == 0

    assert {r["version"] for r in results.values()} == {"1", "2"}
    champion = client.get_model_version_by_alias(NAME, "champion")
    assert str(champion.version) == results["better"]["version"]
    assert champion.tags["metric.val_ppl"] == "7"
    history = registry.champion_history(postgres_uri, NAME)
    assert history[-1]["version"] == results["better"]["version"]
    # The later registration saw the earlier one as champion (the gate did not race).
    later = max(results.values(), key=lambda r: int(r["version"]))
    assert later["previous_champion"] == "1"


def _lock_waits(uri: str, name: str) -> list[str]:
    """Two threads take ``registry_lock``; the second must wait for the first to release."""
    import threading
    import time

    from gpt.registry import registry_lock

    events: list[str] = []
    held = threading.Event()

    def first() -> None:
        with registry_lock(uri, name):
            events.append("first in")
            held.set()
            time.sleep(0.5)
            events.append("first out")

    def second() -> None:
        held.wait(10)
        with registry_lock(uri, name):
            events.append("second in")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return events


def test_registry_lock_serialises_postgres(postgres_uri):
    assert _lock_waits(postgres_uri, "m") == ["first in", "first out", "second in"]


def test_registry_lock_serialises_sqlite(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert _lock_waits(uri, "m") == ["first in", "first out", "second in"]
