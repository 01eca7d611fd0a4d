"""Bounded inflation of Deflated Explicit VR Little Endian data sets (PS3.5 A.5).

pydicom inflates a deflated data set whole and without a limit, so a few hundred kB
on the wire can become hundreds of MB in memory (a decompression bomb). qcd inflates
it first, in two passes: :func:`inflated_size` counts the inflated bytes while holding
at most :data:`CHUNK` of them and refuses beyond the limit; :func:`inflate` then
allocates exactly that size once. A refused bomb therefore costs one chunk of memory
and the CPU time to inflate up to the limit; a valid data set costs its inflated size
(plus pydicom's copy of each value when it is parsed) and a second inflate.
"""

from __future__ import annotations

import zlib

from qcd.errors import IngestError
from qcd.ingest import status

CHUNK = 1 << 20
"""The most inflated bytes one ``decompress`` call may return while counting."""
_FEED = 1 << 16
# input per call: zlib copies the unconsumed input on every call that fills CHUNK,
# so feeding it in slices keeps those copies small for a large compressed data set
MIB = 1 << 20
SETTING = "ingest.max_inflated_mb"


def inflated_size(deflated: bytes | memoryview, limit: int) -> int:
    """The size of the raw deflate stream ``deflated`` once inflated.

    Never asks zlib for more than :data:`CHUNK` bytes at a time, nor for more than
    ``limit + 1`` in all, and keeps none of them. Bytes after the end of the stream
    (the pad byte PS3.5 allows) are ignored, as ``zlib.decompress`` ignores them.

    Parameters
    ----------
    deflated
        The data set as received (raw deflate, no zlib header).
    limit
        The largest inflated size accepted, in bytes (> 0).

    Raises
    ------
    IngestError
        0xC214 the stream inflates beyond ``limit``; 0xC210 it is corrupt or ends
        before its final block.
    """
    if limit <= 0:
        raise ValueError(f"limit must be > 0 bytes, got {limit}")
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    view = memoryview(deflated)
    total = 0
    for start in range(0, max(len(view), 1), _FEED):
        data: bytes | memoryview = view[start : start + _FEED]
        while True:
            ask = min(CHUNK, limit + 1 - total)  # >= 1: 0 would mean "no limit" to zlib
            try:
                out = inflater.decompress(data, ask)
            except zlib.error as exc:
                raise IngestError(status.UNDECODABLE, f"corrupt deflate stream: {exc}"[:64]) \
                    from exc
            total += len(out)
            if total > limit:
                raise IngestError(status.INFLATED_TOO_LARGE,
                                  f"inflated size exceeds {SETTING} ({limit / MIB:g} MiB)")
            if inflater.eof:
                return total
            data = inflater.unconsumed_tail
            if not data and len(out) < ask:
                break  # this slice is used up and no output is pending
    raise IngestError(status.UNDECODABLE, "deflate stream truncated (no final block)")


def inflate(deflated: bytes | memoryview, limit: int) -> bytes:
    """The inflated data set, at most ``limit`` bytes, in one allocation of its size.

    Raises
    ------
    IngestError
        As :func:`inflated_size`, which runs first.
    """
    size = inflated_size(deflated, limit)
    inflated = zlib.decompress(deflated, -zlib.MAX_WBITS, max(size, 1))
    if len(inflated) != size:  # the same bytes inflated twice; cannot differ
        raise RuntimeError(f"deflate stream inflated to {len(inflated)}, counted {size}")
    return inflated
