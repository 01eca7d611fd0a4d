"""CPU vs CUDA parity of the motion, chest and atrium bundles through the daemon's runtime.

Run on a GPU host (device tool). Each analyzer's inputs are simulated once with the
training simulators (fixed seeds, none of them a training, validation or held-out seed)
and preprocessed once, on the CPU, by the daemon's own functions; then the *same*
tensors are classified with :class:`LocalRuntime` on every device of ``--devices``
(``InferenceSettings(device=..., amp=True)`` as in production), through the analyzer's
own ``load_model``, predictor key and decision code:

* motion: ``prepare`` -> predictor -> ``scan_cumulative`` -> ``decide`` (grade, rescan,
  review); the gap is on the scan's cumulative probabilities;
* chest: ``prepare_batch`` per image -> predictor -> sigmoid -> ``ChestAnalyzer.findings``
  (per-label flags with the bundle's thresholds, urgent); the gap is per label;
* atrium: ``segment`` (prepare, predictor, restore, post-processing) -> mask, LA volume,
  LAVI band; the gap is on the restored mask probabilities, plus the Dice of the final
  masks and the LA volume difference.

Requests reach the predictor the way concurrent worker threads send them: up to
``max_batch`` samples at a time, merged into one forward pass (atrium: one volume at a
time, as the analyzer sends it). The first device is the reference; every other is
compared with it. Within tolerance: probability gap <= 0.01 and no decision differs
(atrium: Dice >= 0.99 and volume difference <= 1 %). Prints a table, writes JSON;
exit status 0 when everything is within tolerance, 1 otherwise.

    python3 scripts/device_parity.py OUT.json [--analyzers motion,chest,atrium]
        [--n-motion 60] [--n-chest 400] [--n-atrium 4] [--devices cpu,cuda]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script

from qcd.bundles import Bundle, load_bundle  # noqa: E402
from qcd.errors import InferenceError  # noqa: E402
from qcd.workers.inference import InferenceSettings, select_device  # noqa: E402
from qcd.workers.runtime import LocalRuntime  # noqa: E402

MODELS = ROOT / "models"
MOTION_SEED = 9_100_000
"""Scan i uses seed MOTION_SEED + i. Training uses seed * 100_003 + i for seeds
20261126 (+3_333_333 validation, +7_777_777 held-out); calibration 900_000 + s."""
CHEST_SEED = 9_200_000
"""One generator for all images. Training: 20261126 * 7919 + 11; validation and
held-out 20261127, 20261128."""
CHEST_FLOOR = 0.04
"""Rare labels raised to this prevalence, as in training (more positives near thresholds)."""
ATRIUM_SEED = 9_300_000
"""Volume i uses seed ATRIUM_SEED + i. Training: 20261126 * 1000 + i; held-out + 5_000_000."""
TOL_PROB, TOL_DICE, TOL_VOLUME_PCT = 0.01, 0.99, 1.0


@dataclass
class Run:
    """One analyzer on one device: its outputs and how long each part took."""

    device: str
    outputs: list[Any]
    load_s: float
    warmup_s: float
    infer_s: float
    extra: dict[str, Any] = field(default_factory=dict)


def _tag(bundle: Bundle) -> str:
    """The predictor key the analyzers use."""
    return f"{bundle.name}/{bundle.version}:{bundle.sha256[:12]}"


def _predict_all(predictor: Any, requests: Sequence[torch.Tensor], max_batch: int
                 ) -> list[torch.Tensor]:
    """Submit requests in waves of at most ``max_batch`` samples (merged into one batch)."""
    out: list[torch.Tensor] = []
    wave: list[torch.Tensor] = []

    def flush() -> None:
        futures = [predictor.submit(x) for x in wave]
        out.extend(torch.as_tensor(f.result()).float() for f in futures)
        wave.clear()

    for x in requests:
        if wave and sum(len(w) for w in wave) + len(x) > max_batch:
            flush()
        wave.append(x)
    if wave:
        flush()
    return out


def _timed_run(device: str, runtime: LocalRuntime, build: Callable[[], Any],
               warm: Callable[[Any], Any], work: Callable[[Any], tuple[list[Any], dict[str, Any]]]
               ) -> Run:
    t0 = time.perf_counter()
    predictor = build()
    t1 = time.perf_counter()
    warm(predictor)  # one sample first: CUDA context, cuDNN/oneDNN set-up (timed apart)
    t2 = time.perf_counter()
    outputs, extra = work(predictor)
    t3 = time.perf_counter()
    return Run(device, outputs, round(t1 - t0, 3), round(t2 - t1, 3), round(t3 - t2, 3), extra)


# --------------------------------------------------------------------------------- motion
def motion_inputs(n: int, bundle: Bundle, sim_device: torch.device) -> list[dict[str, Any]]:
    """``n`` scans, grades balanced, at the bundle's simulation geometry, via ``prepare``."""
    from qcd.analyzers.motion.preprocess import N_SLICES, prepare
    from training.motion.simulate import Geometry, sample_motion_for_grade, simulate_scan

    sim = bundle.spec["simulation"]
    g = Geometry(int(sim["size_px"]), float(sim["pixel_mm"]), int(sim["views"]))
    slices = int(bundle.spec.get("input", {}).get("slices", N_SLICES))
    rng = np.random.default_rng(MOTION_SEED)
    cases = []
    for i in range(n):
        m = sample_motion_for_grade(rng, 1 + i % 5)
        scan = simulate_scan(MOTION_SEED + i, m, g, slices, sim_device)
        volume = scan.recon.float().cpu().numpy()  # what load_volume hands the analyzer
        x, _ = prepare(volume, (g.pixel_mm, g.pixel_mm, g.pixel_mm), slices)
        cases.append({"x": x, "grade": scan.grade})
    return cases


