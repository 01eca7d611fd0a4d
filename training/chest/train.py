"""Train the chest multi-label CNN on simulated radiographs and write the model bundle.

    python -m training.chest.train --out DIR --seed S [--device auto|cpu|cuda]
        [--preset full|small] [--steps N] [--batch N] [--sim-size PX] [--input-size PX]
        [--width W] [--n-val N] [--n-test N] [--floor P]

Every training step renders a fresh batch on the training device
(``training.chest.simulate``: an analytic thorax projected with Beer-Lambert
attenuation, scatter and quantum noise; findings drawn with the NIH frequencies,
rare labels raised to ``--floor``), so the model never sees the same image twice.
Images pass through the daemon's own :func:`qcd.analyzers.chest.preprocess.prepare_batch`.
A validation set (seed + 1) picks each label's operating threshold (Youden's J; for
urgent labels the highest threshold with sensitivity >= 0.90 if Youden's is less
sensitive); a held-out test set (seed + 2) gives per-label AUC and the sensitivity and
specificity at those thresholds. Presets: ``full`` (GPU: 320 px simulation, 256 px
input, width 32) and ``small`` (CPU smoke bundle: 160 px, 128 px, width 16).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from qcd.analyzers.chest.labels import LABELS, NIH_PREVALENCE, URGENT
from qcd.analyzers.chest.model import ChestNet
from qcd.analyzers.chest.preprocess import PERCENTILES, PREPROCESSING_VERSION, prepare_batch
from qcd.hashing import sha256_file
from training.chest.simulate import make_batch

LOGGER = logging.getLogger("training.chest")
VERSION = "1.0.0"
URGENT_SENSITIVITY = 0.90
TARGET_MEAN_AUC, TARGET_LABEL_AUC = 0.95, 0.85
PRESETS: dict[str, dict[str, Any]] = {
    "full": {"steps": 1500, "batch": 128, "sim_size": 320, "input_size": 256, "width": 32,
             "n_val": 3000, "n_test": 6000, "lr": 2e-3},
    "small": {"steps": 220, "batch": 32, "sim_size": 160, "input_size": 128, "width": 16,
              "n_val": 480, "n_test": 800, "lr": 3e-3},
}


def auc(scores: np.ndarray, truth: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half); NaN without both classes."""
    pos, neg = truth > 0.5, truth <= 0.5
    if not pos.any() or not neg.any():
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    n_pos, n_neg = pos.sum(), neg.sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def choose_threshold(scores: np.ndarray, truth: np.ndarray, urgent: bool) -> float:
    """Youden's J on the validation set; urgent labels keep sensitivity >= 0.90."""
    pos = truth > 0.5
    if not pos.any() or pos.all():
        return 0.5
    cands = np.unique(scores)
    sens = np.array([(scores[pos] >= t).mean() for t in cands])
    spec = np.array([(scores[~pos] < t).mean() for t in cands])
    best = int(np.argmax(sens + spec - 1))
    if urgent and sens[best] < URGENT_SENSITIVITY:
        ok = np.nonzero(sens >= URGENT_SENSITIVITY)[0]
        best = int(ok[-1]) if len(ok) else 0
    return float(cands[best])


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def simulate_inputs(n: int, seed: int, cfg: dict[str, Any], device: torch.device,
                    floor: float, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` simulated cases as model inputs (CPU float16) and labels (CPU float)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    xs, ys = [], []
    for start in range(0, n, chunk):
        b = make_batch(min(chunk, n - start), gen, floor,
                       (cfg["sim_size"], cfg["sim_size"]), device)
        xs.append(prepare_batch(b.display, cfg["input_size"]).half().cpu())
        ys.append(b.labels.cpu())
    return torch.cat(xs), torch.cat(ys)


@torch.inference_mode()
def predict(model: ChestNet, x: torch.Tensor, device: torch.device,
            chunk: int = 256) -> np.ndarray:
    """Sigmoid probabilities (n, 16) for CPU inputs."""
    model.eval()
    out = []
    for start in range(0, len(x), chunk):
        xb = x[start:start + chunk].to(device).float()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out.append(torch.sigmoid(model(xb).float()).cpu())
    return torch.cat(out).numpy()


def evaluate(probs: np.ndarray, truth: np.ndarray,
             thresholds: dict[str, float]) -> dict[str, Any]:
    """Per-label AUC, prevalence, and sensitivity/specificity at the operating thresholds."""
    per: dict[str, Any] = {}
    for i, label in enumerate(LABELS):
        t = thresholds[label]
        pos = truth[:, i] > 0.5
        fired = probs[:, i] >= t
        per[label] = {"auc": round(auc(probs[:, i], truth[:, i]), 4),
                      "positives": int(pos.sum()),
                      "sensitivity": round(float(fired[pos].mean()) if pos.any() else math.nan, 4),
                      "specificity": round(float((~fired[~pos]).mean()) if (~pos).any()
                                           else math.nan, 4)}
    aucs = [v["auc"] for v in per.values()]
    normal_truth = truth.sum(1) == 0
    normal_pred = np.all(probs < np.array([thresholds[label] for label in LABELS]), axis=1)
    return {"n_cases": int(len(truth)), "mean_auc": round(float(np.nanmean(aucs)), 4),
            "min_auc": round(float(np.nanmin(aucs)), 4), "per_label": per,
            "normal_agreement": round(float((normal_truth == normal_pred).mean()), 4),
            "targets": {"mean_auc": TARGET_MEAN_AUC, "per_label_auc": TARGET_LABEL_AUC},
            "targets_met": bool(np.nanmean(aucs) >= TARGET_MEAN_AUC
                                and np.nanmin(aucs) >= TARGET_LABEL_AUC)}


def train(cfg: dict[str, Any], seed: int, device: torch.device, floor: float) -> ChestNet:
    torch.manual_seed(seed)
    model = ChestNet(len(LABELS), width=cfg["width"]).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg["lr"], total_steps=cfg["steps"],
                                                pct_start=0.15)
    gen = torch.Generator(device=device).manual_seed(seed * 7919 + 11)
    shape = (cfg["sim_size"], cfg["sim_size"])
    portrait = (cfg["sim_size"], int(round(cfg["sim_size"] * 0.82)))
    started, running = time.time(), 0.0
    model.train()
    for step in range(cfg["steps"]):
        # a third of batches on a 35x43 cm (portrait) or 43x35 cm (landscape) detector,
        # so padding to a square is part of what the model learns to ignore
        kind = step % 6
        sim_shape = shape if kind < 4 else (portrait if kind == 4 else portrait[::-1])
        with torch.no_grad():
            b = make_batch(cfg["batch"], gen, floor, sim_shape, device)
            x = prepare_batch(b.display, cfg["input_size"])
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(x)
        loss = F.binary_cross_entropy_with_logits(logits.float(), b.labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
        if step % 50 == 0 or step == cfg["steps"] - 1:
            print(f"step {step + 1}/{cfg['steps']} loss {running:.4f} "
                  f"{time.time() - started:.0f} s", flush=True)
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("models/chest") / VERSION)
    p.add_argument("--seed", type=int, default=20261126)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--preset", choices=sorted(PRESETS), default="full")
    for key in ("steps", "batch", "sim_size", "input_size", "width", "n_val", "n_test"):
        p.add_argument(f"--{key.replace('_', '-')}", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--floor", type=float, default=0.04,
                   help="raise rare labels to this frequency in training/validation/test "
                        "(AUC does not depend on prevalence; 0 = the NIH frequencies)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = dict(PRESETS[args.preset])
    for key in cfg:
        if getattr(args, key, None) is not None:
            cfg[key] = getattr(args, key)
    device = _device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    started = time.time()
    print(f"chest training on {device}: {json.dumps(cfg)}", flush=True)
    model = train(cfg, args.seed, device, args.floor)
    train_s = time.time() - started
    xv, yv = simulate_inputs(cfg["n_val"], args.seed + 1, cfg, device, args.floor)
    pv = predict(model, xv, device)
    thresholds = {label: round(choose_threshold(pv[:, i], yv[:, i].numpy(), label in URGENT), 5)
                  for i, label in enumerate(LABELS)}
    xt, yt = simulate_inputs(cfg["n_test"], args.seed + 2, cfg, device, args.floor)
    metrics = evaluate(predict(model, xt, device), yt.numpy(), thresholds)
    print(json.dumps({k: metrics[k] for k in ("mean_auc", "min_auc", "targets_met")}),
          flush=True)
    print(json.dumps({k: v["auc"] for k, v in metrics["per_label"].items()}), flush=True)
    command = "python -m training.chest.train " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:]))
    write_bundle(args.out, model.cpu(), cfg, thresholds, metrics, {
        "seed": args.seed, "preset": args.preset, "floor": args.floor, **cfg,
        "images_seen": cfg["steps"] * cfg["batch"],
        "validation_seed": args.seed + 1, "test_seed": args.seed + 2,
        "trained_on": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "train_seconds": round(train_s, 1), "seconds": round(time.time() - started, 1),
        "date": dt.date.today().isoformat(), "torch": torch.__version__, "command": command,
        "threshold_rule": f"Youden's J on the validation set; urgent labels "
                          f"({', '.join(URGENT)}): sensitivity >= {URGENT_SENSITIVITY}"})
    print(f"wrote {args.out} in {time.time() - started:.0f} s", flush=True)
    return 0


def write_bundle(out: Path, model: ChestNet, cfg: dict[str, Any], thresholds: dict[str, float],
                 metrics: dict[str, Any], training: dict[str, Any]) -> dict[str, Any]:
    """weights.pt, model.json and MODEL_CARD.md (generated from model.json)."""
    from training.chest.card import model_card

    out.mkdir(parents=True, exist_ok=True)
    weights = out / "weights.pt"
    torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
               weights)
    spec = {
        "name": "chest", "version": VERSION, "architecture": "chestnet",
        "weights": weights.name, "sha256": sha256_file(weights),
        "labels": list(LABELS), "urgent": list(URGENT),
        "input": {"shape": [1, cfg["input_size"], cfg["input_size"]], "size": cfg["input_size"],
                  "width": cfg["width"], "percentiles": list(PERCENTILES),
                  "pad": "to square, aspect ratio kept", "polarity": "MONOCHROME2"},
        "preprocessing": PREPROCESSING_VERSION,
        "thresholds": thresholds,
        "prevalence_nih": {label: NIH_PREVALENCE[label] for label in LABELS},
        "simulation": {"shape": [cfg["sim_size"], cfg["sim_size"]], "field_mm": 430.0},
        "training": training,
        "metrics": {"held_out_simulated": metrics},
    }
    (out / "model.json").write_text(json.dumps(spec, indent=2) + "\n")
    (out / "MODEL_CARD.md").write_text(model_card(spec))
    return spec


if __name__ == "__main__":
    raise SystemExit(main())
