"""Readers in gpt.data.sources: formats, compression, and one clear error per bad input."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from gpt.config import load_params
from gpt.data.clean import clean_documents
from gpt.data.records import DOC_COLUMNS
from gpt.data.sources import read_source
from gpt.errors import DataError
from tests.conftest import data_config

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"
TEXT = "A plain document about parsing files. It has two sentences."


def read(source: str, **changes: object) -> pd.DataFrame:
    """``source`` read with params.yaml's data settings and ``changes``."""
    return read_source(data_config(source, **changes))


def jsonl(*records: object) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def test_builtin_subset_has_the_schema() -> None:
    df = read("builtin", max_docs=40)
    assert list(df.columns) == DOC_COLUMNS and len(df) == 40
    assert df["doc_id"].is_unique and df["text"].str.len().min() > 0


def test_text_markdown_jsonl_csv_parquet(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text(TEXT, encoding="utf-8")
    (tmp_path / "b.md").write_text("# Title\n\n" + TEXT, encoding="utf-8")
    (tmp_path / "c.jsonl").write_bytes(jsonl({"text": "one"}, {"text": "two", "x": 1}))
    pd.DataFrame({"text": ["r0", None], "other": [1, 2]}).to_csv(tmp_path / "d.csv", index=False)
    pd.DataFrame({"text": ["p0", "p1"]}).to_parquet(tmp_path / "e.parquet")
    df = read(str(tmp_path))
    assert list(df.columns) == DOC_COLUMNS
    # The csv row without text is a bad record (see test_bad_records_are_rejected_with_reasons).
    assert df["text"].tolist() == [TEXT, "# Title\n\n" + TEXT, "one", "two", "r0", "p0", "p1"]
    assert df["doc_id"].is_unique
    assert df["name"].tolist()[2:4] == ["c.jsonl:1", "c.jsonl:2"]


def test_text_field_is_configurable(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_bytes(jsonl({"body": "hello"}))
    assert read(str(tmp_path / "a.jsonl"), text_field="body")["text"].tolist() == ["hello"]


def test_gzip_variants(tmp_path: Path) -> None:
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress(TEXT.encode()))
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(jsonl({"text": "gz line"})))
    (tmp_path / "c.csv.gz").write_bytes(gzip.compress(b"text\ncsv row\n"))
    (tmp_path / "d.md.gz").write_bytes(gzip.compress(b"# md"))
    df = read(str(tmp_path / "*.gz"))
    assert df["text"].tolist() == [TEXT, "gz line", "csv row", "# md"]


