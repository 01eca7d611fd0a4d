"""MODEL_CARD.md for the EARL bundle, written from model.json so the two never disagree."""

from __future__ import annotations

from typing import Any


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def model_card(spec: dict[str, Any]) -> str:
    m = spec["metrics"]["held_out_simulated"]
    t = spec["training"]
    rows = "\n".join(
        f"| {label} | {sum(m['confusion'][label].values())} | {_pct(acc)} | "
        + " / ".join(f"{k} {v}" for k, v in m["confusion"][label].items()) + " |"
        for label, acc in m["accuracy_per_class"].items())
    comparison = "\n".join(
        f"| {arch} | {c['parameters']:,} | {_pct(c['stage1_accuracy'])} | "
        f"{_pct(c['stage2_accuracy'])} | "
        + " / ".join(f"{k} {_pct(v)}" for k, v in c["accuracy_per_class"].items())
        + f" | {c['train_seconds']} s |"
        for arch, c in spec.get("architecture_comparison", {}).items())
    th = spec["thresholds"]
    per_class_min = min(m["accuracy_per_class"][c] for c in ("EARL1", "EARL2"))
    met = m["stage1_accuracy"] >= 0.99 and per_class_min >= 0.95
    verdict = ("Targets met." if met else
               "**Targets not met**: stage 1 confuses clinical with EARL near the band edges "
               "(see the confusion table); use the class as a screening flag, not as an "
               "accreditation result.")
    parity = spec.get("gpu_parity", {})
    measured = parity.get("measured", {})
    parity_text = (
        f"CPU vs {measured.get('gpu', 'GPU')} on {measured.get('cases', '?')} held-out cases: "
        f"largest probability gap {measured.get('max_probability_gap', float('nan')):.2g}, "
        f"{measured.get('decisions_differing', '?')} decisions differ "
        f"(tolerance: gap <= 0.01, no decision may differ). {parity.get('note', '')}"
        if measured else "Not measured (no GPU was available when this bundle was made).")
    return f"""# Model card: earl {spec['version']} (PET EARL compliance)

**Trained on simulated data only.** No real patient PET was available. Numbers below are
on held-out *simulated* cases; accuracy on real scanners is unknown until a site
validates it (see Limits).

## Intended use
Quality control of FDG PET reconstructions beside a PACS: flag whether a reconstruction
looks clinical (non-harmonised), EARL1- or EARL2-compliant, for physicists checking
harmonisation before multi-centre pooling. Not for diagnosis; not a substitute for the
EARL phantom accreditation itself (`qcd earl-phantom` measures the phantom).

## Model
Two 2D CNNs ({spec['architecture']}) on sagittal "edge images" (SUV image minus its
{spec['input']['edge_fwhm_mm']} mm FWHM Gaussian blur, on a {spec['input']['grid_mm']} mm
grid, slices {spec['input']['shape'][1]}x{spec['input']['shape'][2]}, clipped to
+-{spec['input']['edge_clip_suv']} SUV), after Pfaehler et al., EJNMMI Phys 2022;9:53.
Stage 1 (clinical vs EARL) averages P(EARL) over the {spec['input']['slices']} central
sagittal slices and calls EARL at >= {th['stage1']}. Stage 2 (EARL1 vs EARL2) averages
P(EARL2) over the {spec['input']['slices']} slices of highest edge intensity among the
central {spec['input']['stage2_pool']}; EARL2 at P(EARL2) >= {th['earl2']}, EARL1 at
P(EARL1) >= {th['earl1']}, otherwise `indeterminate`. Preprocessing version
`{spec['preprocessing']}`; weights sha256 `{spec['sha256']}`.

## Training data
Simulated FDG whole-body PET (`training/earl/simulate.py`): anthropomorphic SUV volumes
(body, lungs, liver, heart, brain, kidneys, bladder, muscle, blood pool, random lesions)
rendered with sampled voxel size (2-4 mm), effective resolution (Gaussian FWHM 3-10 mm),
PSF-like edge overshoot (difference of Gaussians, a = 0-0.5) and correlated noise
(COV 3-20%). **Labels by physics:** the NEMA IEC body phantom is rendered with the same
parameters and its recovery coefficients (RCmax, RCmean A50) are compared with the EARL1
and EARL2 bands (background COV <= 15% for the compliant classes), as accreditation does.
{t['n_train_cases']} training and {t['n_test_cases']} held-out cases (balanced classes, split
by case), seed {t['seed']}, {t['epochs']} epochs, trained on {t['trained_on']} in
{t['seconds']} s. Reproduce: `{t['command']}`.

## Held-out metrics (simulated)
Stage 1 (clinical vs EARL) accuracy: **{_pct(m['stage1_accuracy'])}**; stage 2 (EARL1 vs
EARL2, on EARL cases) accuracy: **{_pct(m['stage2_accuracy'])}**; indeterminate:
{_pct(m['indeterminate_rate'])} of cases. Targets: stage 1 >= 99%, stage 2 >= 95% per class
(the paper on real data: 100%, and 100% / 85%). {verdict}

| true class | cases | correct | predicted (clinical / EARL1 / EARL2 / indeterminate) |
|---|---|---|---|
{rows}

## Architecture comparison (same data, same seed)
| architecture | parameters per stage | stage 1 | stage 2 | per class | training time |
|---|---|---|---|---|---|
{comparison}

## CPU / GPU parity
{parity_text}

## Limits
- Simulated data only: real scanners add reconstruction artefacts, motion, attenuation and
  scatter errors and vendor-specific noise texture that the image-domain simulation does
  not model. Validate on the site's own phantom and patient reconstructions before
  relying on it; `python -m training.earl.train --real-labels labels.csv --cv 5`
  retrains on the site's own labelled series with folds grouped by patient/scanner.
- FDG whole-body only; other tracers and organ-specific protocols are out of scope.
- Needs SUV (Units BQML, weight, dose, half-life, decay correction START or ADMIN);
  otherwise the analyzer reports `suv_unavailable` and no class.
- Near the band edges the phantom label itself is sensitive to noise (SCIENCE 1d); the
  `indeterminate` band exists for that reason.
"""
