"""Logging configuration, done once by the entry point.

Records carry UIDs and AE titles, never patient names, IDs or birth dates; pynetdicom's
own identifier logging is switched off in :mod:`qcd.app`.
"""

from __future__ import annotations

import json
import logging
import sys

from qcd.config import LoggingSettings


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(settings: LoggingSettings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level.upper())
    # pynetdicom is chatty at INFO (every association and DIMSE message).
    logging.getLogger("pynetdicom").setLevel(
        logging.DEBUG if settings.level.upper() == "DEBUG" else logging.WARNING)
    for noisy in ("apscheduler", "openjpeg", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
