"""Write-back of a harmonised copy: a non-compliant PET series analysed by qcd arrives in a
real Orthanc as one new, smoothed series of the same study, once; the copy forwarded back
to qcd is analysed but not harmonised again."""

from __future__ import annotations

import io
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import ClassVar

import pydicom
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select

from qcd.analyzers.base import Acceptance, Finding, Runtime, SeriesInput
from qcd.analyzers.earl.evidence import read_evidence
from qcd.app import Daemon
from qcd.bundles import Bundle
from qcd.db.models import Delivery, DeliveryState, Job, JobState, Series
from tests.conftest import make_settings
from tests.integration.dcmtk import storescu
from tests.integration.orthanc import OrthancServer

pytestmark = pytest.mark.integration


class ClinicalEarl:
    """The EARL analyzer's findings without the CNN: real header evidence, class clinical.

    The write-back is under test, not the classifier (tests/integration/test_earl.py).
    """

    name: ClassVar[str] = "earl"
    bundle: ClassVar[str | None] = None

    def accepts(self, headers: Sequence[Dataset]) -> Acceptance:
        return Acceptance(all(h.get("Modality") == "PT" for h in headers))

    def analyze(self, series: SeriesInput, bundle: Bundle | None,
                runtime: Runtime) -> list[Finding]:
        evidence = read_evidence(pydicom.dcmread(series.paths[0], stop_before_pixels=True))
        return [Finding("header_evidence", value_text=evidence.hint(),
                        payload=evidence.to_dict()),
                Finding("earl_class", value_text="clinical", payload={})]


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    with OrthancServer(tmp_path / "orthanc") as server:
        yield server


def _wait(predicate: object, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.3)


def test_harmonised_copy_reaches_the_pacs_once(tmp_path: Path, orthanc: OrthancServer) -> None:
    from training.earl.demo_pet import write_case

    config = tmp_path / "qcd.toml"
    config.write_text(
        '[[routing.rules]]\nanalyzer = "earl"\nmodalities = ["PT"]\n'
        '[audit]\nwrite_back_harmonised = true\nharmonise_to = "EARL1"\n'
        f'[[delivery.destinations]]\nname = "orthanc"\nhost = "127.0.0.1"\n'
        f'port = {orthanc.dicom_port}\nae_title = "{orthanc.aet}"\n')
    settings = make_settings(
        tmp_path, QCD_CONFIG=str(config), QCD_OUTPUTS__PATH=str(tmp_path / "outputs"),
        QCD_OUTPUTS__SWEEP_INTERVAL_SECONDS="0.3", QCD_DELIVERY__SWEEP_INTERVAL_SECONDS="0.3")
    assert settings.audit.write_back_harmonised
    files = write_case(tmp_path / "pet", "clinical", 11)
    source = pydicom.dcmread(files[0], stop_before_pixels=True)
    n = len(files)
    daemon = Daemon(settings, registry={"earl": ClinicalEarl()})
    daemon.start()
    try:
        assert len(storescu(files, daemon.scp.port).acknowledged) == n

        def all_sent(expected: int) -> bool:
            with daemon.db.session() as s:
                states = [d.state for d in s.scalars(select(Delivery))]
            return len(states) == expected and set(states) == {DeliveryState.SENT}

        _wait(lambda: all_sent(1 + n))  # the SR and the n instances of the copy
        with daemon.db.session() as s:
            harm = s.scalars(select(Delivery).where(Delivery.object_kind == "HARM")).all()
        assert len(harm) == n
        copy_series = {d.path.split("/")[1] for d in harm}
        assert len(copy_series) == 1
        [copy_uid] = copy_series
        [hit] = [r for r in orthanc.post("/tools/lookup", copy_uid.encode("ascii"))
                 if r.get("Type") == "Series"]
        info = orthanc.get(f"/series/{hit['ID']}")
        assert len(info["Instances"]) == n
        assert info["MainDicomTags"]["SeriesDescription"].startswith("HARMONISED EARL1 +")
        study = orthanc.get(f"/studies/{info['ParentStudy']}")
        assert study["MainDicomTags"]["StudyInstanceUID"] == str(source.StudyInstanceUID)
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                f"{orthanc.url}/instances/{info['Instances'][0]}/file", timeout=10) as rsp:
            stored = pydicom.dcmread(io.BytesIO(rsp.read()))
        assert list(stored.ImageType) == ["DERIVED", "PRIMARY"]
        assert "qcd harmonised copy" in stored.DerivationDescription
        assert stored.SourceImageSequence[0].ReferencedSOPInstanceUID in {
            str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}

        # the PACS forwards the copy back to qcd: analysed and reported, never harmonised
        copies = sorted((tmp_path / "outputs" / str(source.StudyInstanceUID) / copy_uid)
                        .glob("*.dcm"))
        assert len(copies) == n
        assert len(storescu(copies, daemon.scp.port).acknowledged) == n

        def copy_reported() -> bool:
            with daemon.db.session() as s:
                job = s.scalars(select(Job).join(Series, Series.id == Job.series_id)
                                .where(Series.series_uid == copy_uid)).first()
                return job is not None and job.state == JobState.DONE and (
                    job.report_sop_uid is not None)

        _wait(copy_reported)
        _wait(lambda: all_sent(2 + n))  # only the copy's SR was added
        time.sleep(1.5)  # later sweeps add nothing
        assert all_sent(2 + n)
        assert orthanc.count() == n + 2
        with daemon.db.session() as s:
            assert len(s.scalars(select(Delivery).where(Delivery.object_kind == "HARM"))
                       .all()) == n
    finally:
        daemon.stop()
