"""The one exception tree of qcd.

``QcdError`` subclasses are for things that go wrong at run time (bad input, a full
disk, an unreachable database); ``ValueError``/``TypeError`` stay for programming
mistakes.

    QcdError
    +-- ConfigError          invalid settings (names the key and the allowed values)
    +-- IngestError          an instance refused at ingest; carries a DICOM status
    |   +-- SpoolError       the spool could not make an instance durable
    +-- DatabaseError        the database is unreachable or out of date
    +-- AssemblyError        series completion / routing went wrong
    +-- InferenceError       an analyzer failed (later issues)
    +-- ExportError          delivery to a PACS failed (later issues)
"""

from __future__ import annotations


class QcdError(Exception):
    """Base class of every run-time error raised by qcd."""


class ConfigError(QcdError):
    """A setting is invalid; the message names the key and what is allowed."""


class IngestError(QcdError):
    """An instance was refused at ingest.

    Parameters
    ----------
    status : int
        The DICOM C-STORE status to answer with (see :mod:`qcd.ingest.status`).
    message : str
        A short, specific reason; it becomes the response's Error Comment.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class SpoolError(IngestError):
    """The spool could not make an instance durable (disk full, I/O error)."""


class ListenerError(QcdError):
    """The DICOM listener could not start (a receiving process failed to listen)."""


class DatabaseError(QcdError):
    """The database is unreachable, locked for too long, or not migrated."""


class AssemblyError(QcdError):
    """Series completion or routing failed."""


class InferenceError(QcdError):
    """An analyzer failed on a series."""


class ExportError(QcdError):
    """A result could not be delivered to its destination."""
