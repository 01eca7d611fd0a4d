"""Coverage-guided fuzzing (atheris/libFuzzer) of the HTTP server's request handling.

    .venv/bin/pip install -e '.[fuzz]'
    .venv/bin/python tests/fuzz/seeds.py var/fuzz/seeds
    nice -n 19 .venv/bin/python tests/fuzz/fuzz_http.py -max_len=65536 -rss_limit_mb=2048 \\
        -timeout=10 -max_total_time=600 -dict=tests/fuzz/http.dict var/fuzz/http \\
        var/fuzz/seeds/http

Each input is the byte stream of one connection (one or more pipelined requests),
served by the real handler class of :class:`qcd.web.http.HealthServer` over in-memory
streams (:class:`tests.fuzz.targets.HttpTarget`): request line, headers, body limits,
routing, authentication (session cookie, Basic, login form), CSRF, the dashboard pages,
the JSON API, CSV exports and STOW-RS into a temporary spool. qcd and the standard
library's ``http``, ``email`` and ``urllib`` are instrumented. Crashes: an exception out
of the handler, a response without a status line, CR/LF in a response header, a 5xx
other than a probe's 503 / 501 for an unknown method / 505 for HTTP/2+ (qcd's logged
traceback is in the message), a hang past ``-timeout``. Save minimised crashes under
``tests/data/fuzz/http/``.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere

with atheris.instrument_imports(include=["qcd", "http", "email", "urllib"]):
    import http.server  # noqa: F401  (the handler's base class)

    import qcd.app  # noqa: F401  (HttpTarget imports it lazily: instrument it here)
    from tests.fuzz.targets import HttpTarget

TARGET: HttpTarget | None = None


def test_one_input(data: bytes) -> None:
    assert TARGET is not None
    TARGET.one(data)


def main() -> None:
    warnings.simplefilter("ignore")  # pydicom warns on most fuzzed values; only slows the run
    global TARGET
    atheris.Setup(sys.argv, test_one_input)
    TARGET = HttpTarget()
    try:
        atheris.Fuzz()
    finally:
        TARGET.close()


if __name__ == "__main__":
    main()
