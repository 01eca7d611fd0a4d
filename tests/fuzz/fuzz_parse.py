"""Coverage-guided fuzzing (atheris/libFuzzer) of the ingest parse path.

    .venv/bin/pip install -e '.[fuzz]'
    .venv/bin/python tests/fuzz/seeds.py var/fuzz/seeds
    nice -n 19 .venv/bin/python tests/fuzz/fuzz_parse.py -max_len=65536 -rss_limit_mb=2048 \\
        -timeout=10 -max_total_time=600 var/fuzz/parse var/fuzz/seeds/parse

The target is :func:`tests.fuzz.targets.parse_one`: File Meta (``split_part10``) and
data set (``encode_part10`` + ``parse_header``, as the C-STORE handler runs them).
qcd and pydicom are instrumented. Every input must parse or raise ``IngestError`` with
a specific status; any other exception, a hang past ``-timeout`` or an RSS past
``-rss_limit_mb`` is a crash (libFuzzer writes ``crash-*``/``timeout-*``/``oom-*``).
Minimise one with ``-minimize_crash=1 -runs=20000 crash-...``, then save it under
``tests/data/fuzz/parse/``: ``tests/unit/test_fuzz_corpus.py`` replays that folder.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere

with atheris.instrument_imports(include=["qcd", "pydicom"]):
    from tests.fuzz.targets import parse_one


def test_one_input(data: bytes) -> None:
    parse_one(data)


def main() -> None:
    warnings.simplefilter("ignore")  # pydicom warns on most fuzzed values; only slows the run
    logging.disable(logging.CRITICAL)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