def motion_run(device: str, runtime: LocalRuntime, bundle: Bundle,
               cases: list[dict[str, Any]]) -> Run:
    from qcd.analyzers.motion.analyzer import load_model
    from qcd.analyzers.motion.decision import Thresholds, decide
    from qcd.analyzers.motion.model import scan_cumulative

    thresholds = Thresholds.from_spec(bundle.spec)
    model: list[Any] = []

    def factory() -> Any:  # as MotionAnalyzer.analyze
        if not model:
            model.append(load_model(bundle))
        return model[0]

    def work(predictor: Any) -> tuple[list[Any], dict[str, Any]]:
        out = []
        requests = [c["x"] for c in cases]
        for logits in _predict_all(predictor, requests, runtime.pool.settings.max_batch):
            cumulative = scan_cumulative(logits)  # as MotionAnalyzer.analyze
            out.append((cumulative.numpy(), decide(cumulative, thresholds)))
        accuracy = float(np.mean([d.grade == c["grade"]
                                  for (_, d), c in zip(out, cases, strict=True)]))
        return out, {"grade_accuracy": round(accuracy, 4)}

    return _timed_run(device, runtime, lambda: runtime.predictor(_tag(bundle), factory),
                      lambda p: p.predict(cases[0]["x"][:1]), work)


def motion_compare(ref: Run, other: Run) -> dict[str, Any]:
    both = list(zip(ref.outputs, other.outputs, strict=True))
    gap = max(float(np.abs(a[0] - b[0]).max()) for a, b in both)
    pairs = [(a[1], b[1]) for a, b in both]
    diff = {"grade": sum(a.grade != b.grade for a, b in pairs),
            "rescan": sum(a.rescan != b.rescan for a, b in pairs),
            "review": sum(a.review != b.review for a, b in pairs)}
    return {"max_probability_gap": gap, "differing": diff,
            "cases_differing": sum((a.grade, a.rescan, a.review) != (b.grade, b.rescan, b.review)
                                   for a, b in pairs),
            "within_tolerance": gap <= TOL_PROB and not any(diff.values())}


