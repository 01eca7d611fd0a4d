"""MODEL_CARD.md for the chest bundle, written from model.json so the two never disagree.

Two kinds: a bundle trained on simulated images (``metrics.held_out_simulated``) and one
retrained on a real dataset (``metrics.held_out_real``, ``--real-format``).
"""

from __future__ import annotations

from typing import Any


def _f(x: float) -> str:
    return "n/a" if x != x else f"{x:.3f}"


def _common(spec: dict[str, Any], origin: str) -> str:
    """Intended use and model sections, shared by both kinds of card."""
    w, inp = spec["input"]["width"], spec["input"]
    return f"""## Intended use
Quality-control and triage research beside a PACS: flag frontal (PA/AP) chest
radiographs (CR, DX) for 16 findings so a human reader can prioritise them, and raise
an operator alert (`urgent`) for {', '.join(spec['urgent'])}. Not a diagnostic device;
never a replacement for a radiologist's report. Lateral views and non-chest images get a
`not_applicable` finding instead of flags.

## Model
ChestNet: a compact ResNet (basic blocks, stages {w}-{8 * w} channels, global
average + max pooling), {origin}, one sigmoid per label (multi-label: a finding
does not exclude another; no softmax). Input: the image padded to a square (aspect ratio
kept, not stretched), resized to {inp['size']} px with antialiasing, each image
normalised by its own {inp['percentiles'][0]:.0%}/{inp['percentiles'][1]:.0%}
percentiles to [-1, 1] after Modality rescale, VOI (window or VOI LUT) and MONOCHROME1
inversion. Preprocessing version `{spec['preprocessing']}`; weights sha256 `{spec['sha256']}`.
"""


def model_card(spec: dict[str, Any]) -> str:
    """The card of a simulated or a real-data bundle."""
    if "held_out_real" in spec["metrics"]:
        return real_model_card(spec)
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

{_common(spec, 'trained from scratch')}
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


FORMAT_TEXT = {
    "nih": "NIH ChestX-ray14 (`Data_Entry_2017.csv`): 14 findings text-mined from the "
           "reports; COVID-19 and tuberculosis are not labelled there",
    "chexpert": "CheXpert: 7 of the 16 labels (Atelectasis, Cardiomegaly, Consolidation, "
                "Edema, Effusion, Pneumonia, Pneumothorax) from a report labeller; a blank is "
                "not stated",
    "folder": "a folder of DICOM/PNG images labelled by the site (all 16 labels stated)",
}


def _opt(x: float | None) -> str:
    return "n/a" if x is None else _f(float(x))


def real_model_card(spec: dict[str, Any]) -> str:
    """Card of a bundle retrained on a real dataset: source, split, untrained labels."""
    m = spec["metrics"]["held_out_real"]
    t = spec["training"]
    d, split = t["data"], t["split"]
    init = t.get("initialised_from")
    origin = (f"fine-tuned from `{init['bundle']}` ({init['data']}, sha256 "
              f"`{init['sha256'][:12]}...`)" if init else "trained from scratch")
    skipped = t["threshold_source"]
    rows = []
    for label, v in m["per_label"].items():
        if not v["trained"]:
            rows.append(f"| {label} | {v['known']} | {v['positives']} | not trained on this "
                        f"data | disabled | - | - |")
            continue
        note = "" if skipped[label] == "validation" else " (default)"
        rows.append(f"| {label} | {v['known']} | {v['positives']} | {_opt(v['auc'])} | "
                    f"{spec['thresholds'][label]:.4f}{note} | {_opt(v['sensitivity'])} | "
                    f"{_opt(v['specificity'])} |")
    untrained = spec["not_trained"]["labels"]
    untrained_text = ("None: every label had positive training images." if not untrained else
                      ", ".join(f"**{k}** ({v})" for k, v in untrained.items()) +
                      ". A label not in the dataset was masked out of the loss (no target "
                      "was invented for it); one without a positive training image was seen "
                      "only as negative. Their outputs are fixed near 0 with threshold 1.0: "
                      "the daemon reports them but never flags them.")
    urgent_off = [u for u in spec["urgent"] if u in untrained]
    if urgent_off:
        untrained_text += (f" **The urgent label(s) {', '.join(urgent_off)} are not trained: "
                           "this bundle raises no urgent alert for them.**")
    defaults = [k for k, v in skipped.items() if v.startswith("default")]
    uncertain = (f" CheXpert: {d['uncertain_policy']}; {d['blank_policy']}."
                 if d.get("uncertain_policy") else "")
    normal = (f'"normal" (no flag) agrees with the truth on {m["normal_agreement"]:.1%} of the '
              f"{m['normal_agreement_images']} held-out images that state every trained label."
              if m["normal_agreement"] is not None else "")
    return f"""# Model card: chest {spec['version']} (chest radiograph anomaly flags)

**Trained on real data ({spec['data_source']}).** The metrics below are on held-out
patients of the same dataset; they do not show how the model does at another site, on
other detectors or in another population. Not a cleared medical device: validate it on
local images before any clinical use.

{_common(spec, origin)}
## Training data (real)
{FORMAT_TEXT[d['format']]}.

{d['n_images']:,} frontal images of {d['n_patients']:,} patients
({d['unreadable_images_skipped']} unreadable image(s) skipped), split by patient
({split['rule']}; no patient is in two sets):

| set | images | patients |
|---|---|---|
| training | {split['train']['images']} | {split['train']['patients']} |
| validation (thresholds) | {split['validation']['images']} | {split['validation']['patients']} |
| held-out (metrics) | {split['held_out']['images']} | {split['held_out']['patients']} |

Each image went through the daemon's own preprocessing, alone, as at inference.
Loss: {t['loss']}.{uncertain} {t['epochs']} epoch(s) of batches of {t['batch']}
({t['images_seen']:,} images seen), learning rate {t['lr']:g}, seed {t['seed']}, trained on
{t['trained_on']} in {t['seconds']} s. Reproduce: `{t['command']}`.

Labels not trained on this data: {untrained_text}

## Held-out metrics (real, {m['n_cases']} images of {split['held_out']['patients']} patients)
Mean AUC **{_opt(m['mean_auc'])}** over the {m['labels_with_auc']} trained labels with
positives and negatives among the held-out images that state them (lowest
{_opt(m['min_auc'])}); each label is scored only on the images that state it. Operating
thresholds: {t['threshold_rule']}{'; default 0.5 (validation lacks positives or negatives) '
                                   'for ' + ', '.join(defaults) if defaults else ''}. {normal}

| label | held-out images stating it | positives | AUC | threshold | sensitivity | specificity |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

## Limits
- Held-out patients come from the same dataset: this is internal validation. Expect
  lower numbers on another hospital's images; validate locally.
- Dataset labels come from reports (text-mined or labeller-extracted) and are themselves
  imperfect; AUC is measured against them, not against a radiologist's reading.
- Labels with few held-out positives have wide uncertainty; a label marked n/a had no
  positives (or no negatives) among the held-out images.
- Frontal views only; children, lateral and decubitus views are out of scope.
"""
