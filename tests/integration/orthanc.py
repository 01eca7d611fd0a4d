"""A real Orthanc PACS for tests: own ports, own storage, started and stopped by hand."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Self

from tests.conftest import free_port

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
# never route loopback REST calls through a proxy from the environment
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class OrthancServer:
    """Orthanc on free loopback ports with its storage under ``root``.

    Ports are picked at construction, so a test can point a sender at the DICOM port
    before the server runs (a PACS that is down) and :meth:`start` it later; the storage
    survives :meth:`stop`/:meth:`start`. ``TCP_NODELAY=1`` is set in Orthanc's
    environment (dcmtk otherwise waits ~40 ms per response, RECIPES.md section 7).
    """

    DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")

    def __init__(self, root: Path, aet: str = "ORTHANC", dicomweb: bool = False,
                 modalities: dict[str, tuple[str, str, int]] | None = None) -> None:
        self.root = Path(root)
        self.modalities = dict(modalities or {})
        """Peers Orthanc knows (name -> (AE title, host, port)): C-MOVE destinations and
        callers allowed to query/retrieve. Empty by default."""
        self.aet = aet
        self.dicomweb = dicomweb
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.config = self.root / "orthanc.json"

    def _write_config(self) -> None:
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        self.config.write_text(json.dumps({
            "Name": "qcd-test-pacs",
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "DicomCheckCalledAet": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [str(self.DICOMWEB_PLUGIN)] if self.dicomweb else [],
            "DicomWeb": {"Enable": self.dicomweb, "Root": "/dicom-web/"},
            "DicomModalities": {name: list(peer) for name, peer in self.modalities.items()},
            "StorageCompression": False,
            "SaveJobs": False,
        }, indent=2))

    def start(self, timeout: float = 30.0) -> Self:
        """Start Orthanc and wait until its REST API answers ``/system``."""
        if self.running:
            return self
        self._write_config()
        log = open(self.root / "logs" / "stdout.log", "ab")  # noqa: SIM115 (kept by Popen)
        self.proc = subprocess.Popen(
            [ORTHANC, f"--logdir={self.root / 'logs'}", str(self.config)],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "TCP_NODELAY": "1"})
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                self.get("/system")
                return self
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {timeout} s: {self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> None:
        """POST ``/tools/shutdown`` and wait for the process (Orthanc needs 3-5 s)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            self.post("/tools/shutdown", b"")
        except (urllib.error.URLError, ConnectionError):
            proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------------- REST

    def get(self, path: str) -> Any:
        with _OPENER.open(self.url + path, timeout=10) as rsp:
            return json.loads(rsp.read())

    def post(self, path: str, body: bytes) -> Any:
        req = urllib.request.Request(self.url + path, data=body, method="POST")
        with _OPENER.open(req, timeout=10) as rsp:
            data = rsp.read()
        return json.loads(data) if data.strip() else None

    def count(self) -> int:
        """Number of instances stored (``/statistics`` CountInstances)."""
        return int(self.get("/statistics")["CountInstances"])

    def lookup(self, sop_instance_uid: str) -> list[dict[str, Any]]:
        """Orthanc resources whose DICOM UID is ``sop_instance_uid`` (``/tools/lookup``)."""
        found = self.post("/tools/lookup", sop_instance_uid.encode("ascii")) or []
        return [r for r in found if r.get("Type") == "Instance"]

    def log_tail(self, lines: int = 20) -> str:
        text = ""
        for log in sorted((self.root / "logs").glob("*")):
            text += log.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])
