"""Train the HR-pQCT motion grading CNN on physically simulated scans and write the bundle.

    python -m training.motion.train --out DIR --seed S [--device auto|cpu|cuda]
        [--config full|small] [--train-scans N] [--val-scans N] [--test-scans N] [--epochs E]
        [--width W] [--slices N] [--variants plain,head] [--reuse-calibration MODEL_JSON]
    python -m training.motion.train --real-labels grades.csv --out DIR [--epochs E]

``full`` (GPU): 384 x 384 slices at 61 um, 480 views, scans of 8 slices; the defaults
are 1400 training, 250 validation (they choose the rescan probability threshold and,
with several ``--variants``, the shipped variant) and 400 held-out scans, 20 epochs.
The shipped bundle: 2400 / 1000 / 800 scans, width 32, two variants, 362 s on one H100
(177 s of it simulation; see its card for the command). ``small`` (CPU trial):
192 x 192 at 122 um, 240 views, few scans; the model input is the same
(192 x 192 at 122 um), only the simulation is coarser.

Scans come from :func:`training.motion.simulate.simulate_scan` with grades drawn
uniformly (balanced classes) and the motion magnitude log-uniform inside the grade's
band; slices are preprocessed by the daemon's own :func:`prepare_slices`. The held-out
set uses another seed. Metrics: quadratically weighted kappa against the true grade,
rescan (grade >= 4) sensitivity and specificity, review rate, and the Spearman
correlation of the streak index with the motion magnitude.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from qcd.analyzers.motion.decision import Thresholds, decide
from qcd.analyzers.motion.model import (
    N_ORDINAL,
    MotionNet,
    cumulative_targets,
    log_motion_target,
    scan_cumulative,
    scan_motion_um,
)
from qcd.analyzers.motion.preprocess import (
    INPUT_SIZE,
    MODEL_PIXEL_MM,
    N_SLICES,
    PREPROCESSING_VERSION,
    prepare_slices,
)
from qcd.analyzers.motion.quant import streak_index
from qcd.hashing import sha256_file
from training.motion.simulate import (
    FULL,
    GRADE_EDGES_UM,
    SMALL,
    Geometry,
    calibrate,
    grade_from_motion,
    sample_motion_for_grade,
    simulate_scan,
)

LOGGER = logging.getLogger("training.motion")
VERSION = "1.0.0"
CONFIGS: dict[str, dict[str, Any]] = {
    "full": {"geometry": FULL, "train_scans": 1400, "val_scans": 250, "test_scans": 400,
             "epochs": 20, "calibration_seeds": 4},
    "small": {"geometry": SMALL, "train_scans": 100, "val_scans": 30, "test_scans": 40,
              "epochs": 5, "calibration_seeds": 1},
}
TARGETS = {"kappa": 0.85, "rescan_sensitivity": 0.95, "rescan_specificity": 0.90}
TARGET_SENSITIVITY = 0.96
"""Rescan sensitivity asked of the threshold on validation scans (see choose_rescan_probability)."""


@dataclass
class ScanSet:
    x: torch.Tensor  # (scans, slices, 1, S, S) float16
    grade: np.ndarray
    motion_um: np.ndarray
    kind: list[str]


def simulate_set(n: int, seed: int, g: Geometry, device: torch.device, what: str,
                 slices: int = N_SLICES) -> ScanSet:
    """``n`` scans of ``slices`` slices with balanced grades, preprocessed; progress on stdout."""
    rng = np.random.default_rng(seed)
    xs, grades, motion, kinds = [], [], [], []
    t0 = time.time()
    for i in range(n):
        target_grade = 1 + (i % 5)  # exactly balanced
        m = sample_motion_for_grade(rng, target_grade)
        scan = simulate_scan(seed * 100_003 + i, m, g, slices, device)
        xs.append(prepare_slices(scan.recon, g.pixel_mm).half())
        grades.append(scan.grade)
        motion.append(scan.motion_um)
        kinds.append(scan.kind)
        if (i + 1) % max(1, n // 10) == 0:
            print(f"  {what}: simulated {i + 1}/{n} scans ({time.time() - t0:.0f} s)",
                  flush=True)
    if not xs:
        empty = torch.zeros(0, slices, 1, INPUT_SIZE, INPUT_SIZE, dtype=torch.float16)
        return ScanSet(empty, np.zeros(0, dtype=int), np.zeros(0), [])
    return ScanSet(torch.stack(xs), np.array(grades), np.array(motion), kinds)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random flips and quarter turns: streak direction and bone orientation are arbitrary."""
    if torch.rand(1, generator=gen).item() < 0.5:
        x = x.flip(-1)
    if torch.rand(1, generator=gen).item() < 0.5:
        x = x.flip(-2)
    k = int(torch.randint(0, 4, (1,), generator=gen).item())
    return torch.rot90(x, k, dims=(-2, -1)) if k else x


