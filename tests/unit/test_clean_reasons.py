"""The table of reject reasons (gpt.data.clean.filters.REASONS) is the one place they are stated:
the docs' list (docs/data.md), the params.yaml comments and dvc.yaml's deps must agree with it."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from gpt.config import CleanConfig
from gpt.data.clean import QUALITY_REASONS, REASONS, reasons_markdown
from gpt.data.clean.filters import BY_NAME, QUALITY_FILTERS

ROOT = Path(__file__).resolve().parents[2]
FIELDS = set(CleanConfig.model_fields)


def readme_reasons() -> str:
    """The list of reasons on the docs' Data page (its first markdown list)."""
    section = (ROOT / "docs" / "data.md").read_text(encoding="utf-8")
    lines = section.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("- `"))
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return "\n".join(lines[start:end]) + "\n"


def test_reason_names_are_unique_and_params_are_clean_keys() -> None:
    assert len(BY_NAME) == len(REASONS)
    for r in REASONS:
        assert set(r.params) <= FIELDS, r.name
    # Every clean: key but the PII kinds decides some reason.
    assert FIELDS - {k for r in REASONS for k in r.params} == {"pii"}


def test_descriptions_name_their_params() -> None:
    for r in REASONS:
        named = set(re.findall(r"`(\w+)`", r.description)) & FIELDS
        assert named == set(r.params), r.name


def test_quality_codes_follow_the_table() -> None:
    assert tuple(QUALITY_REASONS) == ("", *(r.name for r in QUALITY_FILTERS))
    assert all(r.rejects is not None for r in QUALITY_FILTERS)


def test_readme_lists_the_table() -> None:
    readme = readme_reasons()
    names = re.findall(r"^- `(\w+)(?:=<\w+>)?`", readme, flags=re.M)
    assert names == [r.name for r in REASONS]
    assert readme == reasons_markdown(), (
        "docs/data.md's list of reasons differs from gpt/data/clean/filters.py REASONS; paste "
        "`python -c 'from gpt.data.clean import reasons_markdown as m; print(m(), end=\"\")'`")


def test_params_yaml_comments_name_the_right_reasons() -> None:
    text = (ROOT / "params.yaml").read_text(encoding="utf-8")
    section = text.split("\nclean:\n", 1)[1].split("\n\n", 1)[0]
    annotated: dict[str, str] = {}
    for line in section.splitlines():
        match = re.match(r"\s+(\w+):.*#.*\(reason: (\w+)\)", line)
        if match:
            annotated[match[1]] = match[2]
    assert set(yaml.safe_load("clean:\n" + section)["clean"]) == FIELDS
    for key, reason in annotated.items():
        assert reason in BY_NAME, (key, reason)
        assert key in BY_NAME[reason].params, (key, reason)
    # Each reason with params is named next to the first of them.
    assert annotated == {r.params[0]: r.name for r in REASONS if r.params}


def test_dvc_clean_stage_depends_on_every_module() -> None:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    modules = {p.relative_to(ROOT).as_posix() for pattern in ("*.py", "*.json")
               for p in (ROOT / "gpt/data/clean").glob(pattern)}
    assert modules <= set(stages["clean"]["deps"])