def test_zstd_variant(tmp_path: Path) -> None:
    zstandard = pytest.importorskip("zstandard", reason="zstandard not installed")
    data = zstandard.ZstdCompressor().compress(jsonl({"text": "zst one"}, {"text": "zst two"}))
    (tmp_path / "a.jsonl.zst").write_bytes(data)
    (tmp_path / "b.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(TEXT.encode()))
    assert read(str(tmp_path))["text"].tolist() == ["zst one", "zst two", TEXT]


@pytest.mark.parametrize("name", ["bad.txt.gz", "bad.jsonl.zst"])
def test_corrupt_compressed_files_name_the_file(tmp_path: Path, name: str) -> None:
    pytest.importorskip("zstandard", reason="zstandard not installed")
    (tmp_path / name).write_bytes(b"this is not compressed data at all")
    with pytest.raises(DataError, match=name.replace(".", r"\.")):
        read(str(tmp_path / name))


def test_bom_invalid_utf8_and_nul_bytes_reach_the_cleaner(tmp_path: Path) -> None:
    (tmp_path / "a_bom.txt").write_bytes(b"\xef\xbb\xbf" + TEXT.encode())
    (tmp_path / "b_bad.txt").write_bytes(b"\xff\xfe\xfa" * 30 + b" some words here and there")
    (tmp_path / "c_nul.txt").write_bytes(TEXT.replace(" ", " \x00").encode())
    (tmp_path / "d_bom.csv").write_bytes(b"\xef\xbb\xbftext\n" + TEXT.encode() + b" csv\n")
    df = read(str(tmp_path))
    assert df["text"].iloc[0] == TEXT
    assert df["text"].iloc[1].count("\ufffd") == 90
    assert df["text"].iloc[3] == TEXT + " csv"
    res = clean_documents(df, load_params(PARAMS, overrides={"clean.near_dedup": False}).clean)
    reasons = dict(zip(res.rejected["doc_id"], res.rejected["reason"], strict=True))
    assert reasons[df["doc_id"].iloc[1]] == "invalid_utf8"
    # The NUL bytes are stripped, which makes c_nul an exact duplicate of a_bom.
    assert reasons[df["doc_id"].iloc[2]] == f"duplicate_of={df['doc_id'].iloc[0]}"


def test_empty_files(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_bytes(b"")
    df = read(str(tmp_path / "empty.txt"))
    assert df["text"].tolist() == [""]  # kept as a document: the cleaner rejects it (too_short)
    (tmp_path / "empty.jsonl").write_bytes(b"\n\n")
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(DataError, match="holds no documents"):
        read(str(tmp_path / "empty.*[lv]"))


def test_huge_single_line_and_unicode_line_separators(tmp_path: Path) -> None:
    big = "word " * 1_000_000
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": big}) + "\n" +
                                      json.dumps({"text": "x\u2028y"}, ensure_ascii=False),
                                      encoding="utf-8")
    df = read(str(tmp_path / "a.jsonl"))
    assert df["text"].tolist() == [big, "x\u2028y"]


def test_on_bad_record_fail_names_every_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(jsonl({"text": "ok"}) + b"{not json\n" + jsonl({"body": "no text"}, ["a"],
                                                                   {"text": 3}, {"text": " "}))
    with pytest.raises(DataError) as err:
        read(str(path), on_bad_record="fail")
    msg = str(err.value)
    assert ("a.jsonl:2 invalid_json; a.jsonl:3 no_field_text; a.jsonl:4 no_field_text; "
            "a.jsonl:5 text_not_a_string; a.jsonl:6 empty_text") in msg
    assert "data.on_bad_record=reject" in msg and "\n" not in msg
    path.write_bytes(b"".join(b"{bad\n" for _ in range(30)))
    with pytest.raises(DataError, match=r"a\.jsonl:20 invalid_json \(and 10 more\)"):
        read(str(path), on_bad_record="fail")


def test_bad_records_are_rejected_with_reasons(tmp_path: Path) -> None:
    from gpt.data.sources import iter_source

    (tmp_path / "a.jsonl").write_bytes(jsonl({"text": "ok one"}) + b"{not json\n" +
                                       jsonl({"text": 3}, {"text": "ok two"}))
    pd.DataFrame({"text": ["r0", None, ""]}).to_parquet(tmp_path / "b.parquet")
    batches = list(iter_source(data_config(str(tmp_path)), batch_docs=2))
    docs = pd.concat([b.docs for b in batches], ignore_index=True)
    bad = pd.concat([b.bad for b in batches], ignore_index=True)
    assert docs["text"].tolist() == ["ok one", "ok two", "r0"]
    assert bad["name"].tolist() == ["a.jsonl:2", "a.jsonl:3", "b.parquet:1", "b.parquet:2"]
    assert bad["reason"].tolist() == ["bad_record=invalid_json", "bad_record=text_not_a_string",
                                      "bad_record=no_field_text", "bad_record=empty_text"]
    assert (bad["excerpt"] == "").all()  # nothing of the record: no PII
    assert len(docs) + len(bad) == 7  # every record read is accounted for


def test_corrupt_parquet_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not really parquet")
    with pytest.raises(DataError, match=r"broken\.parquet.*corrupt"):
        read(str(path))


def test_missing_column_missing_path_and_unsupported_type(tmp_path: Path) -> None:
    pd.DataFrame({"body": ["x"]}).to_parquet(tmp_path / "a.parquet")
    with pytest.raises(DataError, match="no column 'text'"):
        read(str(tmp_path / "a.parquet"))
    with pytest.raises(DataError, match="matches no files"):
        read(str(tmp_path / "nope" / "*.txt"))
    (tmp_path / "c.docx").write_bytes(b"x")
    with pytest.raises(DataError, match="unsupported file type"):
        read(str(tmp_path / "c.docx"))
    with pytest.raises(DataError, match="data.source is empty"):
        read("  ")


def test_hidden_files_in_folders_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text(TEXT, encoding="utf-8")
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x01")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref", encoding="utf-8")
    assert read(str(tmp_path))["text"].tolist() == [TEXT]


