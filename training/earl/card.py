"""MODEL_CARD.md for the EARL bundle, written from model.json so the two never disagree."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from qcd.analyzers.earl.analyzer import PROTOCOL_KEYS


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _span(values: list[float] | None, digits: int) -> str:
    return "-" if not values else f"{values[0]:.{digits}f}-{values[1]:.{digits}f}"


def _margin_bin(lo: float, hi: float | None) -> str:
    return f">= {lo:g}" if hi is None else f"{lo:g}-{hi:g}"


def error_analysis_tables(summary: dict[str, Any]) -> str:
    """Markdown tables of a ``training.earl.analyze`` summary (stage 1 unless named)."""
    source_name = {"prior": "drawn from the prior", "EARL1": "hard negative from the EARL1 box",
                   "EARL2": "hard negative from the EARL2 box",
                   "blurry": "hard negative from the over-smoothed box (sim-2)"}
    stab = summary["labels"] is not None
    out = ["| clinical cases by proposal | n | stage-1 errors | label stability |",
           "|---|---|---|---|"]
    out += [f"| {source_name[r['source']]} | {r['n']} | {r['errors']} | "
            f"{'-' if r['stability'] is None else format(r['stability'], '.3f')} |"
            for r in summary["clinical_by_source"]]
    out += ["", "| clinical cases by phantom RCs | n | stage-1 errors | errors with stable "
            "labels | errors: FWHM mm / overshoot / COV |", "|---|---|---|---|---|"]
    out += [f"| {r['group']} | {r['n']} | {r['errors']} | "
            f"{'-' if r['stable_errors'] is None else r['stable_errors']} | "
            f"{_span(r['error_fwhm_mm'], 1)} / {_span(r['error_overshoot'], 2)} / "
            f"{_span(r['error_cov'], 3)} |" for r in summary["clinical_by_group"]]
    out += ["", "| in-plane voxel | n | stage-1 accuracy | errors |", "|---|---|---|---|"]
    out += [f"| {r['in_plane_mm']:g} mm | {r['n']} | {_pct(r['accuracy'])} | {r['errors']} |"
            for r in summary["by_voxel"]]
    out += ["", "| RC margin (abs) | n | stage-1 accuracy | errors | label stability | "
            "relabel ceiling |", "|---|---|---|---|---|---|"]
    out += [f"| {_margin_bin(*r['margin'])} | {r['n']} | {_pct(r['accuracy'])} | {r['errors']} | "
            f"{'-' if r['stability'] is None else format(r['stability'], '.3f')} | "
            f"{_pct(r['ceiling'])} |" for r in summary["by_margin"]]
    out += ["", "| subset | n | stage-1 accuracy | errors |", "|---|---|---|---|"]
    out += [f"| {r['subset']} | {r['n']} | {_pct(r['accuracy'])} | {r['errors']} |"
            for r in summary["subsets"]]
    if stab:
        c = summary["ceiling"]
        out += ["", "| classifier | stage-1 accuracy |", "|---|---|",
                f"| majority of {summary['relabels']} fresh physics relabels of the true "
                f"parameters | {_pct(c['accuracy'])} ({c['correct']}/{c['n']}, 95% CI "
                f"{_pct(c['ci95'][0])}-{_pct(c['ci95'][1])}) |",
                f"| one fresh physics relabel (expected) | {_pct(c['single_relabel'])} |",
                f"| this model | {_pct(summary['stage1']['accuracy'])} "
                f"({summary['stage1']['correct']}/{summary['stage1']['n']}) |"]
        against = summary.get("against_majority")  # summaries before 2026-12-08 lack it
        if against is not None:
            out.append(f"| this model, scored against the majority of the {summary['relabels']} "
                       f"fresh relabels | {_pct(against['accuracy'])} "
                       f"({against['correct']}/{against['n']}) |")
    return "\n".join(out) + "\n"


CNN_NEXT_STEPS: tuple[str, ...] = (
    "regression heads for the effective FWHM, overshoot and noise COV as auxiliary targets "
    "(the classes differ by a fraction of a millimetre of resolution, which the "
    "classification loss alone does not teach);",
    "more simulated cases (n-per-class >= 1000);",
    "less smoothing when resampling to the common grid (native resolution or a finer grid; "
    "a new preprocessing version);",
)
"""What the CNN bundles' error analysis calls for next (GPU retraining)."""
PHYSEST_NEXT_STEPS: tuple[str, ...] = (
    "labels that repeat, for the training and held-out cases too: each is the class of a "
    "16-measurement phantom average, and rejection sampling keeps a borderline draw "
    "whenever that noisy average lands on the wanted side; label the cases from more "
    "measurements (2.2.0 re-tunes only its threshold against such labels, "
    "`training.earl.retune`) or leave out draws within the measurement noise of a band "
    "edge;",
)
"""What the physics-estimate bundles' error analysis calls for next."""
MEASURABLE_TARGET: Final = (
    "a measurable target: stage-1 accuracy on cases whose RC margin or relabel stability is "
    "above a stated limit, with borderline cases reported apart.")


