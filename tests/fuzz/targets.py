"""The fuzz targets as plain functions: atheris drives them, the unit tests replay them.

Nothing here imports atheris, so ``tests/unit/test_fuzz_corpus.py`` replays the
regression corpus (``tests/data/fuzz/<target>/``) in the default test run.

``parse_one`` feeds bytes to the code an instance meets before anything is stored:
``split_part10`` (STOW-RS, ``qcd import``), then ``encode_part10`` and ``parse_header``
exactly as :meth:`qcd.ingest.service.IngestService.store` runs them for the SCP's
C-STORE handler. Contract: the input parses, or a :class:`~qcd.errors.IngestError`
with one specific status and a comment is raised; anything else is a crash.

``HttpTarget`` feeds bytes to the HTTP server's real request handler (the class that
:class:`qcd.web.http.HealthServer` serves, backed by a seeded SQLite database, the
dashboard, the JSON API and STOW-RS into a temporary spool) over in-memory streams.
Contract: every request gets a well-formed response (a status line, header values
without CR/LF) or a clean close, no exception escapes, and no answer is a 5xx except
the deliberate ones (a probe's 503, 501 for an unknown method, 505 for HTTP/2+).
"""

from __future__ import annotations

import base64
import io
import logging
import re
import shutil
import tempfile
import traceback
from pathlib import Path
from typing import Any

from pynetdicom import ALL_TRANSFER_SYNTAXES

from qcd.errors import IngestError
from qcd.ingest import status
from qcd.ingest.filemeta import encode_part10, split_part10
from qcd.ingest.header import parse_header

TRANSFER_SYNTAXES = [str(ts) for ts in ALL_TRANSFER_SYNTAXES]
"""What the SCP accepts (every storage context, every transfer syntax)."""
REFUSALS = {status.UNDECODABLE, status.PIXEL_DATA_MISMATCH, status.INVALID_UID,
            status.TRANSFER_SYNTAX_MISMATCH, status.DATASET_SOP_MISMATCH,
            status.INFLATED_TOO_LARGE}
FUZZ_AE = "FUZZ"


# --------------------------------------------------------------------------- parse


def cstore_input(dataset: bytes, transfer_syntax: str, sop_class_uid: str,
                 sop_uid: str) -> bytes:
    """Encode the arguments of a C-STORE for :func:`parse_one` (seeds and tests)."""
    cls, uid = sop_class_uid.encode("latin-1"), sop_uid.encode("latin-1")
    return bytes([TRANSFER_SYNTAXES.index(transfer_syntax), len(cls), len(uid)]) + cls + uid \
        + dataset


def parse_one(data: bytes) -> None:
    """One input through the ingest parse path; raises on a contract violation.

    A Part 10 file (``DICM`` at offset 128) takes the file path (STOW-RS, ``qcd
    import``): its File Meta gives the transfer syntax and the claimed UIDs. Any other
    input is a C-STORE: byte 0 picks the negotiated transfer syntax, bytes 1 and 2
    give the lengths of the Affected SOP Class and Instance UIDs that follow (as
    pydicom decodes a UI value: Latin-1, trailing NUL and spaces dropped), the rest is
    the data set as received.
    """
    if data[128:132] == b"DICM":
        try:
            meta, dataset = split_part10(data)
        except IngestError as exc:
            assert exc.status == status.UNDECODABLE and exc.message, (exc.status, exc.message)
            return
        store_checks(dataset, str(meta.TransferSyntaxUID),
                     str(meta.get("MediaStorageSOPClassUID", "") or ""),
                     str(meta.get("MediaStorageSOPInstanceUID", "") or ""))
        return
    if len(data) < 3:
        return
    ts = TRANSFER_SYNTAXES[data[0] % len(TRANSFER_SYNTAXES)]
    end_cls = 3 + data[1]
    end_uid = end_cls + data[2]
    cls = data[3:end_cls].decode("latin-1").rstrip("\0 ")
    uid = data[end_cls:end_uid].decode("latin-1").rstrip("\0 ")
    store_checks(data[end_uid:], ts, cls, uid)


def store_checks(dataset: bytes, transfer_syntax: str, sop_class_uid: str,
                 sop_uid: str) -> None:
    """What ``IngestService.store`` runs before the spool, with the contract checked."""
    try:
        part10 = encode_part10(dataset, transfer_syntax, sop_class_uid, sop_uid, FUZZ_AE)
        header = parse_header(part10, sop_class_uid, sop_uid, transfer_syntax)
    except IngestError as exc:
        assert exc.status in REFUSALS, f"unexpected status {exc.status:#06x}: {exc.message}"
        assert exc.message
        return
    assert header.sop_uid == sop_uid and header.sop_class_uid == sop_class_uid, header
    assert header.transfer_syntax == transfer_syntax


# --------------------------------------------------------------------------- HTTP

USER, PASSWORD = "op", "operator-password"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
PLACEHOLDERS = (b"@SESSION@", b"@CSRF@", b"@STUDY@", b"@SERIES@", b"@ALERT@")
"""Replaced in every input, so a corpus file reaches the same state in any run."""
_PROBES = ("/healthz", "/readyz")
_METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
_STATUS_LINE = re.compile(rb"^HTTP/1\.[01] [1-5]\d\d[^\r\n]*\r\n")


class HttpContractError(AssertionError):
    """An HTTP input broke the contract (the message says how)."""


