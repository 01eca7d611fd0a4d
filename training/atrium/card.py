"""MODEL_CARD.md for the atrium bundle, written from model.json so the two never disagree."""

from __future__ import annotations

from typing import Any


def _input(spec: dict[str, Any]) -> str:
    channels = int(spec["input"]["channels"])
    return ("one slice at a time (plain 2D input)" if channels == 1 else
            f"2.5D input ({channels} adjacent slices)")


def model_card(spec: dict[str, Any]) -> str:
    real = "held_out_real" in spec["metrics"]
    m = spec["metrics"]["held_out_real" if real else "held_out_simulated"]
    t = spec["training"]
    targets = spec["targets"]
    dice_ok = m["mean_dice"] >= targets["mean_dice"]
    vol_ok = m["median_abs_volume_error_pct"] <= targets["median_abs_volume_error_pct"]
    verdict = ("Both targets met on simulated data." if dice_ok and vol_ok else
               "**Targets not met**: " + ", ".join(
                   w for w, ok in (("mean Dice", dice_ok), ("median volume error", vol_ok))
                   if not ok) + " below target. This bundle is a smoke model; do not use its "
               "volumes for anything but pipeline testing.")
    post = spec["postprocessing"]
    worst = sorted(m["cases"], key=lambda c: c["dice"])[:3]
    worst_rows = "\n".join(f"| {c['seed']} | {c['dice']:.3f} | {c['true_ml']:.1f} | "
                           f"{c['pred_ml']:.1f} | {c['volume_error_pct']:+.1f}% |" for c in worst)
    data_line = ("**Trained and tested on real labelled MR** (held-out cases of the site's "
                 "data set)." if real else
                 "**Trained on simulated data only.** No real cardiac MR was available. The "
                 "numbers below\nare on held-out *simulated* volumes; accuracy on real scans "
                 "is unknown and expected to be\nlower until a site retrains or validates on "
                 "its own data (`training/atrium/real.py`\nreads the MSD Task02_Heart / LASC "
                 "2013 layout).")
    return f"""# Model card: atrium {spec['version']} (left-atrium segmentation, cardiac MR)

{data_line}

## Intended use
Quality control and research beside a PACS: a left-atrium mask (DICOM SEG), LA volume
from the real voxel spacing, and the LA volume index with its ASE/EACVI 2015 band when
height and weight are in the header. Not for diagnosis. The bands are echo-derived
(biplane disk summation); CMR 3D volumes run larger, and this label includes the
proximal pulmonary veins and appendage trunk, so the index is biased high against echo.

## Model
2D U-Net ({spec['architecture']}, base {spec['base_channels']} channels, four down /
bottleneck / four up double 3x3 convolutions with batch norm and ReLU) on {_input(spec)}
resampled in-plane to
{spec['input']['grid_mm']} mm; intensity = {spec['input']['normalisation']}.
Post-processing: threshold {post['threshold']}, closing {post['closing_mm']} mm, slices
under {post['min_slice_mm2']} mm2 cleared, largest 3D component. Preprocessing version
`{spec['preprocessing']}`; weights sha256 `{spec['sha256']}`.

## Training data
Simulated 3D bSSFP volumes (`training/atrium/simulate.py`), 1.25 mm isotropic, matrix
{t['matrix_sizes']} in-plane x {t['slices_per_volume']} slices: LA ellipsoid scaled to a
sampled LAVI (70 % 16-34, 30 % 35-60 mL/m2; here {t['lavi_range_ml_m2'][0]}-
{t['lavi_range_ml_m2'][1]}) times BSA 1.5-2.3 m2, four pulmonary veins, appendage, LV,
RV, RA, aorta, pulmonary arteries, epicardial and subcutaneous fat, lungs, spine, liver;
bSSFP contrast (myocardium 0.20-0.30, fat 1.0-1.25 of blood), coil bias, ghosting,
Rician noise (blood SNR 15-40), random orientation and field of view. Label:
{spec['label_convention']}. {t['n_train_volumes']} training volumes
({t['crop']} x {t['crop']} crops), {t['steps']} steps of {t['batch']} slices,
{t['loss']}, {t['optimiser']}, seed {t['seed']}, on {t['trained_on']} in
{t['seconds']} s. Reproduce: `{t['command']}`.

## Held-out metrics ({'real' if real else 'simulated'}, whole volumes, daemon pipeline)
{m['n_volumes']} volumes from a disjoint seed range:

| metric | value | target |
|---|---|---|
| mean Dice | **{m['mean_dice']:.3f}** (min {m['min_dice']:.3f}) | >= {targets['mean_dice']} |
| median abs. volume error | **{m['median_abs_volume_error_pct']:.1f}%** \
(p90 {m['p90_abs_volume_error_pct']:.1f}%) | <= {targets['median_abs_volume_error_pct']}% |
| mean signed volume error | {m['mean_volume_error_pct']:+.1f}% | |

{verdict}

Worst cases:

| seed | Dice | true mL | predicted mL | error |
|---|---|---|---|---|
{worst_rows}

Published references on real data (not comparable to simulated numbers): the seed's
2D U-Net Dice 0.88; nnU-Net about 0.93 on MSD Task02_Heart; LASC 2013 MRI winners
about 0.90-0.94.

## Limits
- Simulated anatomy is ellipsoids and tubes; real atria, valves, trabeculation, flow
  artefacts, off-resonance banding and LGE contrast are not modelled.
- Trained on near-axial 1.25 mm stacks; thick-slice cine stacks are refused by the
  analyzer's default rules.
- The label follows LASC (proximal veins and appendage trunk included); echo LAVI
  excludes them.
- The simulated task is easier than real data (clean geometric boundaries, no
  anatomical variants): a held-out simulated Dice near 0.98-0.99 says more about the
  simulator than about real scans, where published methods reach 0.88-0.94.
"""
