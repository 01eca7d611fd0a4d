"""``qcd import DIR``: ingest files from disk through the same path as the SCP."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from qcd.errors import IngestError
from qcd.ingest import status
from qcd.ingest.filemeta import split_part10
from qcd.ingest.service import IngestService

LOGGER = logging.getLogger(__name__)
IMPORT_AE = "QCD-IMPORT"


def iter_files(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Every regular file under ``paths`` (files or directories), sorted."""
    for root in paths:
        root = Path(root)
        if root.is_dir():
            yield from sorted(p for p in root.rglob("*") if p.is_file())
        else:
            yield root


def import_paths(service: IngestService, paths: Iterable[str | Path]) -> Counter[int]:
    """Import every file; return how many got each status (0x0000 = imported)."""
    counts: Counter[int] = Counter()
    for path in iter_files(paths):
        try:
            meta, dataset = split_part10(path.read_bytes())
            sop_class = str(meta.get("MediaStorageSOPClassUID", ""))
            sop_uid = str(meta.get("MediaStorageSOPInstanceUID", ""))
        except IngestError as exc:
            LOGGER.warning("skipped %s: %s", path.name, exc.message)
            counts[exc.status] += 1
            continue
        except OSError as exc:
            LOGGER.warning("skipped %s: %s", path.name, exc.strerror)
            counts[status.PROCESSING_FAILURE] += 1
            continue
        result = service.store(dataset, transfer_syntax=str(meta.TransferSyntaxUID),
                               sop_class_uid=sop_class, sop_uid=sop_uid, calling_ae=IMPORT_AE)
        if result.status != status.SUCCESS:
            LOGGER.warning("refused %s: 0x%04X %s", path.name, result.status, result.comment)
        counts[result.status] += 1
    return counts
