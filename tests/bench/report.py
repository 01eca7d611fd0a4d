"""Shared by the benchmark scripts: section header, machine line, section replacement."""

from __future__ import annotations

import os
import platform
import re
import time
from pathlib import Path


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def machine() -> str:
    return f"{os.cpu_count()} cores, {cpu_model()}"


def header(command: str, machine_line: str, *facts: str) -> str:
    """The lines that open a section: the command, the UTC date, the machine, more facts.

    ``facts`` become further ``- `` bullet lines after the machine line. There is no
    trailing newline: callers add a blank line and their table.
    """
    lines = [f"Command: `{command}`", "",
             f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"- Machine: {machine_line}", *(f"- {fact}" for fact in facts)]
    return "\n".join(lines)


def write_section(path: Path, heading: str, body: str) -> None:
    """Replace the section under ``heading`` (up to the next ``## ``) or append it."""
    section = f"{heading}\n\n{body.strip()}\n"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    # stop before the blank lines that precede the next "## " heading, so they stay
    pattern = re.compile("^" + re.escape(heading) + r"\n.*?(?=\n+## |\n*\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section.rstrip("\n"), text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n")