VARIANTS: dict[str, bool] = {"plain": False, "head": True}
"""Variant name -> whether the net has the log-motion regression head."""
MOTION_LOSS_WEIGHT = 0.5


def fit(train: ScanSet, epochs: int, device: torch.device, seed: int, batch: int = 96,
        width: int = 16, motion_head: bool = False) -> MotionNet:
    """Ordinal BCE on the grade; with ``motion_head`` also a smooth-L1 loss (weight
    ``MOTION_LOSS_WEIGHT``) on log motion, where the simulation knows the magnitude."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x = train.x.reshape(-1, 1, INPUT_SIZE, INPUT_SIZE)
    y = torch.from_numpy(np.repeat(train.grade, train.x.shape[1])).to(x.device)
    m = torch.from_numpy(np.repeat(train.motion_um, train.x.shape[1])).to(x.device)
    net = MotionNet(width, motion_head).to(device).train()
    steps = epochs * math.ceil(len(x) / batch)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    loss_fn = nn.BCEWithLogitsLoss()
    motion_loss = nn.SmoothL1Loss(beta=0.25)
    t0 = time.time()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for start in range(0, len(x), batch):
            idx = order[start:start + batch].to(x.device)
            xb = augment(x[idx].to(device).float(), gen)
            yb = cumulative_targets(y[idx].to(device))
            opt.zero_grad()
            out = net(xb)
            loss = loss_fn(out[:, :N_ORDINAL], yb)
            if motion_head:
                mb = m[idx].to(device)
                known = torch.isfinite(mb)  # real scans have no magnitude
                if known.any():
                    loss = loss + MOTION_LOSS_WEIGHT * motion_loss(
                        out[known, N_ORDINAL], log_motion_target(mb[known]))
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(f"  epoch {epoch + 1}/{epochs} loss {total / len(x):.4f} "
              f"({time.time() - t0:.0f} s)", flush=True)
    recalibrate_batchnorm(net, x, device, gen)
    return net.eval()


@torch.no_grad()
def recalibrate_batchnorm(net: nn.Module, x: torch.Tensor, device: torch.device,
                          gen: torch.Generator, n: int = 1536, batch: int = 128) -> None:
    """Re-estimate BatchNorm running statistics with the final weights (cumulative mean
    over ``n`` training slices). With few optimiser steps at a high learning rate the
    running averages lag the weights and eval-mode outputs collapse to one grade."""
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    net.train()
    idx = torch.randperm(len(x), generator=gen)[:n].to(x.device)
    for start in range(0, len(idx), batch):
        net(x[idx[start:start + batch]].to(device).float())
    for m in bns:
        m.momentum = 0.1
    net.eval()


def quadratic_kappa(truth: np.ndarray, pred: np.ndarray, k: int = 5) -> float:
    """Cohen's kappa with quadratic weights for grades 1..k."""
    o = np.zeros((k, k))
    for t, p in zip(truth, pred, strict=True):
        o[t - 1, p - 1] += 1
    w = np.array([[(i - j) ** 2 for j in range(k)] for i in range(k)]) / (k - 1) ** 2
    e = np.outer(o.sum(1), o.sum(0)) / max(o.sum(), 1)
    denom = (w * e).sum()
    return float(1 - (w * o).sum() / denom) if denom > 0 else 1.0


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    return float(np.corrcoef(ra, rb)[0, 1]) if len(a) > 2 else float("nan")


@torch.inference_mode()
def predict_scans(net: MotionNet, x: torch.Tensor, device: torch.device
                  ) -> tuple[torch.Tensor, np.ndarray]:
    """(scans, slices, 1, S, S) -> (scans, 4) scan-level cumulative probabilities and
    (scans,) motion estimates in um (NaN without a motion head)."""
    net = net.to(device).eval()
    cum, motion = [], []
    for scan in x:
        out = net(scan.to(device).float()).cpu()
        cum.append(scan_cumulative(out))
        um = scan_motion_um(out)
        motion.append(np.nan if um is None else um)
    if not cum:
        return torch.zeros(0, N_ORDINAL), np.zeros(0)
    return torch.stack(cum), np.array(motion)


