"""Train the left-atrium U-Net on simulated cardiac MR and write the model bundle.

    python -m training.atrium.train --out DIR --seed S [--device auto|cpu|cuda]
        [--config small|full] [--n-train N] [--n-test N] [--steps N] [--batch N]
        [--base N] [--context N] [--crop N]

Volumes come from ``training.atrium.simulate`` on the training device; each is
normalised with the daemon's own ``qcd.analyzers.atrium.preprocess`` and cut to a
``crop`` x ``crop`` in-plane window (random, mostly around the atrium, sometimes
anywhere). Batches are random (volume, slice) pairs stacked 2.5D. Loss: BCE + soft
Dice. The held-out set is simulated from another seed range and evaluated on *whole*
volumes through the daemon's pipeline (prepare -> U-Net -> restore -> postprocess):
mean 3D Dice and median absolute LA volume error (targets 0.92 and 5 %).

``--config full`` is the GPU configuration: 105 s wall on an H200 while a second
identical training shared the GPU (simulation 19 s, 3000 steps 66 s, evaluation 20 s);
``--config small`` trains the CPU smoke bundle in 4-7 minutes on one busy core.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from qcd.analyzers.atrium.model import UNet2D
from qcd.analyzers.atrium.postprocess import PostprocessSettings, segment
from qcd.analyzers.atrium.preprocess import (
    CONTEXT,
    GRID_MM,
    PREPROCESSING_VERSION,
    grid_shape,
    normalise,
)
from qcd.hashing import sha256_file
from training.atrium.simulate import SimConfig, simulate_case

LOGGER = logging.getLogger("training.atrium")
VERSION = "1.0.0"
TARGETS = {"mean_dice": 0.92, "median_abs_volume_error_pct": 5.0}
HELD_OUT_OFFSET = 5_000_000
"""Held-out seeds are ``seed * 1000 + HELD_OUT_OFFSET + i``: never a training seed."""

CONFIGS: dict[str, dict[str, Any]] = {
    "small": {"n_train": 20, "n_test": 6, "steps": 300, "batch": 12, "base": 12, "crop": 128,
              "nz": 64, "sizes": (128, 144, 160), "lr": 3e-3},
    "full": {"n_train": 480, "n_test": 40, "steps": 3000, "batch": 48, "base": 16,
             "crop": 160, "nz": 80, "sizes": (160, 176, 192, 208, 224), "lr": 2e-3},
}


def log(msg: str, *args: Any) -> None:
    LOGGER.info(msg, *args)
    sys.stderr.flush()


def train_seed(seed: int, i: int) -> int:
    return seed * 1000 + i


def held_out_seed(seed: int, i: int) -> int:
    return seed * 1000 + HELD_OUT_OFFSET + i


def _crop_origin(label: torch.Tensor, crop: int, rng: np.random.Generator) -> tuple[int, int]:
    ny, nx = label.shape[1:]
    if rng.random() < 0.8 and bool(label.any()):
        ys, xs = torch.nonzero(label.any(0), as_tuple=True)
        cy, cx = int(ys.float().mean()), int(xs.float().mean())
        jitter = crop // 2 - 24
        cy += int(rng.integers(-jitter, jitter + 1))
        cx += int(rng.integers(-jitter, jitter + 1))
        y0, x0 = cy - crop // 2, cx - crop // 2
    else:
        y0, x0 = int(rng.integers(0, ny - crop + 1)), int(rng.integers(0, nx - crop + 1))
    return int(np.clip(y0, 0, ny - crop)), int(np.clip(x0, 0, nx - crop))


@dataclass
class SliceStore:
    """Training slices of many volumes, flat: (S, crop, crop), plus each slice's volume
    range [lo, hi] in the flat index (the 2.5D neighbours never cross volumes)."""

    images: torch.Tensor
    labels: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor


def _cut(image: torch.Tensor, label: torch.Tensor, spacing: tuple[float, float, float],
         crop: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalise and resample as the daemon does, pad to ``crop``, cut a crop window."""
    x = normalise(image)
    target = grid_shape((int(x.shape[1]), int(x.shape[2])), (spacing[1], spacing[2]))
    y = label.float()
    if target != tuple(x.shape[1:]):
        x = F.interpolate(x[:, None], size=target, mode="bilinear", align_corners=False)[:, 0]
        y = F.interpolate(y[:, None], size=target, mode="bilinear", align_corners=False)[:, 0]
    pad = (0, max(0, crop - x.shape[2]), 0, max(0, crop - x.shape[1]))
    x, y = F.pad(x, pad), F.pad(y, pad) >= 0.5
    y0, x0 = _crop_origin(y, crop, rng)
    return (x[:, y0:y0 + crop, x0:x0 + crop].half(),
            y[:, y0:y0 + crop, x0:x0 + crop].to(torch.uint8))


