"""Atrium end to end: a simulated cardiac MR pushed with storescu into the daemon; the SEG
and the SR reach a real Orthanc in the source study, the SEG read back from the PACS
equals the mask finding and the SR's volume equals the volume finding. Plus a re-check
of the shipped bundle's held-out metrics on fresh simulated volumes."""

from __future__ import annotations

import io
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from sqlalchemy import select

from qcd.analyzers.atrium.analyzer import AtriumAnalyzer, load_model
from qcd.app import Daemon
from qcd.bundles import load_bundle
from qcd.db.models import Delivery, DeliveryState, Finding, Job, JobState
from qcd.outputs.codes import concept_for
from qcd.outputs.maskcodec import decode_mask
from qcd.outputs.seg import read_seg_mask
from tests.conftest import make_settings
from tests.integration.dcmtk import storescu
from tests.integration.orthanc import OrthancServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODELS = Path(__file__).parents[2] / "models"
FRESH_SEED = 7_777  # held-out seeds 7_777 * 1000 + 5_000_000 + i: far from any training seed
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    with OrthancServer(tmp_path / "orthanc") as server:
        yield server


def _file(orthanc: OrthancServer, sop_uid: str) -> pydicom.Dataset:
    [hit] = orthanc.lookup(sop_uid)
    with _NO_PROXY.open(f"{orthanc.url}/instances/{hit['ID']}/file", timeout=10) as rsp:
        return pydicom.dcmread(io.BytesIO(rsp.read()))


def test_cardiac_mr_gets_seg_and_sr_in_the_pacs(tmp_path: Path, orthanc: OrthancServer) -> None:
    from training.atrium.demo import write_case

    demo = write_case(tmp_path / "mr", 31337)
    study_uid = str(pydicom.dcmread(demo.paths[0], stop_before_pixels=True).StudyInstanceUID)
    config = tmp_path / "qcd.toml"
    config.write_text(
        '[[routing.rules]]\nanalyzer = "atrium"\nmodalities = ["MR"]\n'
        f'[[delivery.destinations]]\nname = "orthanc"\nhost = "127.0.0.1"\n'
        f'port = {orthanc.dicom_port}\nae_title = "{orthanc.aet}"\n')
    settings = make_settings(
        tmp_path, QCD_CONFIG=str(config), QCD_WORKERS__MODELS_PATH=str(MODELS),
        QCD_INFERENCE__DEVICE="cpu", QCD_OUTPUTS__PATH=str(tmp_path / "outputs"),
        QCD_OUTPUTS__SWEEP_INTERVAL_SECONDS="0.3", QCD_DELIVERY__SWEEP_INTERVAL_SECONDS="0.3")
    daemon = Daemon(settings, registry={"atrium": AtriumAnalyzer()})
    daemon.start()
    try:
        assert len(storescu(demo.paths, daemon.scp.port).acknowledged) == len(demo.paths)
        deadline = time.monotonic() + 120
        while True:
            with daemon.db.session() as s:
                job = s.scalars(select(Job)).first()
                states = [d.state for d in s.scalars(select(Delivery))]
            if job is not None and job.state == JobState.FAILED:
                pytest.fail(f"atrium job failed: {job.error}")
            if states == [DeliveryState.SENT, DeliveryState.SENT]:
                break
            assert time.monotonic() < deadline, f"job {job and job.state}, deliveries {states}"
            time.sleep(0.3)
        time.sleep(1.0)  # later sweeps must neither rebuild nor resend
        with daemon.db.session() as s:
            deliveries = s.scalars(select(Delivery).order_by(Delivery.id)).all()
            found = {f.name: f for f in s.scalars(select(Finding))}
        assert orthanc.count() == 2
    finally:
        daemon.stop()
    assert [d.object_kind for d in deliveries] == ["SEG", "SR"]  # the SEG is queued first
    seg_uid, sr_uid = (d.sop_instance_uid for d in deliveries)
    seg, sr = _file(orthanc, seg_uid), _file(orthanc, sr_uid)
    assert seg.StudyInstanceUID == sr.StudyInstanceUID == study_uid

    mask_payload = found["la_mask"].payload
    assert mask_payload is not None and found["la_mask"].model_name == "atrium"
    mask = decode_mask(mask_payload["mask"])
    by_uid = {str(ds.SOPInstanceUID): ds for ds in (
        pydicom.dcmread(p, stop_before_pixels=True) for p in demo.paths)}
    sources = [by_uid[u] for u in mask_payload["sop_instance_uids"]]
    assert np.array_equal(read_seg_mask(seg, sources), mask)
    volume = found["la_volume"].value_num
    assert volume == pytest.approx(float(mask.sum()) * 1.25 ** 3 / 1000, abs=0.01)
    assert volume == pytest.approx(float(demo.label.sum()) * 1.25 ** 3 / 1000, rel=0.15)

    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    (group,) = report.content.get_volumetric_roi_measurement_groups()
    assert group.referenced_segment.referenced_sop_instance_uid == seg_uid
    values = {m.name.value: m.value for m in group.get_measurements()}
    assert values[concept_for("la_volume").value] == pytest.approx(volume)
    assert values[concept_for("la_volume_index").value] == pytest.approx(
        found["la_volume_index"].value_num)
    assert found["lavi_band"].value_text in ("normal", "mild", "moderate", "severe")
    assert "not for primary diagnosis" in seg.SeriesDescription


def test_model_card_metrics_hold_on_fresh_held_out_volumes() -> None:
    """Three fresh simulated volumes through the daemon's pipeline agree with the card.

    The simulated grid follows the bundle's training record (its smallest matrix, at
    most 64 slices, to stay quick on a CPU). Allowed shortfall: 0.03 Dice and 3
    percentage points of median volume error against the card's held-out values, so
    a broken model or drifting preprocessing fails while sampling noise does not.
    """
    from training.atrium.simulate import SimConfig
    from training.atrium.train import evaluate, simulated_held_out

    import torch

    bundle = load_bundle(MODELS, "atrium")
    card = bundle.spec["metrics"]["held_out_simulated"]
    training = bundle.spec["training"]
    sim = SimConfig(nz=min(64, int(training["slices_per_volume"])),
                    sizes=(min(training["matrix_sizes"]),))
    model = load_model(bundle)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # simulation is many small ops: threads only add overhead
    try:
        got = evaluate(model, simulated_held_out(3, FRESH_SEED, sim, torch.device("cpu")),
                       int(bundle.spec["input"]["context"]), torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    report = json.dumps({k: v for k, v in got.items() if k != "cases"})
    assert got["mean_dice"] >= card["mean_dice"] - 0.03, report
    assert got["median_abs_volume_error_pct"] <= card["median_abs_volume_error_pct"] + 3, report