class _Errors(logging.Handler):
    """Keeps the tracebacks qcd logs when it turns an exception into a 500."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.seen.append("".join(traceback.format_exception(*record.exc_info)))


class HttpTarget:
    """A daemon's HTTP handler over a seeded database, driven without sockets.

    Builds (but does not start) a :class:`qcd.app.Daemon` with the dashboard and
    STOW-RS on, seeds 20 analysed series and an operator, logs in once. Passwords are
    hashed with a tiny scrypt cost until :meth:`close`.
    Call :meth:`close` when done.
    """

    def __init__(self) -> None:
        from qcd.app import Daemon
        from qcd.config import load_settings
        from qcd.web import auth, seed
        from qcd.web.auth import add_user

        # scrypt at its real cost (~50 ms) would spend the run on password checks; the
        # code path is the same at any cost (verify_password reads N from the hash)
        self._scrypt_n, auth.SCRYPT_N = auth.SCRYPT_N, 2**4

        self.tmp = Path(tempfile.mkdtemp(prefix="qcd-fuzz-http-"))
        settings = load_settings(environ={
            "QCD_SPOOL__PATH": str(self.tmp / "spool"),
            "QCD_SPOOL__MIN_FREE_BYTES": "0",
            "QCD_SPOOL__FSYNC": "false",
            "QCD_DATABASE__URL": f"sqlite:///{self.tmp}/qcd.db",
            "QCD_INGEST__HOST": "127.0.0.1",
            "QCD_HTTP__HOST": "127.0.0.1",
            "QCD_HTTP__PORT": "0",
            "QCD_HTTP__STOW_ENABLED": "true",
        })
        self.daemon = Daemon(settings, registry={})
        assert self.daemon.http is not None and self.daemon.dashboard is not None
        seed.seed(self.daemon.db, n_series=20, days=2, seed=3)
        add_user(self.daemon.db, USER, PASSWORD, "operator")
        self.errors = _Errors()
        root = logging.getLogger()
        root.addHandler(self.errors)
        self._level = root.level
        root.setLevel(logging.ERROR)
        self._values: dict[bytes, bytes] = {}
        self._login()
        study, series, alert = self._ids()
        self._values.update({b"@STUDY@": study.encode(), b"@SERIES@": series.encode(),
                             b"@ALERT@": str(alert).encode()})
        self.handler = _probe_class(self.daemon.http.httpd.RequestHandlerClass)

    def _login(self) -> None:
        auth = self.daemon.dashboard.auth  # type: ignore[union-attr]
        token = auth.login(USER, PASSWORD)
        assert token is not None
        who = auth.resolve({}, token)
        assert who is not None
        self._values[b"@SESSION@"] = token.encode()
        self._values[b"@CSRF@"] = who.csrf.encode()

    def _ids(self) -> tuple[str, str, int]:
        from sqlalchemy import select

        from qcd.db.models import Alert, Series, Study

        with self.daemon.db.session() as s:
            row = s.execute(
                select(Study.study_uid, Series.series_uid)
                .join(Series, Series.study_id == Study.id).order_by(Series.id)).first()
            assert row is not None, "the seed wrote no series"
            study_uid, series_uid = row
            alert = s.scalar(select(Alert.id).order_by(Alert.id)) or 1
        return str(study_uid), str(series_uid), int(alert)

    def expand(self, data: bytes) -> bytes:
        for key, value in self._values.items():
            data = data.replace(key, value)
        return data

    def one(self, data: bytes) -> bytes:
        """Serve ``data`` as one connection's bytes; return what was written back."""
        data = self.expand(data)
        self.errors.seen.clear()
        probe = self.handler(data, ("127.0.0.1", 40000), self.daemon.http.httpd)  # type: ignore[union-attr]
        out = probe.wfile.getvalue()
        if out and probe.request_version != "HTTP/0.9" and not _STATUS_LINE.match(out):
            raise HttpContractError(f"malformed response: {out[:80]!r}")
        for code, path, method in probe.answered:
            if code >= 500 and not _deliberate(code, path, method):
                raise HttpContractError(f"{code} for {path[:80]!r}\n" +
                                        "\n".join(self.errors.seen))
        if b"logout" in data.lower():  # the fuzzer may have ended our session
            self._login()
        return out

    def close(self) -> None:
        from qcd.web import auth

        auth.SCRYPT_N = self._scrypt_n
        logging.getLogger().removeHandler(self.errors)
        logging.getLogger().setLevel(self._level)
        http = self.daemon.http
        assert http is not None
        http.httpd.server_close()
        if self.daemon.dashboard is not None:
            self.daemon.dashboard.close()
        self.daemon.db.dispose()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _deliberate(code: int, path: str, method: str | None) -> bool:
    """The 5xx answers that are right: a probe's failing check (503), a method the
    server does not know (501, RFC 9110 15.6.2), an HTTP major version it does not
    speak (505)."""
    return ((code == 503 and path.split("?", 1)[0] in _PROBES)
            or (code == 501 and (method or "") not in _METHODS) or code == 505)


def _probe_class(handler: Any) -> Any:
    """The server's handler class, reading from and writing to byte buffers."""

    class Probe(handler):  # type: ignore[misc, valid-type]
        answered: list[tuple[int, str, str | None]]

        def setup(self) -> None:
            self.rfile = io.BytesIO(self.request)
            self.wfile = io.BytesIO()
            self.answered = []

        def finish(self) -> None:
            pass

        def send_response_only(self, code: int, message: str | None = None) -> None:
            self.answered.append((code, getattr(self, "path", ""),
                                  getattr(self, "command", None)))
            super().send_response_only(code, message)

        def send_header(self, keyword: str, value: str) -> None:
            for text in (keyword, str(value)):
                if "\r" in text or "\n" in text:
                    raise HttpContractError(
                        f"CR/LF in response header {keyword[:40]!r}: {str(value)[:80]!r} "
                        f"for {getattr(self, 'path', '')[:80]!r}")
            super().send_header(keyword, value)

    return Probe
