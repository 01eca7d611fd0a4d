"""Spool: durable layout, UID gate, duplicates, versions, free-space floor."""

from __future__ import annotations

import hashlib
import shutil
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qcd.errors import SpoolError
from qcd.ingest import status
from qcd.spool import Spool, SpooledFile, StoreOutcome, sha256_parts
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


def test_parts_are_stored_as_their_concatenation(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 0)
    f = spool.store(STUDY, SERIES, SOP, b"head", b"", b"body")
    assert f.path.read_bytes() == b"headbody" and f.size == 8
    assert f.sha256 == hashlib.sha256(b"headbody").hexdigest() == sha256_parts((b"head", b"body"))
    assert spool.store(STUDY, SERIES, SOP, b"headbody").outcome is StoreOutcome.DUPLICATE


def test_write_temp_then_place_keeps_the_store_outcomes(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 0)

    def place(data: bytes) -> SpooledFile:
        temp = spool.write_temp(data)
        assert temp.path.parent == tmp_path / ".tmp" and temp.path.read_bytes() == data
        return spool.place(STUDY, SERIES, SOP, temp, hashlib.sha256(data).hexdigest())

    first = place(b"one")
    assert first.outcome is StoreOutcome.NEW and first.path.read_bytes() == b"one"
    assert place(b"one").outcome is StoreOutcome.DUPLICATE
    v2 = place(b"two")
    assert v2.outcome is StoreOutcome.VERSIONED and v2.version == 2
    assert place(b"two").version == 2  # a copy of version 2 is a duplicate of it
    assert list((tmp_path / ".tmp").iterdir()) == []  # placed or not, temp files are gone


def test_write_temp_refuses_below_the_floor_and_discard_removes(tmp_path: Path) -> None:
    with pytest.raises(SpoolError) as info:
        Spool(tmp_path, min_free_bytes=1 << 62).write_temp(b"abc")
    assert info.value.status == status.OUT_OF_RESOURCES
    assert list((tmp_path / ".tmp").iterdir()) == []
    spool = Spool(tmp_path, 0)
    spool.discard(spool.write_temp(b"abc"))
    assert list((tmp_path / ".tmp").iterdir()) == []


def test_place_refuses_an_invalid_uid_and_removes_the_temp_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 0)
    with pytest.raises(SpoolError) as info:
        spool.place(STUDY, "1.2/../..", SOP, spool.write_temp(b"x"), "0" * 64)
    assert info.value.status == status.INVALID_UID
    assert {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")} == {".tmp"}


def test_a_series_directory_removed_under_a_running_spool_is_made_again(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 0)
    spool.store(STUDY, SERIES, SOP, b"one")
    shutil.rmtree(tmp_path / STUDY)  # e.g. an operator clearing a study by hand
    again = spool.store(STUDY, SERIES, SOP + ".1", b"two")
    assert again.outcome is StoreOutcome.NEW and again.path.read_bytes() == b"two"
    assert again.relpath == f"{STUDY}/{SERIES}/{SOP}.1.dcm"


def test_directory_memory_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import qcd.spool as spool_module

    monkeypatch.setattr(spool_module, "DIR_MEMORY", 3)
    spool = Spool(tmp_path / "spool", 0)
    for i in range(7):
        spool.store("1.2", f"1.2.{i}", "1.2.3.4", b"data")
        assert len(spool._made_dirs) <= 3 and len(spool._durable_dirs) <= 3
    # forgotten directories are simply made/fsynced again
    again = spool.store("1.2", "1.2.0", "1.2.3.5", b"more")
    assert again.path.read_bytes() == b"more"
