"""deploy/: the compose file, Prometheus config and rules, and the Grafana dashboard parse,
and every qcd metric they query is one qcd exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from qcd.metrics import Metrics

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to parse deploy/*.yml")

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
METRIC = re.compile(r"\b(qcd_[a-z0-9_]+)")
RECORDED = re.compile(r"\b(qcd:[a-z0-9_:]+)")
SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created")


def exported() -> set[str]:
    metrics = Metrics()
    metrics.watch_queue(lambda: {"QUEUED": 1})
    metrics.watch_quality(lambda: [
        ("series", {"site": "s", "station": "t", "window": "1h"}, 1.0),
        ("findings", {"site": "s", "station": "t", "finding": "earl_class", "value": "earl1",
                      "window": "1h"}, 1.0),
        ("open_alerts", {"kind": "rescan"}, 1.0), ("outbox", {"state": "DEAD"}, 0.0)])
    metrics.watch_spool(lambda: 1.0)
    text = generate_latest(metrics.registry).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines()
            if line and not line.startswith("#")} | {
        m for line in text.splitlines() if line.startswith("# TYPE")
        for m in [line.split()[2]]}


def known(name: str, names: set[str]) -> bool:
    return name in names or any(name == n + s or n == name + s for n in names for s in SUFFIXES)


def test_compose_brings_up_the_five_services() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert {"qcd", "orthanc", "postgres", "prometheus", "grafana"} <= set(compose["services"])
    mounted = [v.split(":")[0] for s in compose["services"].values() for v in s.get("volumes", [])
               if v.startswith("./")]
    for path in mounted:
        assert (DEPLOY / path).exists(), path


def test_prometheus_config_and_rules() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert config["scrape_configs"][0]["metrics_path"] == "/metrics"
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert {"QcdDown", "QcdQueueBackingUp", "QcdDeliveryDeadLetters", "QcdRescanRateSpike",
            "QcdEarlNonCompliance"} <= set(alerts)
    names = exported()
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    for group in rules["groups"]:
        for rule in group["rules"]:
            for metric in METRIC.findall(rule["expr"]):
                assert known(metric, names), (rule.get("alert") or rule.get("record"), metric)
            for rec in RECORDED.findall(rule["expr"]):
                assert rec in recorded, rec
            for label in ("patient", "accession", "birth"):
                assert label not in rule["expr"].lower()


def test_grafana_dashboard_queries_exported_metrics() -> None:
    dash = json.loads((DEPLOY / "grafana" / "qcd-dashboard.json").read_text())
    assert dash["uid"] and dash["panels"]
    names = exported()
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 15
    for expr in exprs:
        for metric in METRIC.findall(expr):
            assert known(metric, names), metric
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for path in (DEPLOY / "grafana" / "provisioning").rglob("*.yml"):
        assert yaml.safe_load(path.read_text())["apiVersion"] == 1