def error_analysis_section(block: dict[str, Any],
                           next_steps: Sequence[str] = CNN_NEXT_STEPS,
                           what_next: str = "all of it GPU retraining; not done for this "
                                            "bundle") -> str:
    """The card's "Error analysis" section from model.json's ``error_analysis`` block;
    ``next_steps`` (and the ``what_next`` heading note) depend on the kind of bundle."""
    held = block["held_out"]
    s = held["summary"]
    e = s["stage1_errors"]
    clinical_wrong = sum(e["clinical_called_earl"].values())
    earl_wrong = sum(e["earl_called_clinical"].values())
    between = next(g for g in s["clinical_by_group"] if g["group"] == "between the bands")
    voxels = sorted(s["by_voxel"], key=lambda r: r["accuracy"])
    lines = [f"Computed by `training/earl/analyze.py` on the {s['n_cases']} held-out cases, "
             f"rebuilt from their seeds and run on the CPU through the daemon's "
             f"preprocessing; each case's phantom label was measured again "
             f"{s['relabels']} times with fresh sub-voxel positions and noise. Reproduce: "
             f"`{held['command']}`" + (f" ({held['note']})" if held.get("note") else "")
             + (f", from the report of `{held['cases_from']}` (the same cases, weights and "
                "phantom)" if held.get("cases_from") else "") + ".",
             "",
             f"**Where the errors are.** {clinical_wrong + earl_wrong} stage-1 errors: "
             f"{clinical_wrong} clinical cases called EARL ("
             + ", ".join(f"{k} {v}" for k, v in e["clinical_called_earl"].items())
             + f") and {earl_wrong} EARL cases called clinical ("
             + ", ".join(f"{k} {v}" for k, v in e["earl_called_clinical"].items()) + ").", ""]
    bullets = [
        f"Clinical cases **between the bands** (some RC above its EARL1 band, some below its "
        f"EARL2 band: too sharp for EARL1, too blurry for EARL2): {between['errors']} of "
        f"{between['n']} wrong"
        + ("" if between["stable_errors"] is None else
           f", {between['stable_errors']} of them with stable labels")
        + (f"; their noise is low (COV {_span(between['error_cov'], 3)}), so only "
           f"resolution and overshoot (FWHM {_span(between['error_fwhm_mm'], 1)} mm) "
           f"separate them from EARL." if between["error_cov"] and between["error_cov"][1] < 0.1
           else f" (COV {_span(between['error_cov'], 3)}, FWHM "
                f"{_span(between['error_fwhm_mm'], 1)} mm)."),
        f"By in-plane voxel size: {voxels[0]['in_plane_mm']:g} mm is worst "
        f"({_pct(voxels[0]['accuracy'])}, n {voxels[0]['n']}), {voxels[-1]['in_plane_mm']:g} mm "
        f"best ({_pct(voxels[-1]['accuracy'])}, n {voxels[-1]['n']}); the cause is not "
        f"established.",
    ]
    medians = s["margin_median"]["EARL2"]
    if medians["wrong"] is not None and medians["right"] is not None:
        bullets.append(f"EARL2 cases called clinical: median RC margin {medians['wrong']:.3f}"
                       f", against {medians['right']:.3f} for those called EARL"
                       + (" (nearer the band edge)." if medians["wrong"] < medians["right"]
                          else "."))
    if s["labels"] is not None:
        lab = s["labels"]
        minor = 2 * lab["errors_with_stable_labels"] > s["stage1"]["errors"]
        bullets.append(
            ("Label noise is a minor cause" if minor else "Label noise explains part of them")
            + f": a fresh relabel agrees with the stored stage-1 "
            f"label {_pct(lab['stability_mean'])} of the time; {lab['unstable']} of "
            f"{s['n_cases']} labels are unstable (fewer than {lab['stable_threshold']:.0%} "
            f"of relabels agree), but {lab['errors_with_stable_labels']} of the "
            f"{s['stage1']['errors']} errors have stable labels.")
    train = block.get("training_cases")
    if train is not None:
        ts = train["summary"]["stage1"]
        underfit = ts["accuracy"] <= s["stage1"]["accuracy"] + 0.03
        bullets.append(
            ("The model underfits: stage 1 is " if underfit else "Stage 1 is ")
            + f"{_pct(ts['accuracy'])} ({ts['correct']}/{ts['n']}) on its own training cases"
            + (", no better than on held-out cases" if underfit else "")
            + f" (`{train['command']}`)." + (f" {train['note']}." if train.get("note") else ""))
    lines += [f"- {b}" for b in bullets]
    c = s["ceiling"]
    if c is not None:
        lines += ["", f"**The ceiling.** The majority of the {s['relabels']} fresh relabels "
                  f"(a split vote counts as clinical) agrees with the stored stage-1 label for "
                  f"{c['correct']} of {c['n']} cases: **{_pct(c['accuracy'])}** (95% CI "
                  f"{_pct(c['ci95'][0])}-{_pct(c['ci95'][1])}, Clopper-Pearson); one fresh "
                  f"relabel agrees {_pct(c['single_relabel'])} of the time. Stage 1 >= "
                  f"{c['target']:.0%} allows at most {c['errors_allowed_by_target']} errors in "
                  f"{c['n']} cases; the majority of fresh phantom labels already disagrees with "
                  f"the stored label on {c['errors']}."
                  + (" **The stage-1 target cannot be met on this held-out set**: the physics "
                     "itself, given the true parameters, misses it; the limit is the "
                     "stochastic phantom label, not the model."
                     if not c["target_reachable"] else
                     " The labels alone would allow the target.")]
    lines += ["", error_analysis_tables(s).rstrip("\n"), "",
              f"**What would be needed next** ({what_next}):",
              *(f"- {step}" for step in (*next_steps, MEASURABLE_TARGET))]
    return "\n".join(lines)


