"""What every source yields: the document columns, and the records that are not documents.

Readers (``gpt.data.sources``, ``gpt.data.web``) produce frames with ``DOC_COLUMNS`` (plus
``WEB_COLUMNS`` for a crawl) and account for each record that is not a document in a
:class:`BadRecords`; cleaning reads the same columns. A module of its own so that readers and
cleaning share the schema without importing each other.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from gpt.errors import DataError

#: The document schema every reader returns.
DOC_COLUMNS = ["doc_id", "source", "name", "text"]
#: Columns a web source (WARC/WET) adds: the page's URL and its crawl date (``WARC-Date``).
WEB_COLUMNS = ["url", "date"]


class BadRecords:
    """Records that are not documents (invalid JSON, a missing, empty or non-string text field).

    ``on_bad_record``: ``"reject"`` keeps them as rejected records (file, line and reason; no
    excerpt, so no PII), ``"fail"`` raises one error per file listing its bad lines (up to
    ``FAIL_LIMIT``).
    """

    FAIL_LIMIT = 20

    def __init__(self, on_bad_record: str) -> None:
        if on_bad_record not in BAD_RECORD_MODES:
            raise DataError(f"data.on_bad_record '{on_bad_record}' is not one of "
                            f"{', '.join(BAD_RECORD_MODES)}")
        self.mode = on_bad_record
        self.rows: list[tuple[str, str, str, str, str]] = []
        self._file: list[str] = []
        #: Records that are not documents by design (a WARC request ...), counted by kind.
        self.skipped: dict[str, int] = {}

    def add(self, path: Path, line: int, reason: str) -> None:
        if self.mode == "fail":
            self._file.append(f"{path.name}:{line} {reason}")
        else:
            self.rows.append((f"{path}:{line}", str(path), f"{path.name}:{line}",
                              f"{BAD_RECORD}={reason}", ""))

    def end_file(self, path: Path) -> None:
        if self._file:
            shown = "; ".join(self._file[:self.FAIL_LIMIT])
            more = len(self._file) - self.FAIL_LIMIT
            self._file = []
            shown += f" (and {more} more)" if more > 0 else ""
            raise DataError(f"{path} has bad records: {shown}; "
                            "fix them, or set data.on_bad_record=reject to keep them as rejected "
                            "records")

    def take(self) -> pd.DataFrame:
        out = pd.DataFrame(self.rows, columns=BAD_COLUMNS)
        self.rows = []
        return out

    def take_skipped(self) -> dict[str, int]:
        out = dict(self.skipped)
        self.skipped.clear()  # in place: readers hold this dict
        return out


#: ``data.on_bad_record`` values.
BAD_RECORD_MODES = ("reject", "fail")
#: The reason prefix of a bad record (``bad_record=invalid_json`` ...).
BAD_RECORD = "bad_record"
#: Columns of bad records (those of rejected documents).
BAD_COLUMNS = ["doc_id", "source", "name", "reason", "excerpt"]
