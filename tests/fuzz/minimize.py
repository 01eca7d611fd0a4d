"""Shrink a crashing input of a fuzz target while it fails the same way (no atheris needed).

    .venv/bin/python tests/fuzz/minimize.py parse crash-1234 tests/data/fuzz/parse/name

libFuzzer's own ``-minimize_crash=1`` re-executes the harness as a program, which a
Python script run through the venv's interpreter is not; this does the same job in
process: it removes ever smaller chunks (halves down to single bytes) and keeps every
removal after which the target still raises the same exception type from the same
place (file and line of the innermost frame). A hang or an out-of-memory is not handled:
cut those by hand.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere

from tests.fuzz.targets import HttpTarget, parse_one  # noqa: E402


def signature(target: Callable[[bytes], object], data: bytes) -> tuple[str, str, int] | None:
    """Exception type and innermost frame of the failure, or None when it passes."""
    try:
        target(data)
    except Exception as exc:  # any exception is a failure of the contract
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        return type(exc).__name__, frame.filename, frame.lineno or 0
    return None


def minimize(target: Callable[[bytes], object], data: bytes) -> bytes:
    want = signature(target, data)
    if want is None:
        raise SystemExit("the input does not fail")
    chunk = max(len(data) // 2, 1)
    while chunk >= 1:
        pos, shrunk = 0, False
        while pos < len(data):
            candidate = data[:pos] + data[pos + chunk:]
            if signature(target, candidate) == want:
                data, shrunk = candidate, True
            else:
                pos += chunk
        if not shrunk:
            chunk //= 2
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", choices=["parse", "http"])
    parser.add_argument("crash", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    data = args.crash.read_bytes()
    http = HttpTarget() if args.target == "http" else None
    try:
        small = minimize(http.one if http is not None else parse_one, data)
    finally:
        if http is not None:
            http.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(small)
    print(f"{len(data)} -> {len(small)} bytes: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