def _grid(options: dict[str, Any]) -> str:
    g = options["grid_mm"]
    return "on the native voxel grid" if g == "native" else f"on a {g} mm\ngrid"


def _options(spec: dict[str, Any]) -> str:
    """Input options beyond the seed paper's (voxel size, auxiliary outputs)."""
    options = spec["input"]
    parts = []
    if options.get("voxel_input"):
        parts.append("The original voxel size (in-plane, slice) enters the head beside the "
                     "texture statistics.")
    if options.get("aux"):
        parts.append("Three auxiliary outputs regress the effective FWHM, overshoot and log "
                     "noise COV (trained on the simulation's known values; reported as "
                     "`earl_effective_fwhm`).")
    return ("\n" + " ".join(parts)) if parts else ""


def _comparison(spec: dict[str, Any]) -> str:
    """The table of architectures (or ``--variants``) trained on the same cases."""
    entries = spec.get("architecture_comparison", {})
    if any("validation" in c for c in entries.values()):
        t = spec["training"]
        rows = "\n".join(
            f"| {name}{' (shipped)' if name == t.get('chosen_variant') else ''} | "
            f"{c['parameters']:,} | {_pct(c['validation']['stage1_accuracy'])} | "
            f"{_pct(c['stage1_accuracy'])} | {_pct(c['stage2_accuracy'])} | "
            + " / ".join(f"{k} {_pct(v)}" for k, v in c["accuracy_per_class"].items())
            + f" | {c['train_seconds']} s |" for name, c in entries.items())
        return (f"## Variants (same cases, same seed)\n"
                f"`edgenet`/`paper`: architecture on `earl-pre-1`; `preN`: EdgeNet on "
                f"`earl-pre-N`; `+vox`: voxel size as input; `+aux`: auxiliary FWHM / "
                f"overshoot / COV regression. The shipped variant has the best stage-1 "
                f"accuracy on {t.get('n_val_cases')} validation cases taken from the training "
                f"share; held-out columns did not take part in the choice.\n\n"
                f"| variant | parameters per stage | validation stage 1 | stage 1 | stage 2 | "
                f"per class | training time |\n|---|---|---|---|---|---|---|\n{rows}")
    rows = "\n".join(
        f"| {arch} | {c['parameters']:,} | {_pct(c['stage1_accuracy'])} | "
        f"{_pct(c['stage2_accuracy'])} | "
        + " / ".join(f"{k} {_pct(v)}" for k, v in c["accuracy_per_class"].items())
        + f" | {c['train_seconds']} s |" for arch, c in entries.items())
    return ("## Architecture comparison (same data, same seed)\n"
            "| architecture | parameters per stage | stage 1 | stage 2 | per class | "
            "training time |\n|---|---|---|---|---|---|\n" + rows)