def predict_cumulative(net: MotionNet, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(scans, slices, 1, S, S) -> (scans, 4) scan-level cumulative probabilities."""
    return predict_scans(net, x, device)[0]


def choose_rescan_probability(net: MotionNet, val: ScanSet, device: torch.device,
                              target_sensitivity: float = TARGET_SENSITIVITY) -> float:
    """The largest P(grade >= 4) threshold (<= 0.5, steps of 0.01) reaching
    ``target_sensitivity`` on validation scans (never the held-out ones), floored at 0.1.

    The largest such threshold buys the most specificity for the sensitivity asked for;
    the target sits a little above the issue's 95 % so that the held-out rate, which
    varies by a percent or two between scan sets, still clears it."""
    t = Thresholds()
    p = predict_cumulative(net, val.x, device)[:, t.rescan_grade - 2].numpy()
    positive = val.grade >= t.rescan_grade
    if not positive.any():
        return 0.5
    for tau in np.round(np.arange(0.5, 0.095, -0.01), 2):
        if (p[positive] >= tau).mean() >= target_sensitivity:
            return float(tau)
    return 0.1


def evaluate(net: MotionNet, test: ScanSet, device: torch.device,
             t: Thresholds = Thresholds()) -> dict[str, Any]:
    """Scan-level metrics with the daemon's decision rule."""
    cum, motion_est = predict_scans(net, test.x, device)
    decisions = [decide(c, t) for c in cum]
    pred = np.array([d.grade for d in decisions])
    truth = test.grade
    rescan_true = truth >= t.rescan_grade
    rescan_pred = np.array([d.rescan for d in decisions])
    review = np.array([d.review for d in decisions])
    confusion = {str(g): {str(p): int(((truth == g) & (pred == p)).sum()) for p in range(1, 6)}
                 for g in range(1, 6)}
    estimate = np.array([streak_index(s.float()) for s in test.x])
    ok = np.isfinite(estimate) & np.isfinite(test.motion_um)

    def rate(mask: np.ndarray, of: np.ndarray) -> float | None:
        return float(mask[of].mean()) if of.any() else None

    head = np.isfinite(motion_est) & np.isfinite(test.motion_um)
    if head.sum() > 2:
        floor = 8.0
        log_err = np.abs(np.log(np.maximum(motion_est[head], floor))
                         - np.log(np.maximum(test.motion_um[head], floor)))
        magnitude: dict[str, Any] | None = {
            "spearman_vs_motion": _spearman(motion_est[head], test.motion_um[head]),
            "median_factor": float(np.exp(np.median(log_err))),
            "p90_factor": float(np.exp(np.quantile(log_err, 0.9))),
            "grade_from_estimate_accuracy": float(
                (grade_from_motion(motion_est[head]) == truth[head]).mean())}
    else:
        magnitude = None
    return {
        "n_scans": int(len(truth)),
        "grade_counts": {str(g): int((truth == g).sum()) for g in range(1, 6)},
        "kappa_quadratic": quadratic_kappa(truth, pred),
        "accuracy": float((pred == truth).mean()),
        "within_one": float((np.abs(pred - truth) <= 1).mean()),
        "rescan_sensitivity": rate(rescan_pred, rescan_true),
        "rescan_specificity": rate(~rescan_pred, ~rescan_true),
        "review_rate": float(review.mean()),
        "accuracy_not_review": rate(pred == truth, ~review),
        "rescan_errors_flagged_review": rate(review, rescan_pred != rescan_true),
        "confusion": confusion,
        "streak_index_spearman_vs_motion": (_spearman(estimate[ok], test.motion_um[ok])
                                            if ok.sum() > 2 else None),
        "streak_index_median_per_grade": {
            str(g): float(np.median(estimate[ok & (truth == g)]))
            for g in range(1, 6) if (ok & (truth == g)).any()},
        "motion_head": magnitude,
    }


def save_bundle(out: Path, net: MotionNet, width: int, g: Geometry, training: dict[str, Any],
                metrics: dict[str, Any], calibration: dict[str, Any] | None,
                thresholds: Thresholds, slices: int = N_SLICES) -> dict[str, Any]:
    from training.motion.card import model_card

    out.mkdir(parents=True, exist_ok=True)
    weights = out / "weights.pt"
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, weights)
    spec = {
        "name": "motion", "version": VERSION,
        "architecture": "motionnet-ordinal" + ("+motion" if net.motion_head else ""),
        "weights": weights.name, "sha256": sha256_file(weights),
        "labels": ["1", "2", "3", "4", "5"],
        "input": {"shape": [1, INPUT_SIZE, INPUT_SIZE], "pixel_mm": MODEL_PIXEL_MM,
                  "slices": slices, "width": width, "motion_head": net.motion_head,
                  "normalisation": "percentile 0.5-99.8"},
        "preprocessing": PREPROCESSING_VERSION,
        "output": "4 logits of P(grade > k), k = 1..4 (ordinal); scan = mean over slices"
                  + ("; 5th: log(max(M, 8 um) / 100 um)" if net.motion_head else ""),
        "thresholds": vars(thresholds),
        "grade_edges_um": list(GRADE_EDGES_UM),
        "simulation": {"size_px": g.size, "pixel_mm": g.pixel_mm, "views": g.views},
        "training": training,
        "metrics": metrics,
        "targets": TARGETS,
    }
    if calibration is not None:
        spec["calibration"] = calibration
    (out / "model.json").write_text(json.dumps(spec, indent=2) + "\n")
    (out / "MODEL_CARD.md").write_text(model_card(spec))
    return spec


