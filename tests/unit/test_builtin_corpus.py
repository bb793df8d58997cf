"""The built-in corpus (gpt.data.builtin): the same documents from every patch release of a
Python version with a manifest, in any environment (issue 26 item 7)."""

from __future__ import annotations

import glob
import gzip
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpt.data.builtin import builtin_docs, interpreter_docs, manifest_path, text_hash

ROOT = Path(__file__).resolve().parents[2]
MINOR = "{}.{}".format(*sys.version_info[:2])


def _version(python: str) -> tuple[int, ...] | None:
    try:
        out = subprocess.run([python, "-I", "-c", "import sys; print(*sys.version_info[:3])"],
                             capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    return tuple(map(int, out.stdout.split())) if out.returncode == 0 else None


def _another_patch_release() -> tuple[str | None, list[str]]:
    """An interpreter of this Python minor version at another patch release (the system's
    first, as a fresh clone's venv would use), and the candidates looked at."""
    candidates = ["/usr/bin/python3", f"/usr/bin/python{MINOR}",
                  *sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{MINOR}.*/bin/python")))]
    for python in candidates:
        version = _version(python) if os.access(python, os.X_OK) else None
        if version and version[:2] == sys.version_info[:2] and version != sys.version_info[:3]:
            return python, candidates
    return None, candidates


def _docs_digest(python: str, env: dict[str, str], cwd: Path) -> tuple[str, str]:
    """``(count and sha256 of the built-in documents, stderr)`` from ``python`` in ``env``."""
    out = subprocess.run(["env", "-i", *[f"{k}={v}" for k, v in env.items()], python, "-m",
                          "gpt.data.builtin"], cwd=cwd, capture_output=True, text=True,
                         timeout=240)
    assert out.returncode == 0, (python, out.stderr[-2000:])
    return out.stdout.strip(), out.stderr


@pytest.mark.timeout(300)
def test_every_patch_release_gives_the_same_builtin_documents(tmp_path: Path) -> None:
    # Measured before the manifest: Debian's 3.11.2 read 4,301 documents, pyenv's 3.11.7 4,312;
    # 13 were in one only and 75 had another text (17 pydoc topics, 31 typing docstrings...), so
    # a clone whose venv was made with /usr/bin/python3 got another data version.
    other, looked_at = _another_patch_release()
    if other is None:
        pytest.skip(f"no second Python {MINOR} interpreter (another patch release) here: "
                    f"looked at {', '.join(looked_at)}")
    (tmp_path / "home").mkdir()
    venv = _docs_digest(sys.executable, dict(os.environ, PYTHONPATH=str(ROOT)), ROOT)
    system = _docs_digest(other, {"HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT),
                                  "LC_ALL": "C"}, tmp_path)
    assert system[0] == venv[0], (
        f"{other} (Python {'.'.join(map(str, _version(other) or ()))}) reads other built-in "
        f"documents than {sys.executable}: {system[1].strip()}; if the manifest was not made "
        "with that release, run scripts/builtin-manifest.py with both interpreters")
    assert "built-in corpus" not in venv[1] + system[1]


def test_the_manifest_keeps_its_documents_in_its_order_and_warns_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    docs = interpreter_docs()[:5]
    lines = [f"{text_hash(d[3])} {d[0]}" for d in reversed(docs[1:])]
    lines += [f"{text_hash('another text')} {docs[0][0]}", f"{'0' * 16} builtin:doc:no.such"]
    path = tmp_path / "m.txt.gz"
    path.write_bytes(gzip.compress(("# comment\n" + "\n".join(lines) + "\n").encode()))
    with caplog.at_level(logging.WARNING, logger="gpt.data.builtin"):
        kept = builtin_docs(path)
    assert kept == list(reversed(docs[1:]))
    assert len(caplog.records) == 1
    assert "2 of the 6 documents" in caplog.text and "data version will differ" in caplog.text


def test_this_interpreter_has_every_document_of_its_manifest(
        caplog: pytest.LogCaptureFixture) -> None:
    if not manifest_path().is_file():
        pytest.skip(f"no manifest for Python {MINOR}: the built-in corpus is every document")
    with caplog.at_level(logging.WARNING, logger="gpt.data.builtin"):
        kept = builtin_docs()
    assert not caplog.records, caplog.text
    assert kept and len({d[0] for d in kept}) == len(kept)


def test_the_cached_corpus_is_the_one_the_files_give_and_a_bad_cache_is_read_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    from gpt.data import builtin

    monkeypatch.setattr(builtin, "cache_dir", lambda: tmp_path / "cache")
    docs = interpreter_docs()[:3]
    manifest = tmp_path / "m.txt.gz"
    lines = [f"{text_hash(d[3])} {d[0]}" for d in docs] + [f"{'0' * 16} builtin:doc:no.such"]
    manifest.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    with caplog.at_level(logging.WARNING, logger="gpt.data.builtin"):
        first = builtin_docs(manifest)  # read from the files, then kept
        (cached,) = (tmp_path / "cache").glob("builtin-*.json")
        again = builtin_docs(manifest)  # from the cache: same documents, same warning
    assert first == again == docs
    assert [r.getMessage().split(";")[0] for r in caplog.records] == [
        "built-in corpus: 1 of the 4 documents of m.txt.gz are missing (1) or have another text "
        "(0) in Python " + sys.version.split()[0]] * 2
    cached.write_text('{"docs": [["cut')  # a torn or foreign file: read the files again
    assert builtin_docs(manifest) == docs
    assert builtin_docs(manifest) == docs
    manifest.write_bytes(gzip.compress((lines[0] + "\n").encode()))  # another manifest
    assert builtin_docs(manifest) == docs[:1]
    assert len(list((tmp_path / "cache").glob("builtin-*.json"))) == 2