def _learning_curve(spec: dict[str, Any]) -> str:
    """The ``--train-fractions`` table (empty when the bundle has none)."""
    curve = spec.get("learning_curve")
    if not curve:
        return ""
    rows = "\n".join(
        f"| {p['fraction']:.2f} | {p['n_train_cases']} | {_pct(p['stage1_accuracy'])} | "
        f"{_pct(p['stage2_accuracy'])} | "
        + " / ".join(f"{k} {_pct(v)}" for k, v in p["accuracy_per_class"].items()) + " |"
        for p in curve)
    return ("## Learning curve (same held-out cases)\n"
            "The shipped variant trained again on nested, stratified shares of the training "
            "cases (same seed and epochs); the last row is the shipped model.\n\n"
            "| share | training cases | stage 1 | stage 2 | per class |\n"
            f"|---|---|---|---|---|\n{rows}\n\n")


def protocol_table(summary: dict[str, Any]) -> str:
    """``training.earl.protocols``' summary as a table (one row per family, then all)."""
    rows = [f"| {name} | {b['n']} | "
            + ", ".join(f"{k} {v}" for k, v in sorted(b["labels"].items())) + " | "
            + _span(b["fwhm_mm"], 1) + f" | {_pct(b['stage1_accuracy'])} | "
            f"{_pct(b['exact_accuracy'])} |"
            for name, b in summary.items()]
    return ("| family | cases | physics labels | FWHM mm | stage 1 | exact class |\n"
            "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")


def _protocols(spec: dict[str, Any]) -> tuple[str, str]:
    """The vendor-protocol section and its Limits bullets (both empty without a block)."""
    blocks = [(noise, spec[key]) for noise, key in PROTOCOL_KEYS.items() if spec.get(key)]
    if not blocks:
        return "", ""
    section = ("## Vendor-protocol families (simulated)\n"
               "Held-out cases share the training prior; sites run a few protocols instead. "
               "`python -m training.earl.protocols` draws reconstructions from three "
               "families (SCIENCE.md 1c; effective FWHM = system resolution and post-filter "
               "in quadrature), labels each by the same phantom physics (a recipe does not "
               "decide the class) and classifies it with these weights.\n\n"
               + "".join(f"- `{k}`: {v}\n" for k, v in blocks[0][1]["families"].items()))
    limits = ""
    for noise, block in blocks:
        families = {k: v for k, v in block["summary"].items()
                    if k != "all" and v["stage1_accuracy"] is not None}
        worst = min(families, key=lambda k: families[k]["stage1_accuracy"])
        w = families[worst]
        errors = (f"{w['clinical_called_earl']} of {w['labels'].get('clinical', 0)} clinical "
                  f"cases called EARL, {w['earl_called_clinical']} of "
                  f"{w['n'] - w['labels'].get('clinical', 0)} EARL cases called clinical")
        grain = ("noise grain 0.8 voxel at every filter" if noise == "voxel" else
                 "noise smoothed by the post-filter too")
        section += (f"\n### {grain.capitalize()}\n`{block['command']}` ({block['date']})\n\n"
                    + protocol_table(block["summary"])
                    + f"\nWeakest family: `{worst}`, {errors} (FWHM {_span(w['fwhm_mm'], 1)} "
                    "mm).\n")
        limits += (f"- On the `{worst}` protocol family ({grain}) stage 1 is "
                   f"{_pct(w['stage1_accuracy'])} ({errors}; Vendor-protocol families): check "
                   "a class on such reconstructions against the site's phantom "
                   "(`qcd earl-phantom`).\n")
    return section + "\n", limits


