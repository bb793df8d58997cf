"""Every terminal log line follows one scheme: `HH:MM:SS LEVEL <step>: message`."""

from __future__ import annotations

import logging
import re

import pytest

from gpt.cli import _Formatter


@pytest.mark.parametrize("logger, message, expected", [
    ("gpt.progress", "ingest: 3 of 4 shards", "INFO ingest: 3 of 4 shards"),
    ("gpt.data.stages", "clean: unchanged", "INFO clean: unchanged"),
    ("gpt.prefect", "starting the workspace's Prefect server",
     "INFO prefect: starting the workspace's Prefect server"),
    ("dvc", "Running stage 'clean'", "INFO dvc: Running stage 'clean'"),
])
def test_one_scheme_outside_tasks(logger: str, message: str, expected: str) -> None:
    record = logging.LogRecord(logger, logging.INFO, __file__, 1, message, None, None)
    line = _Formatter().format(record)
    assert re.fullmatch(r"\d\d:\d\d:\d\d " + re.escape(expected), line), line
    assert " gpt." not in line  # no logger names: the step (or the library) names the line
