"""Helpers that drive the real dcmtk tools (the scanner side of the tests)."""

from __future__ import annotations

import re
import subprocess
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from qcd.ingest.filemeta import split_part10

# storescu proposes uncompressed syntaxes by default; each compressed syntax needs its flag.
TS_FLAGS = {
    "1.2.840.10008.1.2": [],
    "1.2.840.10008.1.2.1": [],
    "1.2.840.10008.1.2.2": ["-xb"],
    "1.2.840.10008.1.2.1.99": ["-xd"],
    "1.2.840.10008.1.2.5": ["-xr"],
    "1.2.840.10008.1.2.4.50": ["-xy"],
    "1.2.840.10008.1.2.4.51": ["-xx"],
    "1.2.840.10008.1.2.4.57": ["-xs"],
    "1.2.840.10008.1.2.4.70": ["-xs"],
    "1.2.840.10008.1.2.4.80": ["-xt"],
    "1.2.840.10008.1.2.4.81": ["-xu"],
    "1.2.840.10008.1.2.4.90": ["-xv"],
    "1.2.840.10008.1.2.4.91": ["-xw"],
}
_SENT = re.compile(r"^I: Sending file: (.+)$")
_RSP = re.compile(r"^I: Received Store Response \((.+)\)$")


@dataclass
class PushResult:
    acknowledged: list[Path] = field(default_factory=list)
    """Files answered with Success."""
    failed: dict[Path, str] = field(default_factory=dict)
    """Files answered with another status (the status text storescu printed)."""
    returncodes: list[int] = field(default_factory=list)


def transfer_syntax(path: Path) -> str:
    meta, _ = split_part10(path.read_bytes()[: 1 << 16])
    return str(meta.TransferSyntaxUID)


def storescu(files: list[Path], port: int, aec: str = "QCD", aet: str = "SCANNER1",
             extra: list[str] | None = None, timeout: float = 300) -> PushResult:
    """One association per transfer-syntax group, in sequence; parse every response."""
    groups: dict[str, list[Path]] = defaultdict(list)
    for f in files:
        groups[transfer_syntax(f)].append(f)
    result = PushResult()
    for ts, group in groups.items():
        cmd = ["storescu", "-v", "-aec", aec, "-aet", aet, *TS_FLAGS[ts], *(extra or []),
               "127.0.0.1", str(port), *map(str, group)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        result.returncodes.append(proc.returncode)
        _parse(proc.stdout + proc.stderr, result)
    return result


def _parse(output: str, result: PushResult) -> None:
    current: Path | None = None
    for line in output.splitlines():
        if m := _SENT.match(line):
            current = Path(m.group(1))
        elif (m := _RSP.match(line)) and current is not None:
            if m.group(1) == "Success":
                result.acknowledged.append(current)
            else:
                result.failed[current] = m.group(1)
            current = None


def push_concurrently(files: list[Path], port: int, lanes: int = 4, **kw: object) -> PushResult:
    """Split ``files`` into ``lanes`` and push them over that many concurrent associations."""
    parts = [files[i::lanes] for i in range(lanes)]
    results: list[PushResult] = [PushResult() for _ in parts]

    def run(i: int) -> None:
        results[i] = storescu(parts[i], port, **kw)  # type: ignore[arg-type]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(lanes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    merged = PushResult()
    for r in results:
        merged.acknowledged += r.acknowledged
        merged.failed.update(r.failed)
        merged.returncodes += r.returncodes
    return merged


def echoscu(port: int, aec: str = "QCD", aet: str = "ECHOSCU") -> int:
    return subprocess.run(["echoscu", "-aec", aec, "-aet", aet, "127.0.0.1", str(port)],
                          capture_output=True, timeout=30).returncode


def jpeg_baseline(path: Path) -> None:
    """Re-encode an 8-bit file in place as JPEG baseline with dcmtk's dcmcjpeg."""
    tmp = path.with_suffix(".jpg.dcm")
    subprocess.run(["dcmcjpeg", "+eb", str(path), str(tmp)], check=True, capture_output=True)
    tmp.replace(path)


def pynetdicom_echo(port: int, aec: str = "QCD", aet: str = "PROBE", timeout: float = 5) -> bool:
    """C-ECHO with pynetdicom (where dcmtk is absent, or to bound the timeouts)."""
    from pynetdicom import AE

    ae = AE(ae_title=aet)
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.acse_timeout = ae.network_timeout = timeout
    assoc = ae.associate("127.0.0.1", port, ae_title=aec)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and status.Status == 0
