"""Write an output object as a DICOM Part 10 file, durably, before it is delivered.

The file appears under its final name only complete: it is written to a temporary
file in the same directory, fsynced, renamed over the target, and the directory is
fsynced so that the rename itself survives a crash.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from pydicom.dataset import Dataset

from qcd.errors import ExportError
from qcd.hashing import fsync_dir

LOGGER = logging.getLogger(__name__)


def write_part10(ds: Dataset, path: str | os.PathLike[str]) -> Path:
    """Store ``ds`` at ``path`` atomically (temp file, fsync, rename, fsync directory).

    The parent directory is created when missing; an existing file at ``path`` is
    replaced. The dataset is written with a complete File Meta Information header
    (``enforce_file_format=True``).

    Parameters
    ----------
    ds : pydicom.Dataset
        The object to store (a highdicom SR or SEG, or any Part 10 dataset).
    path : str | os.PathLike
        Destination file.

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    ExportError
        The file could not be written (disk full, permissions, I/O error); nothing is
        left at ``path`` that was not there before and no temporary file remains.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part",
                                        dir=target.parent)
    except OSError as exc:
        raise ExportError(f"cannot create {target.parent}: {exc.strerror or exc}") from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            ds.save_as(fh, enforce_file_format=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o640)
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        LOGGER.error("output write failed for %s: %s", target.name, exc.strerror or exc)
        raise ExportError(f"cannot write {target}: {exc.strerror or exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target

