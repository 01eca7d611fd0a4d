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
class TempFile:
    """A durable (fsynced) temp file not yet under its final name."""

    path: Path
    size: int


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
        self._inside = str(self.root).rstrip(os.sep) + os.sep
        self._durable_dirs: set[Path] = set()
        """Series directories whose own entries (in study dir and root) are fsynced."""
        self._made_dirs: set[Path] = set()
        """Series directories this process has created or found (no mkdir per instance)."""

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
        # (The string form of "root in path.resolve().parents", without the Paths.)
        if not os.path.realpath(path).startswith(self._inside):
            raise SpoolError(status.INVALID_UID, "UID escapes the spool")
        return path

    def store(self, study_uid: str, series_uid: str, sop_uid: str, *parts: bytes) -> SpooledFile:
        """Make the concatenation of ``parts`` durable under the instance's UIDs.

        The parts are written one after the other, so a caller with a header and a
        body never has to join them into one more copy. An identical copy already
        in place is found before anything is written.

        Raises
        ------
        SpoolError
            Invalid UID (0xC212), free space below the floor (0xA700), or an I/O
            error while writing (0xA700).
        """
        final = self.path_for(study_uid, series_uid, sop_uid)
        digest = sha256_parts(parts)
        size = sum(len(part) for part in parts)
        if final.exists():
            found = self._match_existing(study_uid, series_uid, sop_uid, digest)
            if found is not None:
                return SpooledFile(found[0], self._rel(found[0]), digest, size, found[1],
                                   StoreOutcome.DUPLICATE)
        return self.place(study_uid, series_uid, sop_uid, self.write_temp(*parts), digest)

    def write_temp(self, *parts: bytes) -> TempFile:
        """Write ``parts``, in order, to a new, fsynced temp file; :meth:`place` it next.

        Needs no UIDs, so a caller can run it while it is still parsing the header.
        The caller must :meth:`place` or :meth:`discard` the result.

        Raises
        ------
        SpoolError
            Free space below the floor (0xA700, nothing written) or an I/O error
            (0xA700, nothing left behind).
        """
        size = sum(len(part) for part in parts)
        free = self.free_bytes()
        if free - size < self.min_free_bytes:
            raise SpoolError(
                status.OUT_OF_RESOURCES,
                f"spool free space {free // 1048576} MiB is below the floor",
            )
        tmp_path = self.tmp / f"{uuid.uuid4().hex}.part"
        try:
            fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                for part in parts:
                    view = memoryview(part)
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
        return TempFile(tmp_path, size)

    def discard(self, temp: TempFile) -> None:
        """Remove a temp file that will not be placed (its instance was refused)."""
        temp.path.unlink(missing_ok=True)

    def place(self, study_uid: str, series_uid: str, sop_uid: str, temp: TempFile,
              sha256: str) -> SpooledFile:
        """Give a durable temp file its final name; the temp file is gone afterwards.

        ``sha256`` is the hex digest of the temp file's content. The final name is
        claimed with ``link()``, which fails instead of overwriting, so two
        associations racing on one SOP Instance UID each keep their copy; an
        identical copy already in place makes this a duplicate.

        Raises
        ------
        SpoolError
            Invalid UID (0xC212) or an I/O error (0xA700).
        """
        try:
            final = self.path_for(study_uid, series_uid, sop_uid)
            version = 1
            candidate = final
            if final.parent not in self._made_dirs:
                final.parent.mkdir(parents=True, exist_ok=True)
                _remember(self._made_dirs, final.parent)
            while True:
                try:
                    os.link(temp.path, candidate)
                    break
                except FileNotFoundError:  # the series directory was removed under us
                    if not final.parent.exists():
                        self._made_dirs.discard(final.parent)
                        self._durable_dirs.discard(final.parent)
                        final.parent.mkdir(parents=True, exist_ok=True)
                        continue
                    raise
                except FileExistsError:
                    if sha256_file(candidate) == sha256:
                        return SpooledFile(candidate, self._rel(candidate), sha256, temp.size,
                                           version, StoreOutcome.DUPLICATE)
                    version += 1
                    candidate = self.path_for(study_uid, series_uid, sop_uid, version)
            if self.fsync:
                self._fsync_dirs(candidate.parent)
        except OSError as exc:
            LOGGER.error("spool rename failed for %s: %s", sop_uid, exc.strerror)
            raise SpoolError(status.OUT_OF_RESOURCES, f"spool write failed: {exc.strerror}") from exc
        finally:
            self.discard(temp)
        outcome = StoreOutcome.NEW if version == 1 else StoreOutcome.VERSIONED
        return SpooledFile(candidate, self._rel(candidate), sha256, temp.size, version, outcome)

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
            _remember(self._durable_dirs, series_dir)

    def _rel(self, path: Path) -> str:
        """``study/series/file``: every final path is that, under the root."""
        return "/".join(path.parts[-3:])


DIR_MEMORY = 4096
"""Series directories remembered as made/durable; past this the memory starts afresh
(a forgotten directory costs one more mkdir or parent fsync), so a daemon that runs for
years does not grow by one entry per series."""


def _remember(seen: set[Path], directory: Path) -> None:
    if len(seen) >= DIR_MEMORY:
        seen.clear()
    seen.add(directory)


def sha256_parts(parts: tuple[bytes, ...]) -> str:
    """Hex sha256 of the concatenation of ``parts`` (the file :meth:`Spool.store` writes)."""
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(part)
    return hasher.hexdigest()