# ---------------------------------------------------------------------------------- chest
def chest_inputs(n: int, bundle: Bundle, sim_device: torch.device) -> list[dict[str, Any]]:
    """``n`` simulated radiographs, each through ``prepare_batch`` as the analyzer does."""
    from qcd.analyzers.chest.preprocess import prepare_batch
    from training.chest.simulate import make_batch

    size = int(bundle.spec["input"]["size"])
    h, w = (int(v) for v in bundle.spec.get("simulation", {}).get("shape", (320, 320)))
    gen = torch.Generator(device=sim_device).manual_seed(CHEST_SEED)
    cases = []
    for start in range(0, n, 128):
        b = make_batch(min(128, n - start), gen, CHEST_FLOOR, (h, w), sim_device)
        for display, labels in zip(b.display.float().cpu().numpy(), b.labels.cpu().numpy(),
                                   strict=True):
            cases.append({"x": prepare_batch(torch.from_numpy(display)[None], size),
                          "display": display, "labels": labels > 0.5})
    return cases


def chest_run(device: str, runtime: LocalRuntime, bundle: Bundle,
              cases: list[dict[str, Any]]) -> Run:
    from qcd.analyzers.chest.analyzer import ChestAnalyzer, load_model
    from qcd.analyzers.chest.labels import LABELS
    from qcd.analyzers.chest.preprocess import DisplayHeader, Radiograph

    def work(predictor: Any) -> tuple[list[Any], dict[str, Any]]:
        out = []
        for logits, c in zip(_predict_all(predictor, [c["x"] for c in cases],
                                          runtime.pool.settings.max_batch), cases, strict=True):
            p = torch.sigmoid(logits).numpy().max(axis=0)  # as ChestAnalyzer.analyze
            image = Radiograph(c["display"], None, "none", DisplayHeader(), "auto")
            findings = ChestAnalyzer.findings(p, bundle, [image], [""])
            fired = {f.payload["label"] for f in findings
                     if f.payload and f.payload.get("flagged")}
            urgent = next((tuple(f.payload["labels"]) for f in findings
                           if f.name == "urgent"), ())
            out.append((p, np.array([label in fired for label in LABELS]), urgent))
        agree = float(np.mean([(o[1] == c["labels"]).mean()
                               for o, c in zip(out, cases, strict=True)]))
        return out, {"flag_agreement_with_truth": round(agree, 4)}

    return _timed_run(device, runtime,
                      lambda: runtime.predictor(_tag(bundle), lambda: load_model(bundle)),
                      lambda p: p.predict(cases[0]["x"][:1]), work)


def chest_compare(ref: Run, other: Run, bundle: Bundle) -> dict[str, Any]:
    from qcd.analyzers.chest.labels import LABELS

    thresholds = np.array([float(bundle.spec["thresholds"][label]) for label in LABELS])
    pairs = list(zip(ref.outputs, other.outputs, strict=True))
    gap = max(float(np.abs(a[0] - b[0]).max()) for a, b in pairs)
    flags = sum(int((a[1] != b[1]).sum()) for a, b in pairs)
    per_label = {label: int(sum(a[1][i] != b[1][i] for a, b in pairs))
                 for i, label in enumerate(LABELS)}
    urgent = sum(a[2] != b[2] for a, b in pairs)
    margin = min(float(np.abs(a[0] - thresholds).min()) for a, _ in pairs)
    return {"max_probability_gap": gap,
            "differing": {"flags": flags, "urgent": urgent},
            "flags_differing_per_label": {k: v for k, v in per_label.items() if v},
            "images_differing": sum(bool((a[1] != b[1]).any()) or a[2] != b[2] for a, b in pairs),
            "closest_reference_margin_to_threshold": margin,
            "within_tolerance": gap <= TOL_PROB and flags == 0 and urgent == 0}


# --------------------------------------------------------------------------------- atrium
def atrium_inputs(n: int, bundle: Bundle, sim_device: torch.device) -> list[dict[str, Any]]:
    """``n`` volumes at the demo size (64 x 128 x 128); preprocessing runs inside ``segment``."""
    from training.atrium.demo import DEMO_CONFIG
    from training.atrium.simulate import simulate_case

    cases = []
    for i in range(n):
        case = simulate_case(ATRIUM_SEED + i, sim_device, DEMO_CONFIG)
        cases.append({"volume": case.image.float().cpu().numpy(), "spacing": case.spacing,
                      "label": case.label.cpu().numpy(), "height_m": case.params["height_m"],
                      "weight_kg": case.params["weight_kg"]})
    return cases


