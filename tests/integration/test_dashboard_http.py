"""The dashboard over real HTTP from `qcd serve`'s Daemon: probes and metrics stay open,
everything else needs credentials; QC gauges reach /metrics."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from qcd.app import Daemon
from qcd.web import seed
from qcd.web.auth import add_user
from tests.conftest import make_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def base(tmp_path: Path) -> Iterator[str]:
    daemon = Daemon(make_settings(tmp_path), registry={})
    seed.seed(daemon.db, n_series=80, days=2, seed=9)
    add_user(daemon.db, "op", "operator-password", "operator")
    daemon.start()
    assert daemon.http is not None
    yield f"http://127.0.0.1:{daemon.http.port}"
    daemon.stop()


def fetch(url: str, data: bytes | None = None, **headers: str) -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        body = exc.read()
        exc.close()
        return exc.code, body, dict(exc.headers)


AUTH = "Basic " + base64.b64encode(b"op:operator-password").decode()


def test_probes_and_metrics_are_open_the_rest_is_not(base: str) -> None:
    assert fetch(f"{base}/healthz")[0] == 200
    assert fetch(f"{base}/readyz")[0] == 200
    status, body, _ = fetch(f"{base}/metrics")
    assert status == 200
    text = body.decode()
    assert 'qcd_qc_series{site="Hospital' in text and "qcd_qc_findings{" in text
    assert 'qcd_open_alerts{kind="rescan"}' in text
    status, _, headers = fetch(f"{base}/api/sites")
    assert status == 401 and "WWW-Authenticate" not in headers
    status, _, headers = fetch(f"{base}/sites")
    assert status == 200 and "Log in" in fetch(f"{base}/sites")[1].decode()  # followed


def test_api_with_basic_auth_and_ack(base: str) -> None:
    status, body, headers = fetch(f"{base}/api/sites?days=7", Authorization=AUTH)
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert sum(s["series_analysed"] for s in json.loads(body)["sites"]) > 0
    alerts = json.loads(fetch(f"{base}/api/alerts", Authorization=AUTH)[1])
    alert_id = alerts[0]["id"]
    form = fetch(f"{base}/api/alerts/{alert_id}/ack", b"comment=x", Authorization=AUTH)
    assert form[0] == 400  # a JSON body is required
    status, body, _ = fetch(f"{base}/api/alerts/{alert_id}/ack",
                            json.dumps({"comment": "seen"}).encode(), Authorization=AUTH,
                            **{"Content-Type": "application/json"})
    assert status == 200 and json.loads(body)["state"] == "ACKNOWLEDGED"
    big = fetch(f"{base}/api/alerts/{alert_id}/ack", b"x" * (70 * 1024), Authorization=AUTH)
    assert big[0] == 413