def record(bundle_dir: Path, key: tuple[str, ...], entry: dict[str, Any]) -> dict[str, Any]:
    """Store ``entry`` under ``key`` in the bundle's model.json and rewrite its card.

    Only ``model.json`` and ``MODEL_CARD.md`` change: the weights and their sha256 do not.
    """
    spec_file = bundle_dir / "model.json"
    spec = json.loads(spec_file.read_text())
    node = spec
    for part in key[:-1]:
        node = node.setdefault(part, {})
    node[key[-1]] = entry
    spec_file.write_text(json.dumps(spec, indent=2) + "\n")
    (bundle_dir / "MODEL_CARD.md").write_text(model_card(spec))
    return spec


def _sampler_text(sampler: str) -> str:
    """How the clinical cases' hard negatives were proposed (``training.earl.simulate``)."""
    if sampler == "sim-1":
        return ("Proposal scheme `sim-1`: 30% of the clinical cases are near misses drawn "
                "from the EARL1 and EARL2 parameter boxes.")
    text = (f"Proposal scheme `{sampler}`: 45% of the clinical cases are near misses drawn "
            "in equal shares from the EARL1 and EARL2 parameter boxes and from an "
            "over-smoothed box (FWHM 8-11 mm, little overshoot, low noise: reconstructions "
            "too blurry for EARL1).")
    if sampler == "sim-3":
        text += (" The effective FWHM is split into a system part (3.5-6 mm) and a Gaussian "
                 "post-filter that smooths the noise as well, in the phantom and the bodies "
                 "alike (sim-1 and sim-2 keep a 0.8-voxel noise grain at every resolution).")
    return text


def _confusion_rows(m: dict[str, Any]) -> str:
    return "\n".join(
        f"| {label} | {sum(m['confusion'][label].values())} | {_pct(acc)} | "
        + " / ".join(f"{k} {v}" for k, v in m["confusion"][label].items()) + " |"
        for label, acc in m["accuracy_per_class"].items())


_INTENDED_USE = """## Intended use
Quality control of FDG PET reconstructions beside a PACS: flag whether a reconstruction
looks clinical (non-harmonised), EARL1- or EARL2-compliant, for physicists checking
harmonisation before multi-centre pooling. Not for diagnosis; not a substitute for the
EARL phantom accreditation itself (`qcd earl-phantom` measures the phantom)."""
_SIMULATION = """Simulated FDG whole-body PET (`training/earl/simulate.py`): anthropomorphic SUV volumes
(body, lungs, liver, heart, brain, kidneys, bladder, muscle, blood pool, random lesions)
rendered with sampled voxel size (2-4 mm), effective resolution (Gaussian FWHM 3-10 mm),
PSF-like edge overshoot (difference of Gaussians, a = 0-0.5) and correlated noise
(COV 3-20%). **Labels by physics:** the NEMA IEC body phantom is rendered with the same
parameters and its recovery coefficients (RCmax, RCmean A50) are compared with the EARL1
and EARL2 bands (background COV <= 15% for the compliant classes), as accreditation does."""
_COMMON_LIMITS = """- FDG whole-body only; other tracers and organ-specific protocols are out of scope.
- Needs SUV (Units BQML, weight, dose, half-life, decay correction START or ADMIN);
  otherwise the analyzer reports `suv_unavailable` and no class.
- Near the band edges the phantom label itself is sensitive to noise (SCIENCE 1d); the
  `indeterminate` band exists for that reason."""