def atrium_run(device: str, runtime: LocalRuntime, bundle: Bundle,
               cases: list[dict[str, Any]]) -> Run:
    from qcd.analyzers.atrium.analyzer import load_model, postprocess_settings
    from qcd.analyzers.atrium.postprocess import segment
    from qcd.analyzers.atrium.preprocess import CONTEXT, prepare
    from qcd.analyzers.atrium.volume import body_size, lavi_band, mask_volume_ml

    context = int(bundle.spec["input"].get("context", CONTEXT))
    post = postprocess_settings(bundle.spec)
    model_s = [0.0]

    def work(predictor: Any) -> tuple[list[Any], dict[str, Any]]:
        def predict(x: torch.Tensor) -> torch.Tensor:  # as AtriumAnalyzer.analyze
            t = time.perf_counter()
            y = torch.as_tensor(predictor.predict(x))
            model_s[0] += time.perf_counter() - t
            return y

        out, dice = [], []
        for c in cases:
            prob, mask = segment(predict, c["volume"], c["spacing"], context, post)
            ml = mask_volume_ml(mask, c["spacing"])
            bsa = body_size(c["height_m"], c["weight_kg"]).bsa_m2
            band = lavi_band(ml / bsa) if bsa is not None and mask.any() else None
            out.append((prob, mask, ml, band))
            dice.append(_dice(mask, c["label"]))
        return out, {"model_s": round(model_s[0], 3),
                     "dice_vs_truth_mean": round(float(np.mean(dice)), 4)}

    def warm(predictor: Any) -> None:
        predictor.predict(prepare(cases[0]["volume"], cases[0]["spacing"], context).x[:1])

    return _timed_run(device, runtime,
                      lambda: runtime.predictor(_tag(bundle), lambda: load_model(bundle)),
                      warm, work)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = float(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(a, b).sum()) / total


def atrium_compare(ref: Run, other: Run) -> dict[str, Any]:
    pairs = list(zip(ref.outputs, other.outputs, strict=True))
    gap = max(float(np.abs(a[0] - b[0]).max()) for a, b in pairs)
    dice = [_dice(a[1], b[1]) for a, b in pairs]
    volume_pct = max(100.0 * abs(a[2] - b[2]) / a[2] if a[2] > 0 else
                     (0.0 if b[2] == 0 else math.inf) for a, b in pairs)
    voxels = sum(int((a[1] != b[1]).sum()) for a, b in pairs)
    bands = sum(a[3] != b[3] for a, b in pairs)
    return {"max_probability_gap": gap, "dice_min": min(dice), "dice_mean": float(np.mean(dice)),
            "max_volume_difference_pct": volume_pct, "mask_voxels_differing": voxels,
            "differing": {"lavi_band": bands},
            "volumes_ml_reference": [round(a[2], 2) for a, _ in pairs],
            "within_tolerance": (min(dice) >= TOL_DICE and volume_pct <= TOL_VOLUME_PCT
                                 and bands == 0)}


# ----------------------------------------------------------------------------------- main
ANALYZERS: dict[str, tuple[Callable[..., Any], Callable[..., Run], Callable[..., Any]]] = {
    "motion": (motion_inputs, motion_run, lambda r, o, b: motion_compare(r, o)),
    "chest": (chest_inputs, chest_run, chest_compare),
    "atrium": (atrium_inputs, atrium_run, lambda r, o, b: atrium_compare(r, o)),
}


