"""The delivery outbox: on SQLite and PostgreSQL with a fake sender, then against Orthanc."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pydicom
import pytest
from prometheus_client import CollectorRegistry, Counter
from sqlalchemy import func, select, update

from qcd.ingest.scp import configure_pynetdicom
from qcd.db.engine import Database
from qcd.db.models import Alert, Delivery, DeliveryState, Series, Study, utcnow
from qcd.outputs.delivery import (
    ALERT_KIND,
    DeliverySettings,
    DeliveryWorker,
    Destination,
    DicomSender,
    SendOutcome,
    Verdict,
    classify,
    enqueue,
)
from qcd.synth import SeriesSpec, make_study
from tests.integration.orthanc import OrthancServer

pytestmark = pytest.mark.integration

T0 = dt.datetime(2026, 11, 26, 12, 0, 0)
PACS = Destination("pacs", "127.0.0.1", 104, "PACS")
ARCHIVE = Destination("archive", "127.0.0.1", 105, "ARCHIVE")


@pytest.fixture(scope="module", autouse=True)
def _pynetdicom() -> None:
    configure_pynetdicom()



def make_series(db: Database) -> int:
    with db.session() as session:
        study = Study(study_uid=pydicom.uid.generate_uid())
        session.add(study)
        session.flush()
        series = Series(study_id=study.id, series_uid=pydicom.uid.generate_uid(), modality="CT")
        session.add(series)
        session.flush()
        return series.id


def make_files(out: Path, count: int = 3, rle: int = 0) -> list[tuple[Path, str]]:
    """Tiny real Part 10 files and their SOP Instance UIDs (a stand-in for SR/SEG)."""
    specs = [SeriesSpec("CT", count, "x")] + ([SeriesSpec("CT", rle, "y", "", "", "rle")]
                                              if rle else [])
    paths = make_study(out, specs, 16)
    return [(p, str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)) for p in paths]


def rows(db: Database) -> list[Delivery]:
    with db.session() as session:
        return list(session.scalars(select(Delivery).order_by(Delivery.id)))


def alerts(db: Database) -> list[Alert]:
    with db.session() as session:
        return list(session.scalars(select(Alert).order_by(Alert.id)))


Script = Callable[[Destination, Path], SendOutcome]
SUCCESS = SendOutcome(0)


class FakeSender:
    """The Sender seam: records every (destination, path) and answers from ``script``."""

    def __init__(self, script: Script | Sequence[SendOutcome] = (SUCCESS,)) -> None:
        self.calls: list[tuple[str, Path]] = []
        self.batches = 0
        if callable(script):
            self.script = script
        else:  # answer in this order, repeating the last one
            answers = list(script)
            self.script = lambda d, p: answers.pop(0) if len(answers) > 1 else answers[0]

    def send(self, destination: Destination, paths: Sequence[Path]) -> list[SendOutcome]:
        self.batches += 1
        out = []
        for path in paths:
            self.calls.append((destination.name, path))
            out.append(self.script(destination, path))
        return out


def settings(*dests: Destination, **kw: float) -> DeliverySettings:
    return DeliverySettings(destinations=dests or (PACS,), **kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- fake sender


@pytest.mark.parametrize(("status", "verdict"), [
    (0x0000, Verdict.DELIVERED), (0xB000, Verdict.DELIVERED), (0xB006, Verdict.DELIVERED),
    (0xB007, Verdict.DELIVERED), (0xA700, Verdict.TRANSIENT), (0xA7FF, Verdict.TRANSIENT),
    (0xA900, Verdict.PERMANENT), (0xC000, Verdict.PERMANENT), (0xC211, Verdict.PERMANENT),
    (0x0122, Verdict.PERMANENT), (None, Verdict.TRANSIENT),
])
def test_classify(status: int | None, verdict: Verdict) -> None:
    assert classify(SendOutcome(status)) is verdict


def test_classify_no_status_marked_permanent() -> None:
    assert classify(SendOutcome(None, "SOP class refused", permanent=True)) is Verdict.PERMANENT


def test_enqueue_is_idempotent_also_concurrently(db: Database, tmp_path: Path) -> None:
    series = make_series(db)
    (path, sop), (path2, sop2) = make_files(tmp_path, 2)
    assert enqueue(db, series, "SR", sop, path, [PACS, ARCHIVE]) == 2
    assert enqueue(db, series, "SR", sop, path, [PACS, "archive"]) == 0
    assert enqueue(db, series, "SR", sop, tmp_path / "other.dcm", [PACS]) == 0
    assert len(rows(db)) == 2

    added: list[int] = []
    barrier = threading.Barrier(8)

    def racer() -> None:
        barrier.wait()
        added.append(enqueue(db, series, "SEG", sop2, path2, [PACS, ARCHIVE]))

    threads = [threading.Thread(target=racer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(added) == 2
    got = rows(db)
    assert len(got) == 4
    assert {(r.sop_instance_uid, r.destination) for r in got} == {
        (s, d) for s in (sop, sop2) for d in ("pacs", "archive")}
    assert all(r.state == DeliveryState.PENDING and r.attempts == 0 and r.path == str(path)
               for r in got if r.sop_instance_uid == sop)


def test_enqueue_refuses_bad_values(sqlite_db: Database) -> None:
    with pytest.raises(ValueError, match="object_kind"):
        enqueue(sqlite_db, 1, "TOOLONGKIND", "1.2.3", "x.dcm", [PACS])
    with pytest.raises(ValueError, match="path"):
        enqueue(sqlite_db, 1, "SR", "1.2.3", "x" * 256, [PACS])


def test_backoff_schedule_then_dead_after_max_attempts(db: Database, tmp_path: Path) -> None:
    series = make_series(db)
    [(path, sop)] = make_files(tmp_path, 1)
    enqueue(db, series, "SR", sop, path, [PACS])
    sender = FakeSender([SendOutcome(None, "PACS@127.0.0.1:104 unreachable")])
    worker = DeliveryWorker(db, settings(max_attempts=5, backoff_seconds=10,
                                         max_backoff_seconds=35), sender)
    now = T0
    waits = []
    for attempt in range(1, 5):
        assert worker.sweep(now) == {"claimed": 1, "sent": 0, "retried": 1, "dead": 0}
        [row] = rows(db)
        assert (row.state, row.attempts) == (DeliveryState.PENDING, attempt)
        assert row.last_error == "PACS@127.0.0.1:104 unreachable"
        assert row.next_attempt_at is not None
        waits.append((row.next_attempt_at - now).total_seconds())
        # not due yet: nothing is claimed or sent
        assert worker.sweep(row.next_attempt_at - dt.timedelta(seconds=1))["claimed"] == 0
        now = row.next_attempt_at
    assert waits == [10, 20, 35, 35]  # backoff * 2**(n-1), capped
    assert worker.sweep(now) == {"claimed": 1, "sent": 0, "retried": 0, "dead": 1}
    [row] = rows(db)
    assert (row.state, row.attempts, row.next_attempt_at) == (DeliveryState.DEAD, 5, None)
    assert "gave up after 5 attempts" in (row.last_error or "")
    assert len(sender.calls) == 5
    assert [a.kind for a in alerts(db)] == [ALERT_KIND]
    assert worker.sweep(now + dt.timedelta(days=1))["claimed"] == 0


def test_transient_then_success_and_metrics(db: Database, tmp_path: Path) -> None:
    series = make_series(db)
    [(path, sop)] = make_files(tmp_path, 1)
    enqueue(db, series, "SEG", sop, path, [PACS])
    registry = CollectorRegistry()

    class M:
        deliveries = Counter("qcd_deliveries", "test", ["destination", "outcome"],
                             registry=registry)

    sender = FakeSender([SendOutcome(0xA700, "Out of resources"), SendOutcome(0xB007, "coerced")])
    worker = DeliveryWorker(db, settings(), sender, metrics=M())
    assert worker.sweep(T0)["retried"] == 1
    [row] = rows(db)
    assert row.state == DeliveryState.PENDING and row.attempts == 1
    assert row.last_error == "status 0xA700: Out of resources"
    assert row.next_attempt_at == T0 + dt.timedelta(seconds=30)
    assert worker.sweep(T0 + dt.timedelta(seconds=30))["sent"] == 1
    [row] = rows(db)
    assert (row.state, row.attempts) == (DeliveryState.SENT, 2)
    assert row.delivered_at == T0 + dt.timedelta(seconds=30) and row.next_attempt_at is None
    assert row.last_error == "status 0xB007: coerced"  # delivered with a warning
    assert alerts(db) == []
    sample = registry.get_sample_value
    assert sample("qcd_deliveries_total", {"destination": "pacs", "outcome": "retried"}) == 1
    assert sample("qcd_deliveries_total", {"destination": "pacs", "outcome": "sent"}) == 1


def test_permanent_failure_dead_letters_with_one_alert(db: Database, tmp_path: Path) -> None:
    series = make_series(db)
    [(path, sop)] = make_files(tmp_path, 1)
    enqueue(db, series, "SR", sop, path, [PACS])
    sender = FakeSender([SendOutcome(0xA900, "Data set does not match SOP class")])
    worker = DeliveryWorker(db, settings(), sender)
    assert worker.sweep(T0) == {"claimed": 1, "sent": 0, "retried": 0, "dead": 1}
    [row] = rows(db)
    assert (row.state, row.attempts) == (DeliveryState.DEAD, 1)
    assert row.last_error == "status 0xA900: Data set does not match SOP class"
    assert worker.sweep(T0 + dt.timedelta(hours=1))["claimed"] == 0  # swept twice
    # an operator re-queues it, it dies again: still one alert
    with db.session() as session:
        session.execute(update(Delivery).values(state=DeliveryState.PENDING))
    assert worker.sweep(T0 + dt.timedelta(hours=2))["dead"] == 1
    [alert] = alerts(db)
    assert (alert.kind, alert.severity, alert.series_id) == (ALERT_KIND, "warning", series)
    assert alert.dedupe_key == f"delivery-dead:{sop}:pacs"
    assert sop in alert.message and "pacs" in alert.message and "SR" in alert.message
    assert "QCD" not in alert.message and "DEMO" not in alert.message  # no patient name
    assert len(sender.calls) == 2


def test_missing_or_wrong_file_is_dead_without_sending(db: Database, tmp_path: Path) -> None:
    series = make_series(db)
    (_, sop), (other, other_sop) = make_files(tmp_path, 2)
    enqueue(db, series, "SR", "1.2.826.0.1.3680043.8.498.1", tmp_path / "gone.dcm", [PACS])
    enqueue(db, series, "SR", sop, other, [PACS])  # the file holds another instance
    sender = FakeSender()
    worker = DeliveryWorker(db, settings(), sender)
    assert worker.sweep(T0) == {"claimed": 2, "sent": 0, "retried": 0, "dead": 2}
    gone, wrong = rows(db)
    assert gone.state == DeliveryState.DEAD and gone.last_error == (
        f"file not found: {tmp_path / 'gone.dcm'}")
    assert wrong.state == DeliveryState.DEAD
    assert f"holds SOP Instance UID {other_sop}, not {sop}" in (wrong.last_error or "")
    assert sender.calls == []
    assert len(alerts(db)) == 2


def test_relative_paths_resolve_against_root(sqlite_db: Database, tmp_path: Path) -> None:
    series = make_series(sqlite_db)
    [(path, sop)] = make_files(tmp_path / "results", 1)
    enqueue(sqlite_db, series, "SR", sop, path.relative_to(tmp_path), [PACS])
    sender = FakeSender()
    assert DeliveryWorker(sqlite_db, settings(), sender, root=tmp_path).sweep(T0)["sent"] == 1
    assert sender.calls == [("pacs", path)]


def test_one_batch_per_destination_and_unknown_destination_left(
    sqlite_db: Database, tmp_path: Path,
) -> None:
    series = make_series(sqlite_db)
    files = make_files(tmp_path, 5)
    for path, sop in files:
        enqueue(sqlite_db, series, "SR", sop, path, [PACS, ARCHIVE, "retired-pacs"])
    sender = FakeSender()
    worker = DeliveryWorker(sqlite_db, settings(PACS, ARCHIVE, batch=4), sender)
    assert worker.sweep(T0) == {"claimed": 10, "sent": 10, "retried": 0, "dead": 0}
    assert sorted(sender.calls) == sorted((d, p) for p, _ in files for d in ("pacs", "archive"))
    # rows alternate pacs/archive by id: 3 rounds of at most 4 rows, 2 associations each
    assert sender.batches == 6
    states = {(r.destination, r.state) for r in rows(sqlite_db)}
    assert ("retired-pacs", DeliveryState.PENDING) in states


def test_crash_mid_send_resends_the_same_file(db: Database, tmp_path: Path) -> None:
    series = make_series(db)
    [(path, sop)] = make_files(tmp_path, 1)
    enqueue(db, series, "SR", sop, path, [PACS])

    class Crash(BaseException):
        pass

    def crash(d: Destination, p: Path) -> SendOutcome:
        raise Crash  # the process dies after the PACS may have stored the object

    with pytest.raises(Crash):
        DeliveryWorker(db, settings(), FakeSender(crash)).sweep(T0)
    [row] = rows(db)
    assert (row.state, row.attempts) == (DeliveryState.PENDING, 0)
    restarted = DeliveryWorker(db, settings(), FakeSender())
    assert restarted.sweep(T0 + dt.timedelta(seconds=60))["claimed"] == 0  # lease still held
    sender = FakeSender()
    restarted.sender = sender
    assert restarted.sweep(T0 + restarted.claim_lease)["sent"] == 1
    assert sender.calls == [("pacs", path)]
    assert rows(db)[0].state == DeliveryState.SENT


def test_sender_error_counts_as_transient(sqlite_db: Database, tmp_path: Path) -> None:
    series = make_series(sqlite_db)
    [(path, sop)] = make_files(tmp_path, 1)
    enqueue(sqlite_db, series, "SR", sop, path, [PACS])

    def boom(d: Destination, p: Path) -> SendOutcome:
        raise RuntimeError("bug")

    assert DeliveryWorker(sqlite_db, settings(), FakeSender(boom)).sweep(T0)["retried"] == 1
    [row] = rows(sqlite_db)
    assert row.attempts == 1 and "sender error: RuntimeError('bug')" in (row.last_error or "")


def test_concurrent_workers_send_each_row_once(db: Database, tmp_path: Path) -> None:
    series = make_series(db)
    files = make_files(tmp_path, 12)
    for path, sop in files:
        enqueue(db, series, "SR", sop, path, [PACS])
    lock = threading.Lock()
    sent: list[Path] = []

    def slow(d: Destination, p: Path) -> SendOutcome:
        time.sleep(0.01)
        with lock:
            sent.append(p)
        return SendOutcome(0)

    workers = [DeliveryWorker(db, settings(batch=3), FakeSender(slow)) for _ in range(3)]
    threads = [threading.Thread(target=w.sweep, args=(T0,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(sent) == sorted(p for p, _ in files)
    assert {r.state for r in rows(db)} == {DeliveryState.SENT}


# --------------------------------------------------------------------------- real Orthanc


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    with OrthancServer(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


def orthanc_dest(server: OrthancServer, timeout: float = 10) -> Destination:
    return Destination("orthanc", "127.0.0.1", server.dicom_port, server.aet, "QCDTEST", timeout)


def test_delivers_to_orthanc_as_stored(db: Database, orthanc: OrthancServer,
                                       tmp_path: Path) -> None:
    series = make_series(db)
    files = make_files(tmp_path, 3, rle=2)  # two transfer syntaxes on one association
    before = orthanc.count()
    for path, sop in files:
        enqueue(db, series, "SR", sop, path, [orthanc_dest(orthanc)])
    worker = DeliveryWorker(db, settings(orthanc_dest(orthanc)), DicomSender())
    assert worker.sweep() == {"claimed": 5, "sent": 5, "retried": 0, "dead": 0}
    for _, sop in files:
        assert len(orthanc.lookup(sop)) == 1, sop
    assert orthanc.count() == before + 5
    assert all(r.state == DeliveryState.SENT and r.attempts == 1 and r.last_error is None
               for r in rows(db))
    assert worker.sweep()["claimed"] == 0
    assert orthanc.count() == before + 5


def test_sop_class_refused_by_orthanc_is_dead(sqlite_db: Database, orthanc: OrthancServer,
                                               tmp_path: Path) -> None:
    series = make_series(sqlite_db)
    [(path, sop)] = make_files(tmp_path, 1)
    ds = pydicom.dcmread(path)
    private = pydicom.uid.UID("1.2.826.0.1.3680043.8.498.999")
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = private
    ds.save_as(path)  # a private SOP class: Orthanc (UnknownSopClassAccepted false) refuses it
    enqueue(sqlite_db, series, "SR", sop, path, ["orthanc"])
    worker = DeliveryWorker(sqlite_db, settings(orthanc_dest(orthanc)), DicomSender())
    assert worker.sweep()["dead"] == 1
    [row] = rows(sqlite_db)
    assert row.state == DeliveryState.DEAD and "did not accept" in (row.last_error or "")
    assert len(alerts(sqlite_db)) == 1
    assert orthanc.lookup(sop) == []


def test_pacs_down_then_up_delivers_once(sqlite_db: Database, tmp_path: Path) -> None:
    db = sqlite_db
    series = make_series(db)
    files = make_files(tmp_path / "results", 3)
    server = OrthancServer(tmp_path / "orthanc")  # ports chosen, nothing listening yet
    dest = orthanc_dest(server, timeout=5)
    worker = DeliveryWorker(db, settings(dest), DicomSender())
    for path, sop in files:
        enqueue(db, series, "SR", sop, path, [dest])
    now = utcnow()
    assert worker.sweep(now) == {"claimed": 3, "sent": 0, "retried": 3, "dead": 0}
    for row in rows(db):
        assert (row.state, row.attempts) == (DeliveryState.PENDING, 1)
        assert row.next_attempt_at is not None and row.next_attempt_at > now
        assert "unreachable" in (row.last_error or "")
    due = max(r.next_attempt_at for r in rows(db) if r.next_attempt_at)
    try:
        server.start()
        assert worker.sweep(due + dt.timedelta(seconds=1))["sent"] == 3
        assert server.count() == 3
        assert all((r.state, r.attempts) == (DeliveryState.SENT, 2) for r in rows(db))
        assert worker.sweep(due + dt.timedelta(hours=1))["claimed"] == 0
        assert server.count() == 3

        # the same object again: enqueue is a no-op, and a resend (a crash after the PACS
        # stored it but before SENT was committed) is the same instance, not a new one
        path, sop = files[0]
        assert enqueue(db, series, "SR", sop, path, [dest]) == 0
        with db.session() as session:
            session.execute(update(Delivery).where(Delivery.sop_instance_uid == sop)
                            .values(state=DeliveryState.PENDING, next_attempt_at=None))
        assert worker.sweep()["sent"] == 1
        assert len(server.lookup(sop)) == 1
        assert server.count() == 3
        with db.session() as session:
            assert session.scalar(select(func.count()).select_from(Delivery)) == 3
    finally:
        server.stop()