def _store(parts: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> SliceStore:
    lo, hi, start = [], [], 0
    for x, _ in parts:
        lo += [start] * len(x)
        hi += [start + len(x) - 1] * len(x)
        start += len(x)
    return SliceStore(torch.cat([p[0] for p in parts]).to(device),
                      torch.cat([p[1] for p in parts]).to(device),
                      torch.tensor(lo), torch.tensor(hi))


def build_training_set(n: int, seed: int, sim: SimConfig, crop: int, device: torch.device,
                       ) -> tuple[SliceStore, list[dict[str, Any]]]:
    """Simulated volumes (on ``device``) cut into a :class:`SliceStore`."""
    rng = np.random.default_rng(seed)
    parts, params = [], []
    for i in range(n):
        case = simulate_case(train_seed(seed, i), device, sim)
        parts.append(_cut(case.image, case.label, case.spacing, crop, rng))
        params.append(case.params)
        if (i + 1) % max(1, n // 10) == 0:
            log("simulated %d/%d training volumes", i + 1, n)
    return _store(parts, device), params


def dice_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    inter = (p * target).sum()
    dice = 1 - (2 * inter + 1) / (p.sum() + target.sum() + 1)
    return bce + dice


def train(model: UNet2D, store: SliceStore, steps: int, batch: int,
          lr: float, context: int, device: torch.device, seed: int) -> list[float]:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    model.to(device).train()
    amp = device.type == "cuda"
    if amp:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps,
                                                pct_start=0.15)
    n = len(store.images)
    offsets = torch.arange(-context, context + 1)
    losses: list[float] = []
    every = max(1, steps // 20)
    running = torch.zeros((), device=device)
    started = time.time()
    for step in range(steps):
        si = torch.randint(0, n, (batch,), generator=gen)
        sc = torch.maximum(torch.minimum(si[:, None] + offsets[None, :], store.hi[si, None]),
                           store.lo[si, None])
        x = store.images[sc.to(device)].float()  # (B, C, H, W)
        y = store.labels[si.to(device)].float()[:, None]
        gain = torch.empty(batch, 1, 1, 1, device=device).uniform_(0.9, 1.1)  # receiver gain
        x = (x * gain).clamp(0, 1.5)
        if amp:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        loss = dice_bce(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running += loss.detach()
        if (step + 1) % every == 0:
            mean = float(running) / every  # one device sync per logging interval
            losses.append(round(mean, 4))
            running.zero_()
            log("step %d/%d loss %.4f (%.0f s)", step + 1, steps, mean, time.time() - started)
    return losses


def simulated_held_out(n: int, seed: int, sim: SimConfig, device: torch.device,
                       ) -> Iterator[tuple[Any, torch.Tensor, np.ndarray,
                                           tuple[float, float, float], int]]:
    for i in range(n):
        case = simulate_case(held_out_seed(seed, i), device, sim)
        yield (case.params["seed"], case.image.cpu(), case.label.cpu().numpy(), case.spacing,
               case.params["size"])


@torch.inference_mode()
def evaluate(model: UNet2D, cases: Iterable[tuple[Any, Any, np.ndarray,
                                                  tuple[float, float, float], int]],
             context: int, device: torch.device,
             post: PostprocessSettings = PostprocessSettings()) -> dict[str, Any]:
    """Whole-volume held-out metrics through the daemon's pipeline (fp32)."""
    model = model.to(device).eval()

    def predict(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([model(x[i:i + 32].to(device)).float().cpu()
                          for i in range(0, len(x), 32)])

    dices, errors, rows = [], [], []
    for name, image, truth, spacing, size in cases:
        _, mask = segment(predict, image, spacing, context, post)
        inter = float(np.logical_and(mask, truth).sum())
        dice = 2 * inter / max(float(mask.sum() + truth.sum()), 1.0)
        vox = float(np.prod(spacing)) / 1000
        true_ml, pred_ml = float(truth.sum()) * vox, float(mask.sum()) * vox
        err = 100 * (pred_ml - true_ml) / true_ml
        dices.append(dice)
        errors.append(err)
        rows.append({"seed": name, "dice": round(dice, 4),
                     "true_ml": round(true_ml, 2), "pred_ml": round(pred_ml, 2),
                     "volume_error_pct": round(err, 2), "size": size})
    abs_err = np.abs(errors)
    return {"n_volumes": len(rows), "mean_dice": float(np.mean(dices)),
            "min_dice": float(np.min(dices)),
            "median_abs_volume_error_pct": float(np.median(abs_err)),
            "p90_abs_volume_error_pct": float(np.percentile(abs_err, 90)),
            "mean_volume_error_pct": float(np.mean(errors)), "cases": rows}


def write_bundle(out: Path, model: UNet2D, args: argparse.Namespace,
                 metrics: dict[str, dict[str, Any]], training: dict[str, Any]) -> dict[str, Any]:
    from training.atrium.card import model_card

    out.mkdir(parents=True, exist_ok=True)
    weights = out / "weights.pt"
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, weights)
    post = PostprocessSettings()
    spec = {
        "name": "atrium", "version": VERSION, "architecture": "unet2d",
        "base_channels": args.base, "weights": weights.name, "sha256": sha256_file(weights),
        "labels": ["background", "left_atrium"],
        "input": {"grid_mm": GRID_MM, "context": args.context,
                  "channels": 2 * args.context + 1, "modality": "MR",
                  "normalisation": "volume 99.5th percentile, clipped to [0, 1.5]"},
        "preprocessing": PREPROCESSING_VERSION,
        "postprocessing": {"threshold": post.threshold, "closing_mm": post.closing_mm,
                           "min_slice_mm2": post.min_slice_mm2},
        "label_convention": "LA blood pool + first 10 mm of each pulmonary vein + first 15 mm "
                            "of the appendage (LASC 2013)",
        "training": training,
        "metrics": metrics,
        "targets": TARGETS,
    }
    (out / "model.json").write_text(json.dumps(spec, indent=2) + "\n")
    (out / "MODEL_CARD.md").write_text(model_card(spec))
    return spec


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=20261126)
    p.add_argument("--device", default="auto")
    p.add_argument("--config", choices=sorted(CONFIGS), default="full")
    for key in ("n_train", "n_test", "steps", "batch", "base", "crop", "nz"):
        p.add_argument(f"--{key.replace('_', '-')}", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--context", type=int, default=CONTEXT,
                   help="neighbour slices per side (0 = plain 2D)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--real", type=Path, default=None, metavar="DIR",
                   help="train and test on real labelled MR (imagesTr/labelsTr NIfTI) instead")
    p.add_argument("--test-fraction", type=float, default=0.2,
                   help="held-out share of the real cases (split by case)")
    args = p.parse_args(argv)
    for key, value in CONFIGS[args.config].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    torch.manual_seed(args.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    sim = SimConfig(nz=args.nz, sizes=tuple(s for s in args.sizes if s >= args.crop))
    started = time.time()
    held_out: Iterable[tuple[Any, Any, np.ndarray, tuple[float, float, float], int]]
    if args.real is not None:
        from training.atrium.real import load_cases

        real = load_cases(args.real)
        order = np.random.default_rng(args.seed).permutation(len(real))
        n_test = max(1, round(args.test_fraction * len(real)))
        test = [real[i] for i in order[:n_test]]
        train_cases = [real[i] for i in order[n_test:]]
        rng = np.random.default_rng(args.seed)
        store = _store([_cut(torch.from_numpy(c.image).to(device),
                             torch.from_numpy(c.label).to(device), c.spacing, args.crop, rng)
                        for c in train_cases], device)
        params: list[dict[str, Any]] = []
        held_out = [(c.name, torch.from_numpy(c.image), c.label, c.spacing,
                     int(c.image.shape[1])) for c in test]
        args.n_train, args.n_test = len(train_cases), len(test)
        metric_key = "held_out_real"
    else:
        store, params = build_training_set(args.n_train, args.seed, sim, args.crop, device)
        held_out = simulated_held_out(args.n_test, args.seed, sim, device)
        metric_key = "held_out_simulated"
    sim_seconds = time.time() - started
    log("prepared %d training volumes (%d slices) in %.1f s on %s", args.n_train,
        len(store.images), sim_seconds, device_name)
    model = UNet2D(in_channels=2 * args.context + 1, base=args.base)
    t0 = time.time()
    losses = train(model, store, args.steps, args.batch, args.lr, args.context, device,
                   args.seed)
    train_seconds = time.time() - t0
    del store
    t0 = time.time()
    metrics = evaluate(model, held_out, args.context, device)
    metrics["eval_seconds"] = round(time.time() - t0, 1)
    log("held-out: mean Dice %.4f, median |volume error| %.2f %%", metrics["mean_dice"],
        metrics["median_abs_volume_error_pct"])
    lavis = [q["lavi_ml_m2"] for q in params] or [float("nan")]
    command = (f"python -m training.atrium.train --out {args.out} --seed {args.seed} "
               f"--config {args.config} --device {args.device}")
    overrides = {k: getattr(args, k) for k in CONFIGS[args.config]
                 if k != "sizes" and getattr(args, k) != CONFIGS[args.config][k]}
    command += "".join(f" --{k.replace('_', '-')} {v}" for k, v in overrides.items())
    if args.context != CONTEXT:
        command += f" --context {args.context}"
    if args.real is not None:
        command += f" --real {args.real.name}"
    training = {
        "seed": args.seed, "config": args.config, "n_train_volumes": args.n_train,
        "n_test_volumes": args.n_test, "steps": args.steps, "batch": args.batch, "lr": args.lr,
        "crop": args.crop, "slices_per_volume": args.nz, "matrix_sizes": list(sim.sizes),
        "loss": "BCE + soft Dice", "optimiser": "AdamW, one-cycle",
        "lavi_range_ml_m2": [round(min(lavis), 1), round(max(lavis), 1)],
        "data": ("real labelled MR, MSD Task02_Heart / LASC layout" if args.real is not None
                 else "simulated bSSFP cardiac MR (training/atrium/simulate.py), see "
                      "MODEL_CARD.md"),
        "trained_on": device_name, "simulation_seconds": round(sim_seconds, 1),
        "train_seconds": round(train_seconds, 1), "seconds": round(time.time() - started, 1),
        "loss_curve": losses, "date": dt.date.today().isoformat(), "command": command,
    }
    metrics = {metric_key: metrics}
    write_bundle(args.out, model.cpu(), args, metrics, training)
    log("wrote %s in %.0f s total", args.out, time.time() - started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