def _regression_cases(training: dict[str, Any]) -> str:
    """The card's sentence on ``--extra-cases`` (none for bundles trained without)."""
    n = int(training.get("n_regression_cases", 0))
    if not n:
        return ""
    return (f" The estimator also learnt from {n} unlabelled regression cases (bodies"
            " reconstructed with parameters drawn from the prior widened to 3-12 mm FWHM and"
            " from the neighbourhood of the EARL bands, `training.earl.simulate."
            "REGRESSION_BOXES`; own seed stream): they enter every cross-validation fold's"
            " training set and the final fit, never the out-of-fold residuals, the threshold"
            " tuning or the held-out evaluation.")


def _tuning_text(spec: dict[str, Any]) -> str:
    """How the stage-1 threshold was chosen: on the trainer's out-of-fold estimates, or
    (``training.earl.retune``) on fresh cases against labels that repeat."""
    tune = spec["threshold_tuning"]
    if "retuned_from" not in tune:
        return (f"It was chosen on out-of-fold\nestimates of {tune['cases']} training cases "
                "(held-out cases took no part; ties go to the\nhigher threshold):")
    stored = tune["stage1_accuracy_by_threshold_stored_labels"]
    return (f"**Re-tuned** (`training.earl.retune`; weights, estimator and phantom are\n"
            f"{tune['retuned_from']}'s, sha256 unchanged): chosen on {tune['cases']} fresh "
            f"simulated cases (seed\n{tune['seed']}, neither training nor held-out cases) "
            f"against labels measured again from\nthe true parameters: {tune['labels']} "
            f"(4x the training labels'\nmeasurements; {tune['precise_differs_from_stored']} "
            f"of {tune['cases']} differ from the 16-measurement label). Ties go to the\nhigher "
            f"threshold. Against the 16-measurement labels the same cases give "
            + ", ".join(f"{t} {_pct(v)}" for t, v in stored.items())
            + f". Reproduce: `{spec['retune']['command']}` (the held-out report is "
            f"{tune['retuned_from']}'s `training.earl.analyze` report, its card's Error "
            "analysis).")