def train_real(args: argparse.Namespace, device: torch.device, device_name: str) -> int:
    """Site retraining: scans of a grade table (training.motion.real), split by patient."""
    from training.motion import real

    started = time.time()
    rows = real.read_grade_table(args.real_labels)
    x, grades, groups = real.load_scans(rows, args.slices)
    train_idx, test_idx = real.split_by_group(groups, 0.2, args.seed)
    unknown = np.full(len(rows), np.nan)

    def subset(idx: list[int]) -> ScanSet:
        return ScanSet(x[idx], grades[idx], unknown[idx], ["real"] * len(idx))

    train, test = subset(train_idx), subset(test_idx)
    print(f"real scans: {len(train_idx)} training, {len(test_idx)} held-out (by patient)",
          flush=True)
    net = fit(train, args.epochs or 20, device, args.seed, width=args.width)
    metrics = evaluate(net, test, device)
    training = {"seed": args.seed, "epochs": args.epochs or 20, "n_train_scans": len(train_idx),
                "n_test_scans": len(test_idx), "held_out_seed": "patient split",
                "data": {"kind": "real HR-pQCT", "label_table": args.real_labels.name,
                         "n_patients": len(set(groups)),
                         "grade_counts": {str(g): int((grades == g).sum()) for g in range(1, 6)}},
                "trained_on": device_name, "seconds": round(time.time() - started, 1),
                "date": dt.date.today().isoformat(),
                "command": f"python -m training.motion.train --real-labels "
                           f"{args.real_labels.name} --seed {args.seed}"}
    save_bundle(args.out, net.cpu(), args.width, FULL, training,
                {"held_out_simulated": metrics, "held_out_is_real": True}, None, Thresholds(),
                args.slices)
    print(f"wrote {args.out}; held-out real: kappa {metrics['kappa_quadratic']:.3f}", flush=True)
    return 0


def train_variant(name: str, train: ScanSet, val: ScanSet, test: ScanSet, epochs: int,
                  device: torch.device, args: argparse.Namespace
                  ) -> tuple[MotionNet, Thresholds, dict[str, Any]]:
    """Fit one variant, choose its rescan threshold on validation, measure it on both sets."""
    t0 = time.time()
    net = fit(train, epochs, device, args.seed, width=args.width, motion_head=VARIANTS[name])
    tau = choose_rescan_probability(net, val, device, args.target_sensitivity)
    thresholds = Thresholds(rescan_probability=tau, borderline_low=min(0.3, tau))
    validation = evaluate(net, val, device, thresholds)
    metrics = evaluate(net, test, device, thresholds)
    metrics["default_rule"] = {k: v for k, v in evaluate(net, test, device).items()
                               if k in ("kappa_quadratic", "rescan_sensitivity",
                                        "rescan_specificity", "review_rate")}
    summary = {"variant": name, "motion_head": VARIANTS[name], "rescan_probability": tau,
               "fit_seconds": round(time.time() - t0, 1),
               "validation": {k: validation[k] for k in SELECTION_KEYS},
               "held_out": {k: metrics[k] for k in SELECTION_KEYS}}
    print(f"variant {name}: " + json.dumps(summary), flush=True)
    return net, thresholds, {"metrics": metrics, "summary": summary}


SELECTION_KEYS = ("rescan_specificity", "rescan_sensitivity", "kappa_quadratic")
"""Validation metrics that choose between variants, in order (held-out ones never do)."""