def _table(report: dict[str, Any]) -> str:
    rows = [("analyzer", "n", "ref->dev", "max gap", "decisions differing", "dice min/mean",
             "vol %", "ref s", "dev s", "verdict")]
    for name, a in report["analyzers"].items():
        for c in a["comparisons"]:
            ref, dev = a["runs"][c["reference"]], a["runs"][c["device"]]
            rows.append((
                name, str(a["n"]), f"{c['reference']}->{c['device']}",
                f"{c['max_probability_gap']:.2e}",
                ", ".join(f"{k} {v}" for k, v in c["differing"].items()),
                f"{c['dice_min']:.4f}/{c['dice_mean']:.4f}" if "dice_min" in c else "-",
                f"{c['max_volume_difference_pct']:.3f}" if "dice_min" in c else "-",
                f"{ref['infer_s']:.2f}", f"{dev['infer_s']:.2f}",
                "PASS" if c["within_tolerance"] else "FAIL"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--analyzers", default="motion,chest,atrium")
    p.add_argument("--n-motion", type=int, default=60, help="scans (grades balanced)")
    p.add_argument("--n-chest", type=int, default=400, help="radiographs")
    p.add_argument("--n-atrium", type=int, default=4, help="volumes of 64 x 128 x 128")
    p.add_argument("--devices", default="cpu,cuda", help="first = reference")
    p.add_argument("--sim-device", default="auto", help="where to simulate inputs (auto: cuda "
                   "if available); inputs go to the CPU before preprocessing")
    args = p.parse_args()
    names = [a.strip() for a in args.analyzers.split(",") if a.strip()]
    unknown = [a for a in names if a not in ANALYZERS]
    if unknown or not names:
        p.error(f"unknown analyzer(s) {unknown}; allowed: {', '.join(ANALYZERS)}")
    devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    if len(devices) < 2:
        p.error("--devices needs at least two devices (the first is the reference)")
    try:  # fail fast, before any simulation: a bad name, or CUDA missing
        for d in devices:
            select_device(d)
        sim_device = select_device(args.sim_device)
    except (ValueError, InferenceError) as exc:
        p.error(str(exc))
    counts = {"motion": args.n_motion, "chest": args.n_chest, "atrium": args.n_atrium}
    if any(counts[a] < 1 for a in names):
        p.error("every --n-* of a selected analyzer must be >= 1")
    bundles = {a: load_bundle(MODELS, a) for a in names}

    started = time.perf_counter()
    report: dict[str, Any] = {
        "torch": torch.__version__, "devices": devices, "sim_device": str(sim_device),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_threads": torch.get_num_threads(),
        "path": "LocalRuntime/BatchingPredictor, InferenceSettings(amp=True) defaults, TF32 off",
        "tolerance": {"probability_gap": TOL_PROB, "decisions_differing": 0,
                      "atrium_dice_min": TOL_DICE, "atrium_volume_pct": TOL_VOLUME_PCT},
        "analyzers": {}}
    inputs: dict[str, list[Any]] = {}
    for a in names:
        t = time.perf_counter()
        inputs[a] = ANALYZERS[a][0](counts[a], bundles[a], sim_device)
        report["analyzers"][a] = {
            "n": counts[a], "bundle": f"{bundles[a].name}/{bundles[a].version}",
            "inputs_s": round(time.perf_counter() - t, 3), "runs": {}, "comparisons": []}
        print(f"{a}: {counts[a]} inputs in {time.perf_counter() - t:.1f} s", flush=True)

    runs: dict[str, list[Run]] = {a: [] for a in names}
    labels = [d if devices.index(d) == i else f"{d}#{i}" for i, d in enumerate(devices)]
    for label, device in zip(labels, devices, strict=True):
        runtime = LocalRuntime(InferenceSettings(device=device, amp=True))
        try:
            for a in names:
                run = ANALYZERS[a][1](device, runtime, bundles[a], inputs[a])
                runs[a].append(run)
                report["analyzers"][a]["runs"][label] = {
                    "device": str(runtime.device), "load_s": run.load_s,
                    "warmup_s": run.warmup_s, "infer_s": run.infer_s, **run.extra}
                print(f"{a} on {label}: load {run.load_s:.2f} s, warm-up {run.warmup_s:.2f} s, "
                      f"inference {run.infer_s:.2f} s", flush=True)
        finally:
            runtime.close()

    for a in names:
        ref = runs[a][0]
        for label, other in zip(labels[1:], runs[a][1:], strict=True):
            c = ANALYZERS[a][2](ref, other, bundles[a])
            report["analyzers"][a]["comparisons"].append(
                {"reference": labels[0], "device": label, **c})
    report["within_tolerance"] = all(c["within_tolerance"] for a in report["analyzers"].values()
                                     for c in a["comparisons"])
    report["seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(_table(report))
    print(f"{'all within tolerance' if report['within_tolerance'] else 'OUTSIDE TOLERANCE'}; "
          f"{report['seconds']} s; wrote {args.out}", flush=True)
    return 0 if report["within_tolerance"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
