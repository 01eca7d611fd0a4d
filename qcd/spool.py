"""Durable file store for received instances, keyed by validated UIDs.

Layout: ``<root>/<study>/<series>/<sop>.dcm``; a second, different copy of the same
SOP Instance UID is kept beside it as ``<sop>.v2.dcm`` (never overwritten, never
dropped). Writes go to a temp file in ``<root>/.tmp`` (same filesystem), are
fsynced, renamed into place and the directory fsynced, so a file that exists
under its final name is complete.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from qcd.errors import SpoolError
from qcd.hashing import fsync_dir, sha256_file
from qcd.ingest import status
from qcd.uids import is_valid_uid

LOGGER = logging.getLogger(__name__)
TMP_DIR = ".tmp"


class StoreOutcome(enum.Enum):
    """What the spool did with an instance."""

    NEW = "new"
    DUPLICATE = "duplicate"
    """Same SOP Instance UID, same bytes: nothing written (idempotent resend)."""
    VERSIONED = "versioned"
    """Same SOP Instance UID, different bytes: kept as a new version."""


@dataclass(frozen=True)
class SpooledFile:
    """Where an instance lies and what it is."""

    path: Path
    relpath: str
    sha256: str
    size: int
    version: int
    outcome: StoreOutcome


class Spool:
    """The durable instance store.

    Parameters
    ----------
    root
        Spool directory (created if missing).
    min_free_bytes
        Writes that would leave less free space than this are refused with
        status 0xA700 before anything is written.
    fsync
        Flush file and directory to stable storage before returning.
    """

    def __init__(self, root: str | os.PathLike[str], min_free_bytes: int, fsync: bool = True):
        self.root = Path(root).resolve()
        self.min_free_bytes = min_free_bytes
        self.fsync = fsync
        self.tmp = self.root / TMP_DIR
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._durable_dirs: set[Path] = set()
        """Series directories whose own entries (in study dir and root) are fsynced."""

    def free_bytes(self) -> int:
        """Free bytes on the spool's filesystem (for metrics and the floor check)."""
        return shutil.disk_usage(self.root).free

    def cleanup_temp(self) -> int:
        """Remove temp files left by a crash; returns how many were removed.

        A temp file never carries an acknowledged instance: Success is only sent
        after the rename, so these are always partial or unacknowledged.
        """
        removed = 0
        for entry in self.tmp.iterdir():
            try:
                entry.unlink()
                removed += 1
            except OSError as exc:
                LOGGER.warning("cannot remove stale temp file %s: %s", entry.name, exc)
        if removed:
            LOGGER.info("removed %d stale temp file(s) from the spool", removed)
        return removed

    def path_for(self, study_uid: str, series_uid: str, sop_uid: str, version: int = 1) -> Path:
        """Final path of an instance; refuses anything that is not a valid UID."""
        for name, uid in (("Study", study_uid), ("Series", series_uid), ("SOP", sop_uid)):
            if not is_valid_uid(uid):
                raise SpoolError(status.INVALID_UID, f"invalid {name} Instance UID")
        suffix = ".dcm" if version == 1 else f".v{version}.dcm"
        path = self.root / study_uid / series_uid / (sop_uid + suffix)
        # Belt and braces: a valid UID has no separators, but never trust one check.
        if self.root not in path.resolve().parents:
            raise SpoolError(status.INVALID_UID, "UID escapes the spool")
        return path

    def store(self, study_uid: str, series_uid: str, sop_uid: str, data: bytes) -> SpooledFile:
        """Make ``data`` durable under the instance's UIDs.

        The final name is claimed with ``link()``, which fails instead of
        overwriting, so two associations racing on one SOP Instance UID each keep
        their copy.

        Raises
        ------
        SpoolError
            Invalid UID (0xC212), free space below the floor (0xA700), or an I/O
            error while writing (0xA700).
        """
        final = self.path_for(study_uid, series_uid, sop_uid)
        digest = hashlib.sha256(data).hexdigest()
        if final.exists():
            found = self._match_existing(study_uid, series_uid, sop_uid, digest)
            if found is not None:
                return SpooledFile(found[0], self._rel(found[0]), digest, len(data), found[1],
                                   StoreOutcome.DUPLICATE)
        free = self.free_bytes()
        if free - len(data) < self.min_free_bytes:
            raise SpoolError(
                status.OUT_OF_RESOURCES,
                f"spool free space {free // 1048576} MiB is below the floor",
            )
        tmp_path = self._write_temp(final.parent, data)
        try:
            version = 1
            while True:
                candidate = self.path_for(study_uid, series_uid, sop_uid, version)
                try:
                    os.link(tmp_path, candidate)
                    break
                except FileExistsError:
                    if sha256_file(candidate) == digest:
                        return SpooledFile(candidate, self._rel(candidate), digest, len(data),
                                           version, StoreOutcome.DUPLICATE)
                    version += 1
            if self.fsync:
                self._fsync_dirs(candidate.parent)
        except OSError as exc:
            LOGGER.error("spool rename failed for %s: %s", final.name, exc.strerror)
            raise SpoolError(status.OUT_OF_RESOURCES, f"spool write failed: {exc.strerror}") from exc
        finally:
            tmp_path.unlink(missing_ok=True)
        outcome = StoreOutcome.NEW if version == 1 else StoreOutcome.VERSIONED
        return SpooledFile(candidate, self._rel(candidate), digest, len(data), version, outcome)

    def _match_existing(
        self, study_uid: str, series_uid: str, sop_uid: str, digest: str
    ) -> tuple[Path, int] | None:
        version = 1
        while True:
            candidate = self.path_for(study_uid, series_uid, sop_uid, version)
            if not candidate.exists():
                return None
            if sha256_file(candidate) == digest:
                return candidate, version
            version += 1

    def _fsync_dirs(self, series_dir: Path) -> None:
        """fsync the series directory (new entry); its parents only once per run.

        The study directory and the spool root change only when a series or study
        directory is created, so fsyncing them for every instance is wasted work.
        """
        fsync_dir(series_dir)
        if series_dir not in self._durable_dirs:
            fsync_dir(series_dir.parent)
            fsync_dir(self.root)
            self._durable_dirs.add(series_dir)

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def _write_temp(self, directory: Path, data: bytes) -> Path:
        """Write ``data`` to a new, fsynced temp file on the spool's filesystem."""
        tmp_path = self.tmp / f"{uuid.uuid4().hex}.part"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            tmp_path.unlink(missing_ok=True)
            LOGGER.error("spool write failed: %s", exc.strerror)
            raise SpoolError(status.OUT_OF_RESOURCES, f"spool write failed: {exc.strerror}") from exc
        return tmp_path

