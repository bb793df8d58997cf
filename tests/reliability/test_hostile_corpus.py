"""Scenario 8: a hostile corpus. Mojibake part: UTF-8 read as Windows-1252 or Latin-1.

Documents with typical mojibake ("donâ€™t", "cafÃ©", "â€œquotedâ€\\x9d", "Ã¼ber") go through
``clean_documents`` and come out repaired (by ftfy, line by line); clean text (plain ASCII,
correct non-ASCII, and text that merely looks odd but is correct) comes out byte-identical.
"""

from __future__ import annotations

import pandas as pd
import pytest

from gpt.config import load_params
from gpt.data.clean import clean_documents
from gpt.data.records import DOC_COLUMNS
from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.reliability

#: (as read, as it should come out).
MOJIBAKE = [
    ("I donâ€™t think the parser handles this case, so we wrote a test for it.",
     "I don’t think the parser handles this case, so we wrote a test for it."),
    ("We met at the cafÃ© near the station and talked about the release.",
     "We met at the café near the station and talked about the release."),
    ("She said â€œquotedâ€\x9d text must be repaired before it is tokenised.",
     "She said “quoted” text must be repaired before it is tokenised."),
    ("The Ã¼ber build runs every night and publishes the wheels to the index.",
     "The über build runs every night and publishes the wheels to the index."),
    # Latin-1 rather than Windows-1252: the C1 controls of the misread bytes are still there.
    ("The hosted runner costs 5 â\x82¬ per month, which is cheap for what it does.",
     "The hosted runner costs 5 € per month, which is cheap for what it does."),
    # One bad line among correct ones: only that line changes.
    ("Größe und Gewicht stehen in der Tabelle.\nDie Ã„nderung kam spÃ¤ter als geplant, leider.",
     "Größe und Gewicht stehen in der Tabelle.\nDie Änderung kam später als geplant, leider."),
    # Mojibake of mojibake (read wrongly twice).
    ("The second build of the cafÃƒÂ© menu printed every price without any errors.",
     "The second build of the café menu printed every price without any errors."),
]

CLEAN = [
    "Plain ASCII text with nothing to repair, as most of the corpus is.",
    "A naïve café in Zürich serves 日本語 menus and crème brûlée every day of the week.",
    "She said “hello” and didn’t wait for the answer; that’s fine — really.",
    "Looks odd but is correct: it costs £5 ± 2 at 20°C, says the Société Générale © page.",
    "Greek and Cyrillic: Ελληνικά and Привет are written correctly here, too.",
    "The shrug ¯\\_(ツ)_/¯, I ♥ NY, the Ø symbol and x² + y³ are meant as written.",
    "Ça va? Très bien, merci. Die Größe passt, sagte sie, und ging nach Hause.",
    "The ﬁle was ﬂagged: ligatures and «guillemets» stay, as does the château.",
]


def test_mojibake_is_repaired_and_clean_text_is_left_byte_identical():
    texts = [bad for bad, _ in MOJIBAKE] + CLEAN
    ids = [f"d{i}" for i in range(len(texts))]
    docs = pd.DataFrame({"doc_id": ids, "source": "hostile", "name": ids, "text": texts},
                        columns=DOC_COLUMNS)
    res = clean_documents(docs, load_params(PROJECT_ROOT / "params.yaml").clean)
    assert res.rejected.empty, res.rejected[["doc_id", "reason"]].to_string()
    out = dict(zip(res.kept["doc_id"], res.kept["text"], strict=True))
    for i, (bad, good) in enumerate(MOJIBAKE):
        assert out[f"d{i}"] == good, f"not repaired: {bad!r} -> {out[f'd{i}']!r}"
    for i, text in enumerate(CLEAN, start=len(MOJIBAKE)):
        assert out[f"d{i}"].encode() == text.encode(), f"changed: {text!r} -> {out[f'd{i}']!r}"