def physest_card(spec: dict[str, Any]) -> str:
    """The card of a ``physest`` bundle (estimate the reconstruction, measure a virtual
    phantom)."""
    m = spec["metrics"]["held_out_simulated"]
    t = spec["training"]
    est = spec["estimator"]
    per_class_min = min(m["accuracy_per_class"][c] for c in ("EARL1", "EARL2"))
    stage1_met, stage2_met = m["stage1_accuracy"] >= 0.99, per_class_min >= 0.95
    c = m["confusion"]
    errors = (f"{c['clinical']['EARL1'] + c['clinical']['EARL2']} clinical cases called EARL, "
              f"{c['EARL1']['clinical'] + c['EARL2']['clinical']} EARL cases called clinical")
    verdict = "Targets met."
    if not (stage1_met and stage2_met):
        verdict = (f"Stage-2 target {'met' if stage2_met else '**not met**'} (EARL1 "
                   f"{_pct(m['accuracy_per_class']['EARL1'])}, EARL2 "
                   f"{_pct(m['accuracy_per_class']['EARL2'])}; each needs >= 95%); stage-1 "
                   f"target {'met' if stage1_met else '**not met**'} ({errors}): use the "
                   "class as a screening flag, not as an accreditation result.")
    names = {"fwhm_mm": "effective FWHM (mm)", "overshoot": "overshoot a",
             "cov": "noise COV"}
    est_rows = "\n".join(
        f"| {names[k]} | {est['out_of_fold_train'][k]['mae']:.3f} | "
        f"{est['out_of_fold_train'][k]['sd']:.3f} | {est['held_out'][k]['mae']:.3f} | "
        f"{est['held_out'][k]['bias']:+.3f} |" for k in names)
    comp = spec.get("comparison_same_cases", {})
    comp_rows = "\n".join(
        f"| {name} | {_pct(c['stage1_accuracy'])} | {_pct(c['stage2_accuracy'])} | "
        + " / ".join(f"{k} {_pct(v)}" for k, v in c["accuracy_per_class"].items()) + " |"
        for name, c in comp.items())
    protocols_text, protocols_limit = _protocols(spec)
    th = spec["thresholds"]
    tune = spec["threshold_tuning"]
    analysis = spec.get("error_analysis", {})
    ceiling = analysis.get("held_out", {}).get("summary", {}).get("ceiling")
    scale = ("For scale: one fresh phantom measurement of the *true* parameters agreed with "
             "the stored label 96.7% of the time on the 1.0.0 held-out cases, the majority "
             "of eight 98.9% (1.0.0 card, Error analysis).")
    if ceiling is not None:
        scale = (f"**The labels cap stage 1 near this bundle's accuracy**: on these held-out "
                 f"cases one fresh phantom labelling of the *true* parameters agrees with the "
                 f"stored label {_pct(ceiling['single_relabel'])} of the time, the majority "
                 f"of {analysis['held_out']['summary']['relabels']} such labellings "
                 f"{_pct(ceiling['accuracy'])} (Error analysis).")
    analysis_text = (
        "## Error analysis (held-out simulated cases)\n"
        + error_analysis_section(analysis, PHYSEST_NEXT_STEPS, "not done for this bundle")
        + "\n\n" if "held_out" in analysis else "")
    return f"""# Model card: earl {spec['version']} (PET EARL compliance, physics estimate)

**Trained on simulated data only.** No real patient PET was available. Numbers below are
on held-out *simulated* cases; accuracy on real scanners is unknown until a site
validates it (see Limits).

{_INTENDED_USE}

## Method
Two steps, each checkable on its own (`qcd/analyzers/earl/physest.py`):
1. **Estimate the reconstruction.** A small MLP (`ParamNet`, {len(spec['input']['features'])} inputs, two
   hidden layers of 64) regresses the effective FWHM, the PSF-like edge overshoot and the
   noise COV from image features (`{spec['preprocessing']}`, `qcd/analyzers/earl/features.py`):
   the edge spread across the body outline (skin against air), the radial power spectrum
   (0.01-0.125 cycles/mm), the noise in flat body interior and the voxel size.
2. **Measure a virtual phantom.** The NEMA IEC body phantom is rendered with 16 parameter
   sets drawn around the estimate (spread = the estimator's out-of-fold residual SD
   below), on the series' own voxel grid, each measured at 2 positions x 2 noise draws,
   and classified against the EARL bands exactly as the training labels are. P(EARL) is
   the share of compliant draws, P(EARL2) the share of those that are EARL2. EARL at
   P(EARL) >= {th['stage1']}; EARL2 at P(EARL2) >= {th['earl2']}, EARL1 at P(EARL1) >= {th['earl1']},
   otherwise `indeterminate`.

The stage-1 threshold is not 0.5: the EARL regions of parameter space are narrow, so
draws spread about a correct estimate often leave them. {_tuning_text(spec)}

| P(EARL) threshold | {' | '.join(tune['stage1_accuracy_by_threshold'])} |
|---|{'---|' * len(tune['stage1_accuracy_by_threshold'])}
| stage-1 accuracy | {' | '.join(_pct(v) for v in tune['stage1_accuracy_by_threshold'].values())} |

The estimate is reported with every class (`earl_effective_fwhm`, with overshoot and
noise COV). Weights sha256 `{spec['sha256']}`.

## Training data
{_SIMULATION}
{_sampler_text(t.get('sampler', 'sim-1'))}
{t['n_train_cases']} training and {t['n_test_cases']} held-out cases (balanced classes, split
by case as `training.earl.train` splits them), seed {t['seed']}; regression targets are the
simulation's own FWHM, overshoot and COV.{_regression_cases(t)} Simulation and features
{t['simulation_seconds']} s on {t['workers']} CPU workers, fitting {t['seconds']} s on the CPU.
Reproduce: `{t['command']}`.

## Estimator accuracy
| parameter | MAE (training, out of fold) | residual SD (used for the draws) | MAE held-out | bias held-out |
|---|---|---|---|---|
{est_rows}

## Held-out metrics (simulated)
Stage 1 (clinical vs EARL) accuracy: **{_pct(m['stage1_accuracy'])}**; stage 2 (EARL1 vs
EARL2, on EARL cases) accuracy: **{_pct(m['stage2_accuracy'])}**; indeterminate:
{_pct(m['indeterminate_rate'])} of cases. Targets: stage 1 >= 99%, stage 2 >= 95% per class
(the paper on real data: 100%, and 100% / 85%). {verdict} {scale}

| true class | cases | correct | predicted (clinical / EARL1 / EARL2 / indeterminate) |
|---|---|---|---|
{_confusion_rows(m)}

## Comparison on the same held-out cases
| bundle | stage 1 | stage 2 | per class |
|---|---|---|---|
{comp_rows}

{protocols_text}{analysis_text}## CPU / GPU parity
The regressor runs in float32 on either device (autocast off); the phantom runs on the
CPU. Not measured on a GPU.

## Limits
- Simulated data only. The edge spread assumes the body outline is a step of activity
  against air, as in the simulation; real skin, attenuation-correction and scatter
  errors, truncated fields of view, arms beside the body and vendor noise texture are
  not modelled. Validate on the site's own phantom and patient reconstructions.
- The estimator is trained on the simulation's prior (FWHM 3-10 mm, overshoot 0-0.5,
  COV 3-20%, voxels 2-4 mm); outside it the estimate, and so the class, means little.
{_COMMON_LIMITS}
{protocols_limit}"""


