"""MODEL_CARD.md for the chest bundle, written from model.json so the two never disagree."""

from __future__ import annotations

from typing import Any


def _f(x: float) -> str:
    return "n/a" if x != x else f"{x:.3f}"


def model_card(spec: dict[str, Any]) -> str:
    m = spec["metrics"]["held_out_simulated"]
    t = spec["training"]
    targets = m["targets"]
    rows = "\n".join(
        f"| {label} | {spec['prevalence_nih'][label] * 100:.2f}% | {v['positives']} | "
        f"{_f(v['auc'])}{'' if v['auc'] >= targets['per_label_auc'] else ' (below target)'} | "
        f"{spec['thresholds'][label]:.4f} | {_f(v['sensitivity'])} | {_f(v['specificity'])} |"
        for label, v in m["per_label"].items())
    below = [label for label, v in m["per_label"].items()
             if not v["auc"] >= targets["per_label_auc"]]
    if m["targets_met"]:
        verdict = "Both targets are met on held-out simulated images."
    else:
        verdict = (f"**Targets not met**: mean AUC {m['mean_auc']:.3f}; below "
                   f"{targets['per_label_auc']}: {', '.join(below) or 'none'}. Flags for those "
                   "labels are the least reliable.")
        if t["trained_on"] == "cpu":
            verdict += (" This is a CPU smoke bundle; the GPU configuration (`--preset full`) "
                        "makes the shipped weights.")
    note = f"\n\n*Note:* {t['note']}" if t.get("note") else ""
    return f"""# Model card: chest {spec['version']} (chest radiograph anomaly flags)

**The weights are trained on simulated images only and are not for clinical use until
retrained on real data.** No labelled chest radiographs were available. The numbers
below are on held-out *simulated* radiographs; they say the model reads the simulated
signs, not how it performs on real patients, where it is expected to do much worse.

## Intended use
Quality-control and triage research beside a PACS: flag frontal (PA/AP) chest
radiographs (CR, DX) for 16 findings so a human reader can prioritise them, and raise
an operator alert (`urgent`) for {', '.join(spec['urgent'])}. Not a diagnostic device;
never a replacement for a radiologist's report. Lateral views and non-chest images get a
`not_applicable` finding instead of flags.

## Model
ChestNet: a compact ResNet (basic blocks, stages {t['width']}-{8 * t['width']} channels, global
average + max pooling), trained from scratch, one sigmoid per label (multi-label: a finding
does not exclude another; no softmax). Input: the image padded to a square (aspect ratio
kept, not stretched), resized to {spec['input']['size']} px with antialiasing, each image
normalised by its own {spec['input']['percentiles'][0]:.0%}/{spec['input']['percentiles'][1]:.0%}
percentiles to [-1, 1] after Modality rescale, VOI (window or VOI LUT) and MONOCHROME1
inversion. Preprocessing version `{spec['preprocessing']}`; weights sha256 `{spec['sha256']}`.

## Training data (simulated)
`training/chest/simulate.py`: an analytic 3D thorax (body, lungs, heart, mediastinum,
aortic knob, trachea and bronchi, spine, ribs, clavicles, diaphragm domes, gastric bubble,
lung vessel markings) projected with Beer-Lambert attenuation at ~60 keV (soft tissue
0.217/cm, lung 0.053/cm, bone 0.604/cm), scatter (scatter-to-primary ~0.3-1 in the lungs,
up to ~3 behind the mediastinum), quantum noise, random window/gamma/edge enhancement;
patient size, habitus, inspiration, position, rotation, exposure and PA/AP (40% AP) vary.
Each finding is drawn by its radiological sign (cardiothoracic ratio > 0.5, basal fluid
with a meniscus, pneumothorax rim without markings and a pleural line, nodules <= 30 mm,
masses > 30 mm, lobar/segmental/patchy opacities, bat-wing edema with Kerley B lines,
hyperinflation, basal reticulation, pleural rim, retrocardiac air-fluid level, peripheral
ground glass, cavitating apical nodules). Label frequencies: the NIH ChestX-ray14
marginals (112,120 images; COVID-19 and tuberculosis, absent there, at 2%), drawn
independently, with rare labels raised to {t['floor']:.0%} so every label has positives
(AUC does not depend on prevalence). Simulated at {spec['simulation']['shape'][0]} px over a
43 cm field; {t['steps']} steps of {t['batch']} fresh images ({t['images_seen']:,} images),
seed {t['seed']}, trained on {t['trained_on']} in {t['train_seconds']} s (total
{t['seconds']} s). Reproduce: `{t['command']}`.{note}

## Held-out metrics (simulated, seed {t['test_seed']}, {m['n_cases']} images)
Mean AUC **{m['mean_auc']:.3f}** (target >= {targets['mean_auc']}), lowest label
**{m['min_auc']:.3f}** (target >= {targets['per_label_auc']} each). {verdict}
Operating thresholds: {t['threshold_rule']}, chosen on a separate validation set (seed
{t['validation_seed']}); "normal" (no flag) agrees with the truth on
{m['normal_agreement']:.1%} of test images.

| label | NIH frequency | test positives | AUC | threshold | sensitivity | specificity |
|---|---|---|---|---|---|---|
{rows}

## Limits
- Simulated data only: real radiographs have anatomy, devices (lines, tubes, pacemakers),
  positioning, post-processing and label noise that the simulation does not have. Expect
  a large drop on real images. Retrain on real data before any use: `training/chest/real.py`
  reads the NIH ChestX-ray14 `Data_Entry_2017.csv` layout, CheXpert CSVs and folders of
  DICOM/PNG images.
- The simulated signs are textbook-clean and separate labels more cleanly than real
  images do (e.g. pneumonia, consolidation and infiltration overlap heavily in the real
  NIH labels, which were text-mined from reports and are themselves imperfect).
- Frontal views only; children, lateral and decubitus views are out of scope.
- COVID-19 and tuberculosis frequencies are assumptions, not NIH values.
"""
