"""DICOM UID validation: the only gate between network input and file names."""

from __future__ import annotations

import re

# PS3.5 9.1: components of digits separated by '.', no leading zero in a
# multi-digit component, at most 64 characters.
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")


def is_valid_uid(value: object) -> bool:
    """Return True when ``value`` is a syntactically valid DICOM UID."""
    return isinstance(value, str) and len(value) <= 64 and bool(_UID_RE.match(value))
