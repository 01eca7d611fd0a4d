"""``qcd`` command line: thin wrappers over importable functions.

Exit codes: 0 success, 1 some instances failed, 2 invalid configuration or usage,
3 a runtime error (database, network).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import urllib.parse

from qcd import __version__
from qcd.config import Settings, load_settings
from qcd.errors import ConfigError, QcdError
from qcd.logsetup import configure_logging
from qcd.web import users_cli

LOGGER = logging.getLogger("qcd.cli")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qcd", description="DICOM quality-control daemon")
    p.add_argument("--version", action="version", version=f"qcd {__version__}")
    p.add_argument("-c", "--config", help="TOML config file (default: $QCD_CONFIG)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the daemon (DICOM listener, scheduler, metrics)")
    worker = sub.add_parser("worker", help="distributed mode: a Celery worker running analysis "
                            "jobs ([celery], shared database and spool)")
    worker.add_argument("--analyzers", help="comma-separated analyzers to run (default: all)")
    worker.add_argument("--concurrency", type=int, default=None,
                        help="tasks at once (default: celery.concurrency or workers.threads)")
    worker.add_argument("--pool", choices=["prefork", "threads", "solo"], default=None,
                        help="Celery pool (default: celery.pool)")
    worker.add_argument("--hostname", default=None, help="Celery node name (default: unique)")
    check = sub.add_parser("check-config", help="validate and print the effective config")
    check.add_argument("--json", action="store_true", help="print JSON instead of TOML-ish")
    check.add_argument("--show-secrets", action="store_true",
                       help="print a password in database.url instead of ***")
    db = sub.add_parser("db", help="database maintenance")
    db.add_argument("action", choices=["upgrade", "current"])
    status = sub.add_parser("status", help="counts of series and jobs by state")
    status.add_argument("--json", action="store_true")
    status.add_argument("--findings", type=int, nargs="?", const=30, default=0, metavar="N",
                        help="also list the newest N findings (default 30)")
    send = sub.add_parser("send", help="send DICOM files to a Storage SCP")
    send.add_argument("paths", nargs="+", help="files or directories")
    send.add_argument("--to", required=True, metavar="HOST:PORT")
    send.add_argument("--aec", default="QCD", help="called AE title (default QCD)")
    send.add_argument("--aet", default="QCDSEND", help="calling AE title (default QCDSEND)")
    send.add_argument("--tls", action="store_true",
                      help="DICOM TLS; the peer's certificate is verified (system CAs unless "
                           "--tls-ca)")
    send.add_argument("--tls-ca", metavar="PEM", help="CA bundle for the peer (implies --tls)")
    send.add_argument("--tls-cert", metavar="PEM", help="client certificate (mutual TLS)")
    send.add_argument("--tls-key", metavar="PEM", help="client key, owner-only (mutual TLS)")
    send.add_argument("--tls-server-name", metavar="NAME", default="",
                      help="name the certificate must carry (default: the --to host)")
    send.add_argument("--tls-no-check-hostname", action="store_true",
                      help="accept a certificate of the CA that names another host")
    imp = sub.add_parser("import", help="ingest files from disk through the SCP's path")
    imp.add_argument("paths", nargs="+", help="files or directories")
    analyze = sub.add_parser("analyze", help="run the applicable analyzers on a DICOM folder")
    analyze.add_argument("paths", nargs="+", help="files or directories")
    analyze.add_argument("--json", action="store_true", help="print JSON instead of a table")
    phantom = sub.add_parser("earl-phantom",
                             help="NEMA IEC phantom PET: recovery coefficients vs EARL bands")
    phantom.add_argument("path", help="folder (or files) of one PET phantom series")
    phantom.add_argument("--ratio", type=float, default=10.0,
                         help="sphere:background activity ratio of the filling (default 10)")
    phantom.add_argument("--json", action="store_true")
    audit = sub.add_parser("audit", help="retrospective audit: query/retrieve series from the "
                           "PACS ([audit]) for analysis; harmonisation report")
    audit.add_argument("--from", dest="date_from", required=True, metavar="YYYY-MM-DD")
    audit.add_argument("--to", dest="date_to", required=True, metavar="YYYY-MM-DD")
    audit.add_argument("--modality", help="default: [audit] modality (PT)")
    audit.add_argument("--station", action="append", default=None,
                       help="StationName filter (wildcards * ?); repeatable")
    audit.add_argument("--institution", action="append", default=None,
                       help="InstitutionName filter (wildcards * ?); repeatable")
    audit.add_argument("--report", metavar="CSV", help="write the per-site/scanner report")
    audit.add_argument("--series-report", metavar="CSV", help="write the per-series report")
    audit.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                       help="before reporting, wait up to this long for the analyses")
    audit.add_argument("--dry-run", action="store_true",
                       help="query only: list what would be retrieved, change nothing")
    audit.add_argument("--respect-window", action="store_true",
                       help="start no retrieve outside [audit] window")
    demo = sub.add_parser("demo-study", help="write a synthetic multi-series study")
    demo.add_argument("out_dir")
    demo.add_argument("--size", type=int, default=64, help="image rows/columns")
    users_cli.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"qcd: invalid configuration: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.logging)
    try:
        return _COMMANDS[args.command](settings, args)
    except ConfigError as exc:
        print(f"qcd: invalid configuration: {exc}", file=sys.stderr)
        return 2
    except QcdError as exc:
        print(f"qcd: {exc}", file=sys.stderr)
        return 3


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from qcd.app import Daemon

    Daemon(settings).run_forever()
    return 0


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    if settings.workers.mode != "distributed":
        raise ConfigError('workers.mode: "qcd worker" needs "distributed" (and a [celery] '
                          "broker_url); local mode runs its workers inside qcd serve")
    try:
        from qcd.workers.distributed import run_worker
    except ImportError as exc:
        print(f"qcd: distributed mode needs celery: pip install 'qcd[distributed]' ({exc})",
              file=sys.stderr)
        return 2
    from qcd.analyzers.registry import REGISTRY  # loads torch

    names = [a.strip() for a in (args.analyzers or "").split(",") if a.strip()] or None
    return run_worker(settings, REGISTRY, names, concurrency=args.concurrency, pool=args.pool,
                      hostname=args.hostname, loglevel=settings.logging.level.upper())


def _check_config(settings: Settings, args: argparse.Namespace) -> int:
    data = settings.to_dict()
    if not args.show_secrets:  # a password in the URL is not for screens
        from sqlalchemy.engine import make_url

        url = make_url(settings.database.url)
        if url.password:
            data["database"]["url"] = url.render_as_string(hide_password=True)
        broker = urllib.parse.urlsplit(settings.celery.broker_url)
        if broker.password:
            data["celery"]["broker_url"] = broker._replace(netloc=broker.netloc.replace(
                f":{broker.password}@", ":***@")).geturl()
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(_to_toml(data))
    return 0


def _db(settings: Settings, args: argparse.Namespace) -> int:
    from qcd.db.engine import Database

    db = Database(settings.database.url)
    try:
        if args.action == "upgrade":
            db.upgrade()
        print(f"{db.safe_url}: revision {db.current_revision()} (head {db.head_revision()})")
    finally:
        db.dispose()
    return 0


def _status(settings: Settings, args: argparse.Namespace) -> int:
    from qcd.db.engine import Database
    from qcd.db.queries import recent_findings, status_summary

    db = Database(settings.database.url)
    try:
        db.check()
        summary = status_summary(db)
        if args.findings:
            summary["findings"] = recent_findings(db, args.findings)
    finally:
        db.dispose()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"studies:   {summary['studies']}")
        print(f"instances: {summary['instances']}")
        for key in ("series", "jobs"):
            counts = summary[key]
            assert isinstance(counts, dict)
            text = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"
            print(f"{key + ':':<10} {text}")
        findings = summary.get("findings") or []
        assert isinstance(findings, list)
        if findings:
            print("findings (newest last):")
        for f in findings:
            value = f"{f['value']:.3g}" if isinstance(f["value"], float) else f["value"]
            print(f"  {f['modality'] or '-':<3} {(f['series_description'] or '')[:24]:<24} "
                  f"{f['analyzer']:<7} {f['name']:<22} {value}{' ' + f['unit'] if f['unit'] else ''}"
                  f"{'  [' + f['model'] + ']' if f['model'] else ''}")
    return 0


def _send(settings: Settings, args: argparse.Namespace) -> int:
    from qcd.ingest.scp import configure_pynetdicom
    from qcd.importer import iter_files
    from qcd.config import validate_client_tls
    from qcd.ingest.status import NAMES
    from qcd.outputs.settings import ClientTlsSettings
    from qcd.scu import send_files

    configure_pynetdicom()
    host, _, port = args.to.rpartition(":")
    if not host or not port.isdigit():
        print("qcd: --to must be HOST:PORT", file=sys.stderr)
        return 2
    tls = None
    if args.tls or args.tls_ca or args.tls_cert or args.tls_key:
        tls = ClientTlsSettings(enabled=True, ca_file=args.tls_ca or "",
                                check_hostname=not args.tls_no_check_hostname,
                                server_name=args.tls_server_name, cert_file=args.tls_cert or "",
                                key_file=args.tls_key or "")
        validate_client_tls("send --tls", tls)
    results = send_files(list(iter_files(args.paths)), host, int(port), args.aec, args.aet,
                         tls=tls)
    failed = 0
    for r in results:
        if r.status != 0:
            failed += 1
            name = NAMES.get(r.status, "") if r.status is not None else ""
            code = f"0x{r.status:04X}" if r.status is not None else "none"
            print(f"{r.path}: {code} {name} {r.comment}".rstrip())
    print(f"sent {len(results) - failed} of {len(results)} file(s)")
    return 1 if failed else 0


def _import(settings: Settings, args: argparse.Namespace) -> int:
    from qcd.ingest.events import MetricsEvents
    from qcd.ingest.scp import configure_pynetdicom
    from qcd.ingest.service import build_ingest
    from qcd.importer import import_paths
    from qcd.metrics import Metrics

    configure_pynetdicom()
    db, _, service = build_ingest(settings, MetricsEvents(Metrics()))
    try:
        counts = import_paths(service, args.paths)
    finally:
        db.dispose()
    ok = counts.pop(0, 0)
    print(f"imported {ok} instance(s); refused {sum(counts.values())}"
          + "".join(f", 0x{k:04X} x{v}" for k, v in sorted(counts.items())))
    return 1 if counts else 0


def _analyze(settings: Settings, args: argparse.Namespace) -> int:
    import dataclasses

    from qcd.analyze import analyze_paths
    from qcd.analyzers.registry import REGISTRY

    rows, skipped = analyze_paths(args.paths, settings, REGISTRY)
    if args.json:
        print(json.dumps({"results": [dataclasses.asdict(r) for r in rows],
                          "skipped": skipped}, indent=2, default=str))
    else:
        for line in skipped:
            print(f"skipped {line}")
        for r in rows:
            print(f"{r.series_uid}  {r.modality or '-':<3} {r.series_description or '':<24.24} "
                  f"{r.analyzer:<8} {r.status}{'  ' + r.model if r.model else ''}"
                  f"{'  ' + r.error if r.error else ''}")
            for f in r.findings:
                value = f.value_text if f.value_text is not None else f.value_num
                print(f"    {f.name} = {value}{' ' + f.unit if f.unit not in (None, '1') else ''}")
        if not rows:
            print("no series matched a routing rule")
    return 1 if any(r.status == "failed" for r in rows) else 0


def _earl_phantom(settings: Settings, args: argparse.Namespace) -> int:
    from qcd.analyzers.earl.phantom import analyze_phantom_series
    from qcd.importer import iter_files

    report = analyze_phantom_series(list(iter_files([args.path])), args.ratio)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    data = report.to_dict()
    print(f"class: {data['label']}   background COV {100 * data['background_cov']:.1f}%   "
          f"voxel {' x '.join(f'{v:.2f}' for v in data['voxel_mm'])} mm")
    for row in data["spheres"]:
        print("  " + "  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in row.items()))
    return 0


def _audit(settings: Settings, args: argparse.Namespace) -> int:
    import dataclasses
    import datetime as dt

    from qcd.audit.report import scanner_rows, series_rows, write_csv
    from qcd.audit.runner import build_runner, default_filters, peer_from, wait_for_analysis

    peer_from(settings)  # no PACS configured: say so before touching anything
    try:
        date_from = dt.date.fromisoformat(args.date_from)
        date_to = dt.date.fromisoformat(args.date_to)
    except ValueError as exc:
        print(f"qcd: --from/--to must be YYYY-MM-DD: {exc}", file=sys.stderr)
        return 2
    if date_to < date_from:
        print("qcd: --to is before --from", file=sys.stderr)
        return 2
    filters = default_filters(settings, date_from, date_to)
    filters = dataclasses.replace(
        filters, modality=(args.modality or filters.modality).upper(),
        stations=tuple(args.station) if args.station else filters.stations,
        institutions=tuple(args.institution) if args.institution else filters.institutions)
    service = None
    if settings.audit.method in ("get", "dicomweb") and not args.dry_run:
        from qcd.ingest.events import MetricsEvents
        from qcd.ingest.scp import configure_pynetdicom
        from qcd.ingest.service import build_ingest
        from qcd.metrics import Metrics

        configure_pynetdicom()
        db, _, service = build_ingest(settings, MetricsEvents(Metrics()))
    else:
        from qcd.db.engine import Database

        db = Database(settings.database.url)
        db.check()
    try:
        runner = build_runner(settings, db, service)
        summary = runner.run(filters, dry_run=args.dry_run, respect_window=args.respect_window)
        verb = "would retrieve" if args.dry_run else "left for a later run"
        print(f"found {summary.found} series; retrieved {len(summary.retrieved)}, "
              f"failed {len(summary.failed)}, already retrieved "
              f"{len(summary.already_retrieved)}, already analysed {len(summary.skipped)}, "
              f"{verb} {len(summary.deferred)}")
        for uid, error in sorted(summary.failed.items()):
            print(f"  failed {uid}: {error}")
        if args.wait > 0 and not args.dry_run:
            uids = summary.retrieved + summary.already_retrieved
            waiting = wait_for_analysis(db, uids, settings.audit.analyzer, args.wait)
            if waiting:
                print(f"{len(waiting)} series not analysed yet after {args.wait:g} s")
        rows = series_rows(db, filters, settings.audit.analyzer)
        if args.report:
            n = write_csv(scanner_rows(rows), args.report)
            print(f"wrote {n} site/scanner row(s) to {args.report}")
        if args.series_report:
            n = write_csv(rows, args.series_report)
            print(f"wrote {n} series row(s) to {args.series_report}")
    finally:
        db.dispose()
    return 1 if summary.failed else 0


def _demo_study(settings: Settings, args: argparse.Namespace) -> int:
    from qcd.synth import make_study

    paths = make_study(args.out_dir, size=args.size)
    print(f"wrote {len(paths)} instance(s) to {args.out_dir}")
    return 0


def _to_toml(data: dict[str, object], prefix: str = "") -> str:
    """Render the settings as TOML (round-trips through tomllib)."""
    lines: list[str] = []
    tables: list[tuple[str, dict[str, object]]] = []
    arrays: list[tuple[str, list[dict[str, object]]]] = []
    for key, value in data.items():
        if value is None:  # TOML has no null: leaving the key out restores the default None
            continue
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and (
            not prefix or (value and all(isinstance(v, dict) for v in value.values()))
        ):
            tables.append((name, value))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            arrays.append((name, value))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    out = "\n".join(lines)
    for name, table in tables:
        out += f"\n\n[{name}]\n" + _to_toml(table, name)
    for name, items in arrays:
        for item in items:
            out += f"\n\n[[{name}]]\n" + _to_toml(item, name)
    return out.strip()


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot render {value!r} as TOML")


_COMMANDS = {
    "user": users_cli.run,
    "serve": _serve,
    "worker": _worker,
    "check-config": _check_config,
    "db": _db,
    "status": _status,
    "send": _send,
    "import": _import,
    "analyze": _analyze,
    "earl-phantom": _earl_phantom,
    "demo-study": _demo_study,
    "audit": _audit,
}

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
