"""training.earl.protocols: the EARL bundle on reconstructions that mimic vendor protocols."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qcd.analyzers.earl.decision import Thresholds
from qcd.bundles import SHIPPED_MODELS
from training.earl import protocols as pr
from training.earl.card import model_card, protocol_table

SHIPPED = SHIPPED_MODELS / "earl" / "1.0.0"


@pytest.mark.parametrize("name", sorted(pr.FAMILIES))
def test_family_draws_stay_in_their_recipe(name: str) -> None:
    family = pr.FAMILIES[name]
    rng = np.random.default_rng(1)
    lo = math.hypot(family.system_fwhm_mm[0], family.filter_fwhm_mm[0])
    hi = math.hypot(family.system_fwhm_mm[1], family.filter_fwhm_mm[1])
    for _ in range(200):
        p = family.draw(rng)
        assert lo <= p.fwhm_mm <= hi
        assert family.overshoot[0] <= p.overshoot <= family.overshoot[1]
        assert family.cov[0] <= p.cov <= family.cov[1]
        assert p.voxel_mm[1] == p.voxel_mm[2] and p.voxel_mm[1] in family.in_plane_mm
        assert 2.0 <= p.voxel_mm[0] <= 4.0
    if name == "no_psf_6_8mm_filter":  # no PSF, no overshoot
        assert family.overshoot == (0.0, 0.0)


def test_filtered_noise_is_the_families_post_filter_and_changes_no_other_draw() -> None:
    family = pr.FAMILIES["no_psf_6_8mm_filter"]
    for seed in range(50):
        voxel = family.draw(np.random.default_rng(seed))
        filtered = family.draw(np.random.default_rng(seed), "filtered")
        assert voxel.noise_fwhm_mm == 0.0
        assert family.filter_fwhm_mm[0] <= filtered.noise_fwhm_mm <= family.filter_fwhm_mm[1]
        assert (filtered.fwhm_mm, filtered.cov, filtered.voxel_mm) == (
            voxel.fwhm_mm, voxel.cov, voxel.voxel_mm)
    with pytest.raises(ValueError, match="noise must be one of"):
        family.draw(np.random.default_rng(0), "pink")


def test_summary_counts_labels_predictions_and_stage1() -> None:
    cases = [
        {"family": "psf_tof_no_filter", "label": "clinical", "p_earl": 0.1, "p_earl2": 0.9,
         "fwhm_mm": 4.0},
        {"family": "no_psf_6_8mm_filter", "label": "EARL1", "p_earl": 0.9, "p_earl2": 0.1,
         "fwhm_mm": 8.0},
        {"family": "no_psf_6_8mm_filter", "label": "clinical", "p_earl": 0.8, "p_earl2": 0.2,
         "fwhm_mm": 9.5},
    ]
    s = pr.summarise(cases, Thresholds())
    assert s["psf_tof_no_filter"]["stage1_accuracy"] == 1.0
    b = s["no_psf_6_8mm_filter"]
    assert b["labels"] == {"EARL1": 1, "clinical": 1} and b["predicted"] == {"EARL1": 2}
    assert b["stage1_accuracy"] == 0.5 and b["fwhm_mm"] == [8.0, 9.5]
    assert b["clinical_called_earl"] == 1 and b["earl_called_clinical"] == 0
    assert s["psf_tof_0_5mm_filter"]["n"] == 0 and s["psf_tof_0_5mm_filter"]["stage1_accuracy"] is None
    assert s["all"]["n"] == 3 and s["all"]["stage1_accuracy"] == pytest.approx(2 / 3)
    table = protocol_table(s)
    assert "| no_psf_6_8mm_filter | 2 | EARL1 1, clinical 1 | 8.0-9.5 | 50.0% | 50.0% |" in table
    assert "| psf_tof_0_5mm_filter | 0 |  | - | - | - |" in table


def test_run_on_the_shipped_bundle_is_seeded(tmp_path: Path) -> None:
    """One case per family through the daemon's preprocessing and the shipped weights;
    the same task gives the same case again (labels come from the phantom, not the name)."""
    out = tmp_path / "protocols.json"
    assert pr.main(["--bundle", str(SHIPPED), "--n", "1", "--seed", "3", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["bundle"]["version"] == "1.0.0"
    assert [report["summary"][f]["n"] for f in pr.FAMILIES] == [1, 1, 1]
    first = report["cases"][0]
    assert first["label"] in ("clinical", "EARL1", "EARL2") and 0 <= first["p_earl"] <= 1
    again = pr.protocol_case((3, first["family"], 0), str(SHIPPED.resolve()))
    assert again == first
    assert out.with_suffix(".md").read_text().startswith("| family | cases |")
    with pytest.raises(SystemExit):
        pr.main(["--bundle", str(SHIPPED), "--n", "0", "--out", str(out)])


def test_card_has_the_section_and_limit_only_with_the_block() -> None:
    spec = json.loads((SHIPPED / "model.json").read_text())
    block = spec.pop("protocols")
    spec.pop("protocols_filtered", None)
    bare = model_card(spec)
    assert "## Vendor-protocol families" not in bare and "protocol family" not in bare
    spec["protocols"] = block
    card = model_card(spec)
    section = card.split("## Vendor-protocol families (simulated)", 1)[1].split("## CPU / GPU")[0]
    assert f"`{block['command']}`" in section and "| all | 180 |" in section
    assert "Weakest family: `no_psf_6_8mm_filter`, 27 of 36 clinical cases called EARL" in section
    limits = card.split("## Limits", 1)[1]
    assert ("- On the `no_psf_6_8mm_filter` protocol family (noise grain 0.8 voxel at every "
            "filter) stage 1 is 48.3%") in limits
    spec["protocols_filtered"] = {**block, "command": block["command"] + " --noise filtered"}
    both = model_card(spec)
    assert "### Noise smoothed by the post-filter too\n`" in both
    assert both.count("Weakest family:") == 2 and both.count("protocol family (") == 2


def test_write_bundle_records_the_summary_and_rewrites_the_card(tmp_path: Path) -> None:
    """On a copy of the shipped bundle: model.json gains the block, the card its section,
    and the weights (and their checksum) stay as they were."""
    bundle = tmp_path / "earl" / "1.0.0"
    shutil.copytree(SHIPPED, bundle)
    spec = json.loads((bundle / "model.json").read_text())
    spec.pop("protocols")
    (bundle / "model.json").write_text(json.dumps(spec))
    weights = (bundle / "weights.pt").read_bytes()
    out = tmp_path / "r.json"
    assert pr.main(["--bundle", str(bundle), "--n", "1", "--seed", "3", "--write-bundle",
                    "--out", str(out)]) == 0
    written = json.loads((bundle / "model.json").read_text())
    assert written["protocols"]["summary"] == json.loads(out.read_text())["summary"]
    assert written["protocols"]["summary"]["all"]["n"] == 3
    assert (bundle / "MODEL_CARD.md").read_text() == model_card(written)
    assert (bundle / "weights.pt").read_bytes() == weights and written["sha256"] == spec["sha256"]


def test_the_analyzer_flags_series_whose_protocol_the_bundle_failed_on() -> None:
    """The caveat comes from the bundle's recorded protocol check: the shipped model
    failed the no-PSF 6-8 mm family (48.3% / 56.7%), not the PSF no-filter one (100%)."""
    from qcd.analyzers.earl.analyzer import protocol_caveat
    from qcd.outputs.codes import concept_for

    spec = json.loads((SHIPPED / "model.json").read_text())
    caveat = protocol_caveat(spec, "EARL1-like")
    assert caveat is not None and caveat.name == "earl_protocol_caveat"
    assert caveat.value_text == ("stage 1 48% on simulated no_psf_6_8mm_filter; confirm with "
                                 "the phantom")
    assert caveat.payload is not None
    assert caveat.payload["stage1_accuracy"] == {
        "protocols": pytest.approx(29 / 60), "protocols_filtered": pytest.approx(34 / 60)}
    assert caveat.payload["clinical_called_earl"] == {"protocols": 27, "protocols_filtered": 26}
    assert protocol_caveat(spec, "clinical-like") is None  # 100% on that family
    assert protocol_caveat(spec, "unknown") is None
    bare = {k: v for k, v in spec.items() if not k.startswith("protocols")}
    assert protocol_caveat(bare, "EARL1-like") is None  # nothing measured, nothing claimed
    assert concept_for("earl_protocol_caveat").value == "EARLPROTCAVEAT"


def test_the_caveat_reaches_the_findings_of_a_filtered_non_psf_series(
        tmp_path: Path, cpu_runtime: Any) -> None:
    """Through the analyzer with the shipped bundle: the header "Gauss7.00" without PSF is
    the no-PSF 6-8 mm recipe and gets the caveat; a 5 mm filter matches no family."""
    from qcd.analyzers.base import SeriesInput
    from qcd.analyzers.earl.analyzer import EarlAnalyzer
    from qcd.bundles import load_bundle
    from qcd.synth import write_pet_series
    from training.earl.simulate import simulate_case

    volume, params, _, _ = simulate_case(np.random.default_rng(5), "EARL1")
    bundle = load_bundle(SHIPPED_MODELS, "earl", "1.0.0")
    names = {}
    for kernel in ("XYZ Gauss7.00", "XYZ Gauss5.00"):
        paths = write_pet_series(volume, params.voxel_mm, tmp_path / kernel, kernel=kernel)
        findings = EarlAnalyzer().analyze(SeriesInput("1.2.3", "PT", tuple(paths)), bundle,
                                          cpu_runtime)
        names[kernel] = {f.name: f for f in findings}
    caveat = names["XYZ Gauss7.00"]["earl_protocol_caveat"]
    assert caveat.payload is not None and caveat.payload["header_hint"] == "EARL1-like"
    assert "earl_protocol_caveat" not in names["XYZ Gauss5.00"]