def selection_score(summary: dict[str, Any]) -> tuple[float, ...]:
    v = summary["validation"]
    return tuple(float(v[k] or 0.0) for k in SELECTION_KEYS)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("models/motion") / VERSION)
    p.add_argument("--seed", type=int, default=20261126)
    p.add_argument("--device", default="auto")
    p.add_argument("--config", choices=sorted(CONFIGS), default="full")
    p.add_argument("--train-scans", type=int)
    p.add_argument("--val-scans", type=int, help="scans that choose the rescan threshold")
    p.add_argument("--test-scans", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--slices", type=int, default=N_SLICES, help="slices per scan")
    p.add_argument("--variants", default="plain",
                   help="comma-separated of " + ", ".join(VARIANTS) + "; with several, each is "
                        "trained on the same scans and validation chooses the shipped one")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--target-sensitivity", type=float, default=TARGET_SENSITIVITY,
                   help="rescan sensitivity the threshold must reach on validation scans")
    p.add_argument("--no-calibration", action="store_true")
    p.add_argument("--reuse-calibration", type=Path, metavar="MODEL_JSON",
                   help="copy the SSIM calibration of an earlier bundle made with the same "
                        "simulation geometry instead of measuring it again")
    p.add_argument("--real-labels", type=Path, metavar="CSV",
                   help="retrain on real scans of a grade table (see training/motion/real.py)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not variants or any(v not in VARIANTS for v in variants):
        p.error(f"--variants must name some of {sorted(VARIANTS)}")
    cfg = dict(CONFIGS[args.config])
    for key in ("train_scans", "val_scans", "test_scans", "epochs"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    device_name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    if args.real_labels is not None:
        return train_real(args, device, device_name)
    g: Geometry = cfg["geometry"]
    started = time.time()
    print(f"motion training: config {args.config} on {device_name}, {cfg}, "
          f"width {args.width}, {args.slices} slices, variants {variants}", flush=True)
    train = simulate_set(cfg["train_scans"], args.seed, g, device, "train", args.slices)
    val = simulate_set(cfg["val_scans"], args.seed + 3_333_333, g, device, "validation",
                       args.slices)
    test = simulate_set(cfg["test_scans"], args.seed + 7_777_777, g, device, "held-out",
                        args.slices)
    simulated = time.time() - started
    print(f"simulated in {simulated:.0f} s; train grades "
          f"{np.bincount(train.grade, minlength=6)[1:].tolist()}", flush=True)
    results = [train_variant(v, train, val, test, cfg["epochs"], device, args) for v in variants]
    net, thresholds, chosen = max(results, key=lambda r: selection_score(r[2]["summary"]))
    metrics = chosen["metrics"]
    net = net.cpu()
    print(f"chosen on validation: {chosen['summary']['variant']}; held-out: "
          + json.dumps({k: v for k, v in metrics.items() if k != "confusion"}), flush=True)
    calibration = None
    if args.reuse_calibration is not None:
        earlier = json.loads(args.reuse_calibration.read_text())
        if earlier.get("simulation") != {"size_px": g.size, "pixel_mm": g.pixel_mm,
                                         "views": g.views}:
            p.error(f"{args.reuse_calibration} was simulated with another geometry")
        calibration = earlier.get("calibration")
    elif not args.no_calibration:
        t0 = time.time()
        calibration = calibrate(g, cfg["calibration_seeds"], device)
        calibration["seconds"] = round(time.time() - t0, 1)
        print("calibration: " + json.dumps(calibration["ssim_median_per_grade"]), flush=True)
    command = (f"python -m training.motion.train --config {args.config} --seed {args.seed} "
               f"--train-scans {cfg['train_scans']} --val-scans {cfg['val_scans']} "
               f"--test-scans {cfg['test_scans']} --width {args.width} --slices {args.slices} "
               f"--variants {','.join(variants)} "
               f"--target-sensitivity {args.target_sensitivity} --epochs {cfg['epochs']} "
               f"--out {args.out}")
    training = {"seed": args.seed, "config": args.config, "epochs": cfg["epochs"],
                "n_train_scans": cfg["train_scans"], "n_val_scans": cfg["val_scans"],
                "n_test_scans": cfg["test_scans"], "val_seed": args.seed + 3_333_333,
                "target_sensitivity_on_validation": args.target_sensitivity,
                "slices_per_scan": args.slices, "held_out_seed": args.seed + 7_777_777,
                "variants": [r[2]["summary"] for r in results],
                "chosen_variant": chosen["summary"]["variant"],
                "simulation_seconds": round(simulated, 1),
                "data": "physically simulated HR-pQCT, see MODEL_CARD.md",
                "trained_on": device_name, "seconds": round(time.time() - started, 1),
                "date": dt.date.today().isoformat(), "command": command}
    save_bundle(args.out, net, args.width, g, training, {"held_out_simulated": metrics},
                calibration, thresholds, args.slices)
    print(f"wrote {args.out} in {time.time() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
