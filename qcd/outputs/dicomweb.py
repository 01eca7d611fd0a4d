"""DICOMweb STOW-RS delivery: the same outbox, an HTTP transport.

One POST of ``multipart/related; type="application/dicom"`` per batch to
``<stow_url>/studies``. The response decides per instance: 200 all stored; 202 or 409
with a FailedSOPSequence marks the named instances failed (their FailureReason kept);
408/429/5xx and connection errors are retried; other 4xx are permanent.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path

from qcd.errors import ConfigError, IngestError
from qcd.ingest.filemeta import split_part10
from qcd.outputs.settings import Destination, SendOutcome
from qcd.secrets import read_secret

# DICOM JSON tags (PS3.18 F): Failed SOP Sequence, Referenced SOP Instance UID, Failure Reason
_FAILED_SOP_SEQUENCE = "00081198"
_REFERENCED_SOP_INSTANCE = "00081155"
_FAILURE_REASON = "00081197"
_TRANSIENT_HTTP = {408, 429}


class StowSender:
    """Sends Part 10 files as stored, in one STOW-RS request per batch."""

    def send(self, destination: Destination, paths: Sequence[Path]) -> list[SendOutcome]:
        outcome = SendOutcome
        parts: list[bytes] = []
        sop_uids: list[str] = []
        results: dict[int, SendOutcome] = {}
        for i, path in enumerate(paths):
            try:
                data = path.read_bytes()
                meta, _ = split_part10(data)
            except OSError as exc:
                results[i] = outcome(None, f"cannot read {path}: {exc.strerror}")
                continue
            except IngestError as exc:
                results[i] = outcome(None, f"{path} is not sendable: {exc}", permanent=True)
                continue
            parts.append(data)
            sop_uids.append(str(meta.MediaStorageSOPInstanceUID))
        if parts:
            verdicts = self._post(destination, parts, sop_uids)
            pending = [i for i in range(len(paths)) if i not in results]
            for i, verdict in zip(pending, verdicts, strict=True):
                results[i] = verdict
        return [results[i] for i in range(len(paths))]

    def _post(self, dest: Destination, parts: list[bytes],
              sop_uids: list[str]) -> list[SendOutcome]:
        outcome = SendOutcome
        boundary = uuid.uuid4().hex
        body = b"".join(
            b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p
            + b"\r\n" for p in parts) + b"--" + boundary.encode() + b"--\r\n"
        request = urllib.request.Request(
            dest.stow_url.rstrip("/") + "/studies", data=body, method="POST",
            headers={"Content-Type": f'multipart/related; type="application/dicom"; '
                                     f"boundary={boundary}",
                     "Accept": "application/dicom+json"})
        where = f"STOW-RS {dest.stow_url}"
        if dest.auth_env:
            try:
                authorization = read_secret(dest.auth_env, f"destination {dest.name} auth_env")
            except ConfigError as exc:  # e.g. a world-readable $<auth_env>_FILE: fixable
                return [outcome(None, f"{where} not sent: {exc}")] * len(parts)
            if authorization:
                request.add_header("Authorization", authorization)
        try:
            with urllib.request.urlopen(request, timeout=dest.timeout) as rsp:
                status, payload = rsp.status, rsp.read()
        except urllib.error.HTTPError as exc:
            status, payload = exc.code, exc.read() or b""
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            return [outcome(None, f"{where} unreachable: {reason}")] * len(parts)
        failed = _failed_sops(payload)
        if status == 200 or (status in (202, 409) and failed):
            return [outcome(0x0000) if uid not in failed else
                    outcome(0xC000, f"{where}: {failed[uid]}"[:200], permanent=True)
                    for uid in sop_uids]
        if status in _TRANSIENT_HTTP or status >= 500:
            return [outcome(None, f"{where} answered HTTP {status}")] * len(parts)
        return [outcome(None, f"{where} refused with HTTP {status}", permanent=True)] * len(parts)


def _failed_sops(payload: bytes) -> dict[str, str]:
    """SOP Instance UID -> failure reason from a STOW-RS response body (DICOM JSON)."""
    try:
        data = json.loads(payload or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    if isinstance(data, list):
        data = data[0] if data else {}
    failed: dict[str, str] = {}
    for item in data.get(_FAILED_SOP_SEQUENCE, {}).get("Value", []) or []:
        uid = (item.get(_REFERENCED_SOP_INSTANCE, {}).get("Value") or [""])[0]
        reason = (item.get(_FAILURE_REASON, {}).get("Value") or [""])[0]
        failed[str(uid)] = f"failure reason {reason}"
    return failed