def test_max_docs_keeps_an_even_spread(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_bytes(jsonl(*({"text": f"doc {i}"} for i in range(10))))
    df = read(str(tmp_path / "a.jsonl"), max_docs=5)
    assert df["text"].tolist() == ["doc 0", "doc 2", "doc 4", "doc 6", "doc 8"]


def test_hf_dataset_from_disk(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets", reason="the optional 'hf' extra is not installed")
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": ["t0", "t1"], "label": [0, 1]}),
        "test": datasets.Dataset.from_dict({"text": ["e0"], "label": [1]}),
    })
    dd.save_to_disk(str(tmp_path / "dd"))
    df = read(f"hf:{tmp_path / 'dd'}")
    assert list(df.columns) == DOC_COLUMNS
    assert df["text"].tolist() == ["e0", "t0", "t1"]  # splits in name order
    assert df["doc_id"].is_unique and df["doc_id"].iloc[0].startswith("hf:")
    single = datasets.Dataset.from_dict({"body": ["b0", None]})
    single.save_to_disk(str(tmp_path / "one"))
    df = read(f"hf:{tmp_path / 'one'}", text_field="body")
    assert df["text"].tolist() == ["b0"]  # the missing text is a bad record
    with pytest.raises(DataError, match="no column 'text'"):
        read(f"hf:{tmp_path / 'one'}")
    with pytest.raises(DataError, match="does not exist"):
        read(f"hf:{tmp_path / 'missing'}")
    with pytest.raises(DataError, match="names no dataset"):
        read("hf:")


@pytest.mark.timeout(300)
def test_builtin_corpus_is_the_same_whatever_the_environment(tmp_path: Path) -> None:
    # Issue 26 item 7: the default run's data version depended on the environment: importing
    # stdlib modules for their docstrings sees what the environment changes (measured: with
    # SETUPTOOLS_USE_DISTUTILS=stdlib, 5,217 documents instead of 4,939, setuptools' distutils
    # shim being off; importing torch first, one fewer). Ingest twice in new processes: the
    # test's environment with prefect/mlflow/torch imported first (as `gptops run` has them),
    # and `env -i` with only a new HOME, the code's path, a C locale, the shim off, another cwd.
    root = Path(__file__).resolve().parents[2]
    code = ("import sys; from pathlib import Path; from gpt.config import load_params; "
            "from gpt.data.stages import ingest; "
            f"ingest(load_params({str(root / 'params.yaml')!r}), Path(sys.argv[1]))")
    runs = {"venv": (tmp_path / "a", dict(os.environ), root, "import prefect, mlflow, torch; "),
            "env -i": (tmp_path / "b", {"HOME": str(tmp_path / "home"), "PYTHONPATH": str(root),
                                        "LC_ALL": "C", "SETUPTOOLS_USE_DISTUTILS": "stdlib"},
                       tmp_path / "elsewhere", "")}
    for name, (ws, env, cwd, first) in runs.items():
        cwd.mkdir(exist_ok=True)
        out = subprocess.run(["env", "-i", *[f"{k}={v}" for k, v in env.items()],
                              sys.executable, "-c", first + code, str(ws)], cwd=cwd, timeout=240,
                             capture_output=True, text=True)
        assert out.returncode == 0, (name, out.stderr[-2000:])
    a, b = (sorted((ws / "data" / "raw").glob("part-*.parquet")) for ws, *_ in runs.values())
    assert [p.name for p in a] == [p.name for p in b] and a
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b, strict=True))
