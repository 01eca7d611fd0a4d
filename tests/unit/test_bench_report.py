"""The benchmark report helpers: the section header and section replacement."""

from __future__ import annotations

import re
from pathlib import Path

from tests.bench.report import header, write_section


def test_header_has_command_date_machine_and_facts() -> None:
    text = header("python tests/bench/x.py --out f.md", "2 cores, CPU", "Data: 3 studies.")
    lines = text.split("\n")
    assert lines[:2] == ["Command: `python tests/bench/x.py --out f.md`", ""]
    assert re.fullmatch(r"- Date: \d{4}-\d\d-\d\d \d\d:\d\d UTC", lines[2])
    assert lines[3:] == ["- Machine: 2 cores, CPU", "- Data: 3 studies."]
    assert not text.endswith("\n")  # callers add the blank line before their table


def test_write_section_replaces_only_its_own_section(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    write_section(out, "## A", "first")
    write_section(out, "## B", "other")
    write_section(out, "## A", "second")
    assert out.read_text() == "# Benchmarks\n\n## A\n\nsecond\n\n## B\n\nother\n"


def test_write_section_owns_its_subsections(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    write_section(out, "## A", "table\n\n### A detail\n\nold")
    write_section(out, "## B", "other")
    write_section(out, "## A", "table\n\n### A detail\n\nnew")
    assert out.read_text() == ("# Benchmarks\n\n## A\n\ntable\n\n### A detail\n\nnew\n\n"
                               "## B\n\nother\n")
