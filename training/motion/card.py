"""MODEL_CARD.md for the motion bundle, written from model.json so the two never disagree."""

from __future__ import annotations

from typing import Any


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, fmt: str = ".3f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _variants(t: dict[str, Any]) -> str:
    """The comparison of variants trained on the same scans (validation chose the bundle)."""
    rows = t.get("variants") or []
    if len(rows) < 2:
        return ""
    lines = ["| variant | motion head | rescan threshold | validation: specificity / "
             "sensitivity / kappa | held-out: specificity / sensitivity / kappa | fit s |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        v, h = r["validation"], r["held_out"]
        mark = " (shipped)" if r["variant"] == t.get("chosen_variant") else ""
        lines.append(
            f"| {r['variant']}{mark} | {'yes' if r['motion_head'] else 'no'} | "
            f"{r['rescan_probability']} | {_pct(v['rescan_specificity'])} / "
            f"{_pct(v['rescan_sensitivity'])} / {_num(v['kappa_quadratic'])} | "
            f"{_pct(h['rescan_specificity'])} / {_pct(h['rescan_sensitivity'])} / "
            f"{_num(h['kappa_quadratic'])} | {r['fit_seconds']} |")
    return ("\n## Variants (same scans, same seed)\nEach variant was trained on the same "
            "simulated scans; the shipped one has the best validation specificity at its "
            "validation-chosen threshold (then sensitivity, then kappa). Held-out numbers are "
            "shown for the record and did not take part in the choice.\n\n"
            + "\n".join(lines) + "\n")


def _interval(rate: float | None, n: int) -> tuple[float, float] | None:
    """Clopper-Pearson 95 % interval of a rate measured on ``n`` scans."""
    if rate is None or n <= 0:
        return None
    from scipy.stats import beta

    k = round(rate * n)
    lo = float(beta.ppf(0.025, k, n - k + 1)) if k > 0 else 0.0
    hi = float(beta.ppf(0.975, k + 1, n - k)) if k < n else 1.0
    return lo, hi


def _margins(m: dict[str, Any], targets: dict[str, Any], rescan_grade: int,
             t: dict[str, Any]) -> str:
    """How far the held-out rescan rates are from their targets, given the scan counts."""
    counts = {int(g): n for g, n in m["grade_counts"].items()}
    positives = sum(n for g, n in counts.items() if g >= rescan_grade)
    negatives = sum(counts.values()) - positives
    parts, short = [], []
    for name, key, n in (("sensitivity", "rescan_sensitivity", positives),
                         ("specificity", "rescan_specificity", negatives)):
        ci = _interval(m[key], n)
        if ci is None:
            continue
        parts.append(f"{name} {_pct(ci[0])}-{_pct(ci[1])} ({n} scans)")
        if ci[0] < targets.get(key, 0.0):
            short.append(name)
    if not parts:
        return ""
    text = "95% intervals (Clopper-Pearson): " + ", ".join(parts) + "."
    if short:
        chosen = next((r for r in t.get("variants") or []
                       if r["variant"] == t.get("chosen_variant")), None)
        val = ("" if chosen is None else
               f" On the {t.get('n_val_scans')} validation scans the same threshold gave "
               f"sensitivity {_pct(chosen['validation']['rescan_sensitivity'])} and "
               f"specificity {_pct(chosen['validation']['rescan_specificity'])}.")
        text += (f" The lower bounds for {' and '.join(short)} lie below the target: the "
                 f"margin is thin, and another set of scans may fall short.{val}")
    return text + "\n"


def _magnitude(m: dict[str, Any]) -> str:
    h = m.get("motion_head")
    if not h:
        return ""
    return (f"\nMotion head (`motion_magnitude` finding, um): Spearman "
            f"{_num(h['spearman_vs_motion'])} against the true magnitude; median error a factor "
            f"{_num(h['median_factor'], '.2f')} (90th percentile {_num(h['p90_factor'], '.2f')}; "
            f"magnitudes below 8 um count as 8 um); the grade read off the estimate with the "
            f"cut points is right for {_pct(h['grade_from_estimate_accuracy'])} of scans.\n")


def model_card(spec: dict[str, Any]) -> str:
    m = spec["metrics"]["held_out_simulated"]
    t = spec["training"]
    targets = spec.get("targets", {})
    th = spec["thresholds"]
    sim = spec["simulation"]
    edges = spec["grade_edges_um"]
    conf = "\n".join(f"| {g} | {sum(row.values())} | "
                     + " | ".join(str(row[p]) for p in ("1", "2", "3", "4", "5")) + " |"
                     for g, row in m["confusion"].items())
    kappa_ok = m["kappa_quadratic"] >= targets.get("kappa", 0.85)
    sens_ok = (m["rescan_sensitivity"] or 0) >= targets.get("rescan_sensitivity", 0.95)
    spec_ok = (m["rescan_specificity"] or 0) >= targets.get("rescan_specificity", 0.90)
    verdict = ("All three targets are met on held-out simulated scans."
               if kappa_ok and sens_ok and spec_ok else
               "**Not all targets are met** (" + ", ".join(
                   n for n, ok in (("kappa", kappa_ok), ("rescan sensitivity", sens_ok),
                                   ("rescan specificity", spec_ok)) if not ok)
               + "): treat the grade as a screening aid and let the `review` flag route "
               "doubtful scans to an operator.")
    _tuned = (f"chosen on {t['n_val_scans']} validation scans, seed {t.get('val_seed')}, as "
              f"the largest threshold with >= "
              f"{_pct(t.get('target_sensitivity_on_validation', 0.98))} sensitivity there; "
              f"0.5 is the plain "
              f"\"grade >= {th['rescan_grade']}\" rule" if t.get("n_val_scans") else
              "not tuned: 0.5 is the plain rule")
    dr = m.get("default_rule")
    _default = (("the metrics above (this bundle uses the plain rule)."
                 if th["rescan_probability"] >= 0.5 else "not recorded.") if not dr else
                f"kappa {_num(dr['kappa_quadratic'])}, rescan sensitivity "
                f"{_pct(dr['rescan_sensitivity'])}, specificity {_pct(dr['rescan_specificity'])}, "
                f"review {_pct(dr['review_rate'])}.")
    tk, ts = targets.get("kappa"), _pct(targets.get("rescan_sensitivity"))
    tsp = _pct(targets.get("rescan_specificity"))
    sens, spec_ = _pct(m["rescan_sensitivity"]), _pct(m["rescan_specificity"])
    _head_text = ("A fifth output regresses log(max(M, 8 um) / 100 um) of the simulated "
                  "motion magnitude M (smooth-L1, weight 0.5 beside the ordinal loss); its "
                  "geometric mean over slices is reported as `motion_magnitude`.\n"
                  if spec["input"].get("motion_head") else "")
    cal = spec.get("calibration")
    if cal:
        rows = "\n".join(
            f"| {kind} | " + " | ".join(f"{v:.2f}" for v in table.values()) + " |"
            for kind, table in cal["ssim_vs_motion_um"].items())
        head = " | ".join(f"{float(k):.0f}" for k in next(iter(
            cal["ssim_vs_motion_um"].values())).keys())
        tables = list(cal["ssim_vs_motion_um"].values())
        gap = max(abs(a - b) for a, b in zip(tables[0].values(), tables[-1].values()))
        per_grade = ", ".join(f"grade {g}: {v:.2f}" for g, v in
                              cal["ssim_median_per_grade"].items())
        cal_text = f"""Measured SSIM (motion-corrupted vs motion-free reconstruction of the same
phantom, noise-free, {cal['geometry']['size']} px at {cal['geometry']['pixel_mm'] * 1000:.0f} um;
median over phantoms) against the motion magnitude in um:

| path | {head} |
|---|{'---|' * len(head.split(' | '))}
{rows}

Median SSIM per grade band: {per_grade}. Steps and drifts of the same magnitude differ
by at most {gap:.2f} in SSIM, so one set of cut points serves both kinds of path."""
    else:
        cal_text = "Calibration table not computed for this bundle."
    if spec["metrics"].get("held_out_is_real"):
        data = t["data"]
        provenance = (f"**Retrained on the site's real graded scans** ({data['n_patients']} "
                      f"patients; grades {data['grade_counts']}). The held-out metrics below "
                      "are on real scans of patients not used for training (the section "
                      "titles saying 'simulated' describe the shipped default model).")
    else:
        provenance = ("**Trained on physically simulated data only.** No real HR-pQCT scan was "
                      "available. All numbers below are on held-out *simulated* scans; "
                      "agreement with operators on real scans is unknown until a site "
                      "validates it (see Limits).")
    return f"""# Model card: motion {spec['version']} (HR-pQCT motion grade and rescan)

{provenance}

## Intended use
Quality control at the HR-pQCT scanner (Scanco XtremeCT / XtremeCT II, distal radius or
tibia): grade subject motion on the 1-5 scale (1 no visible motion, 2 slight streaks,
3 prominent streaks, 4 moderate streaks with cortical discontinuities, 5 severe streaks
and smearing) and recommend a rescan at grade >= {th['rescan_grade']} (Whittier et al. 2020
recommend repeating scans graded above 3) while the patient is still there. Not for
diagnosis. Doubtful cases are flagged `motion_review` for an operator instead of forced.

## Model
Per-slice 2D CNN ({spec['architecture']}, width {spec['input']['width']}) on
{spec['input']['slices']} equally spaced axial slices, each resampled to
{spec['input']['pixel_mm']} mm, cropped to {spec['input']['shape'][1]} x
{spec['input']['shape'][2]} around the bone and normalised per slice (percentiles
0.5 / 99.8). Ordinal head: 4 logits of P(grade > k) (binary decomposition); the scan's
cumulative probabilities are the mean over its slices, the grade is the median of the
resulting distribution. After Walle et al., Bone 2023;166:116607 (per-slice CNN, scan
grade from slice results, low-confidence review). Decision: rescan at grade >=
{th['rescan_grade']}, or already when P(grade >= {th['rescan_grade']}) >=
{th['rescan_probability']} ({_tuned}); review when P(decoded grade) < {th['min_confidence']} or
P(grade >= {th['rescan_grade']}) in [{th['borderline_low']}, {th['borderline_high']}].
{_head_text}Preprocessing `{spec['preprocessing']}`; weights sha256 `{spec['sha256']}`.
{_variants(t)}
## Training data (simulated)
`training/motion/simulate.py`: distal-radius-like phantoms (elliptical periosteum,
cortex 0.5-1.5 mm, trabecular network of band-passed-noise ridges, marrow, soft tissue)
on a {sim['size_px']} x {sim['size_px']} grid at {sim['pixel_mm'] * 1000:.0f} um, forward-projected
(parallel beam, {sim['views']} views over 180 degrees) with a rigid motion path applied
during the acquisition (1-3 sudden steps and/or smooth drifts, up to 1.1 mm and 1 degree),
quantum noise (I0 1e4-1e5), FBP (Ram-Lak x Hann). {spec['input']['slices']} slices per scan share the
motion path (one stack is one rotation). Grades balanced; the magnitude is log-uniform inside each
grade band. {t['n_train_scans']} training and {t['n_test_scans']} held-out scans (held-out
seed {t['held_out_seed']}), {t['epochs']} epochs, trained on {t['trained_on']} in
{t['seconds']} s. Reproduce: `{t['command']}`.

## Grade labels and their calibration
The label is the motion magnitude M = max over view pairs of the periosteal displacement
(|t_i - t_j| + 9 mm x |phi_i - phi_j|), cut at {', '.join(f'{e:.0f}' for e in edges)} um
(grade 1 below {edges[0]:.0f} um = one voxel; grade 5 above {edges[-1]:.0f} um). The cut
points were SCIENCE.md's proposal and were checked by measurement
(`python -m training.motion.simulate --calibrate`): visually, 150-300 um gives prominent
streaks with a continuous cortex and >= 300 um (half the cortical thickness) a doubled,
broken cortex, which is the grade 3 / 4 boundary of the definitions.

{cal_text}

## Held-out metrics (simulated, scan level)
| metric | value | target |
|---|---|---|
| quadratically weighted kappa vs true grade | **{_num(m['kappa_quadratic'])}** | >= {tk} |
| rescan (grade >= {th['rescan_grade']}) sensitivity | **{sens}** | >= {ts} |
| rescan specificity | **{spec_}** | >= {tsp} |
| exact grade accuracy | {_pct(m['accuracy'])} | |
| within one grade | {_pct(m['within_one'])} | |
| scans flagged for review | {_pct(m['review_rate'])} | |
| accuracy of scans not flagged | {_pct(m['accuracy_not_review'])} | |
| wrong rescan decisions flagged for review | {_pct(m['rescan_errors_flagged_review'])} | |
| streak index vs motion (Spearman) | {_num(m['streak_index_spearman_vs_motion'])} | |

{m.get('streak_index_note', '')}{_magnitude(m)}

With the plain rule (rescan only at decoded grade >= {th['rescan_grade']}):
{_default}

{verdict}
{_margins(m, targets, th['rescan_grade'], t)}
Confusion (rows true grade, columns predicted):

| true | scans | 1 | 2 | 3 | 4 | 5 |
|---|---|---|---|---|---|---|
{conf}

## Limits
- Simulated data only. Real scans add cone-beam geometry, beam hardening, the ulna/fibula,
  real trabecular architecture, the scanner's own reconstruction filter and motion that
  is not rigid; the simulated field is a {sim['size_px'] * sim['pixel_mm']:.1f} mm crop with the
  bone scaled to fit, not the 140 mm scan field. Validate on the site's graded scans;
  `training/motion/real.py` reads DICOM or NIfTI stacks plus a grade CSV for retraining.
- The grade cut points are defined on a physical magnitude and checked against image
  similarity, not against operators' grades; operators themselves disagree on up to
  30 % of scans (mostly by one grade).
- The streak index (`motion_estimate`) is an image statistic, not a calibrated motion
  amplitude; it includes a noise floor.
"""
