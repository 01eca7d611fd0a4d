"""Spool: durable layout, UID gate, duplicates, versions, free-space floor."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qcd.errors import SpoolError
from qcd.ingest import status
from qcd.spool import Spool, StoreOutcome
from qcd.uids import is_valid_uid

STUDY, SERIES, SOP = "1.2.3", "1.2.3.4", "1.2.3.4.5"


def test_store_layout_and_bytes(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 0)
    f = spool.store(STUDY, SERIES, SOP, b"abc")
    assert f.path == tmp_path / STUDY / SERIES / f"{SOP}.dcm"
    assert f.path.read_bytes() == b"abc"
    assert f.relpath == f"{STUDY}/{SERIES}/{SOP}.dcm"
    assert f.outcome is StoreOutcome.NEW and f.version == 1
    assert list((tmp_path / ".tmp").iterdir()) == []


def test_duplicate_is_idempotent_and_different_bytes_are_versioned(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 0)
    spool.store(STUDY, SERIES, SOP, b"one")
    again = spool.store(STUDY, SERIES, SOP, b"one")
    assert again.outcome is StoreOutcome.DUPLICATE and again.version == 1
    v2 = spool.store(STUDY, SERIES, SOP, b"two")
    assert v2.outcome is StoreOutcome.VERSIONED and v2.version == 2
    assert v2.path.name == f"{SOP}.v2.dcm"
    assert spool.store(STUDY, SERIES, SOP, b"two").outcome is StoreOutcome.DUPLICATE
    assert (tmp_path / STUDY / SERIES / f"{SOP}.dcm").read_bytes() == b"one"


def test_concurrent_different_copies_are_all_kept(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 0)
    results = []
    threads = [threading.Thread(target=lambda i=i: results.append(
        spool.store(STUDY, SERIES, SOP, f"copy{i}".encode()))) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.version for r in results) == list(range(1, 9))
    contents = {p.read_bytes() for p in (tmp_path / STUDY / SERIES).iterdir()}
    assert contents == {f"copy{i}".encode() for i in range(8)}


@pytest.mark.parametrize("bad", ["../../etc", "1.2/../../x", "..", "1.2.3\x00", "", "1..2",
                                 "01.2", "1.2." + "3" * 70, "/abs/path", "1.2.a"])
def test_invalid_uids_never_touch_the_filesystem(tmp_path: Path, bad: str) -> None:
    root = tmp_path / "spool"
    spool = Spool(root, 0)
    for args in ((bad, SERIES, SOP), (STUDY, bad, SOP), (STUDY, SERIES, bad)):
        with pytest.raises(SpoolError) as info:
            spool.store(*args, b"x")
        assert info.value.status == status.INVALID_UID
    assert {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")} == {
        "spool", "spool/.tmp"}


@given(st.text(max_size=80))
def test_uid_validator_only_accepts_digits_and_dots(value: str) -> None:
    if is_valid_uid(value):
        assert set(value) <= set("0123456789.") and len(value) <= 64
        assert ".." not in value and not value.startswith(".") and not value.endswith(".")


def test_free_space_floor_refuses_before_writing(tmp_path: Path) -> None:
    spool = Spool(tmp_path, min_free_bytes=1 << 62)
    with pytest.raises(SpoolError) as info:
        spool.store(STUDY, SERIES, SOP, b"abc")
    assert info.value.status == status.OUT_OF_RESOURCES
    assert not (tmp_path / STUDY).exists()
    assert list((tmp_path / ".tmp").iterdir()) == []


def test_cleanup_removes_partial_temp_files(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 0)
    (tmp_path / ".tmp" / "dead.part").write_bytes(b"partial")
    assert spool.cleanup_temp() == 1
    assert list((tmp_path / ".tmp").iterdir()) == []