def model_card(spec: dict[str, Any]) -> str:
    if spec.get("architecture") == "physest":
        return physest_card(spec)
    m = spec["metrics"]["held_out_simulated"]
    t = spec["training"]
    rows = _confusion_rows(m)
    comparison = _comparison(spec)
    th = spec["thresholds"]
    per_class_min = min(m["accuracy_per_class"][c] for c in ("EARL1", "EARL2"))
    met = m["stage1_accuracy"] >= 0.99 and per_class_min >= 0.95
    verdict = ("Targets met." if met else
               "**Targets not met**: stage 1 confuses clinical with EARL near the band edges "
               "(see the confusion table); use the class as a screening flag, not as an "
               "accreditation result.")
    analysis = spec.get("error_analysis", {})
    ceiling = analysis.get("held_out", {}).get("summary", {}).get("ceiling")
    if ceiling is not None and not ceiling["target_reachable"]:
        verdict += (f" The phantom labels themselves cap stage 1 at about "
                    f"{_pct(ceiling['accuracy'])} on these cases (Error analysis).")
    protocols_text, protocols_limit = _protocols(spec)
    analysis_text = (f"## Error analysis (held-out simulated cases)\n"
                     f"{error_analysis_section(analysis)}\n\n" if "held_out" in analysis else "")
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

{_INTENDED_USE}

## Model
Two 2D CNNs ({spec['architecture']}) on sagittal "edge images" (SUV image minus its
{spec['input']['edge_fwhm_mm']} mm FWHM Gaussian blur, {_grid(spec['input'])}, slices {spec['input']['shape'][1]}x{spec['input']['shape'][2]}, clipped to
+-{spec['input']['edge_clip_suv']} SUV), after Pfaehler et al., EJNMMI Phys 2022;9:53.{_options(spec)}
Stage 1 (clinical vs EARL) averages P(EARL) over the {spec['input']['slices']} central
sagittal slices and calls EARL at >= {th['stage1']}. Stage 2 (EARL1 vs EARL2) averages
P(EARL2) over the {spec['input']['slices']} slices of highest edge intensity among the
central {spec['input']['stage2_pool']}; EARL2 at P(EARL2) >= {th['earl2']}, EARL1 at
P(EARL1) >= {th['earl1']}, otherwise `indeterminate`. Preprocessing version
`{spec['preprocessing']}`; weights sha256 `{spec['sha256']}`.

## Training data
{_SIMULATION}
{_sampler_text(t.get('sampler', 'sim-1'))}
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

{comparison}

{_learning_curve(spec)}{analysis_text}{protocols_text}## CPU / GPU parity
{parity_text}

## Limits
- Simulated data only: real scanners add reconstruction artefacts, motion, attenuation and
  scatter errors and vendor-specific noise texture that the image-domain simulation does
  not model. Validate on the site's own phantom and patient reconstructions before
  relying on it; `python -m training.earl.train --real-labels labels.csv --cv 5`
  retrains on the site's own labelled series with folds grouped by patient/scanner.
{_COMMON_LIMITS}
{protocols_limit}"""
