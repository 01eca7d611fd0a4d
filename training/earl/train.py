"""Train the two EARL CNNs on simulated PET and write the model bundle.

    python -m training.earl.train --n-per-class 300 --out models/earl/1.0.0 \
        [--workers 16] [--epochs 20] [--seed 20261126] [--device auto] [--compare-paper]
    python -m training.earl.train --real-labels labels.csv [--cv 5] --out models/earl/2.0.0 \
        [--workers 16] [--epochs 20] [--seed 20261126] [--device auto] [--compare-paper]

Cases come from ``training.earl.simulate.simulate_case`` (anthropomorphic FDG volumes
rendered with sampled resolution, overshoot, noise and voxel size; the label is the
EARL band of the NEMA phantom rendered with the same parameters). Each case is
preprocessed by the daemon's own functions (``qcd.analyzers.earl.preprocess``). The
split is by case (slices of one case never straddle train and test). Everything is
seeded; the bundle records the seed, the data description and held-out metrics.

With ``--real-labels`` the cases are real reconstructions listed in a label table
(``training.earl.real``); the metrics are then from cross-validation grouped by patient
or scanner (also written to ``<out>/cross_validation.json``), and the bundle's model is
trained on all real cases.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import multiprocessing as mp
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from qcd.analyzers.earl.decision import Thresholds, decide
from qcd.analyzers.earl.model import EarlModel
from qcd.analyzers.earl.phantom import RecoveryCoefficients
from qcd.analyzers.earl.preprocess import (
    EDGE_CLIP,
    EDGE_FWHM_MM,
    GRID_MM,
    N_SLICES,
    PREPROCESSING_VERSION,
    SLICE_SHAPE,
    STAGE2_POOL,
    prepare,
)
from qcd.hashing import sha256_file

LOGGER = logging.getLogger("training.earl")
LABELS = ("clinical", "EARL1", "EARL2")
VERSION = "1.0.0"


@dataclass
class Case:
    s1: np.ndarray  # (10, 1, 300, 200) float16
    s2: np.ndarray
    label: str
    params: dict[str, Any]
    rc: RecoveryCoefficients | None = None
    """The phantom recoveries that gave ``label`` (simulated cases only)."""


def make_case(task: tuple[int, str]) -> Case:
    """Simulate and preprocess one case (runs in a worker process)."""
    from training.earl.simulate import simulate_case

    seed, label = task
    volume, params, got, rc = simulate_case(np.random.default_rng(seed), label)
    s1, _, s2, _ = prepare(volume, params.voxel_mm)
    return Case(s1.astype(np.float16), s2.astype(np.float16), got,
                {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(params).items()},
                rc)


def case_tasks(n_per_class: int, seed: int) -> list[tuple[int, str]]:
    """The (seed, label) of every simulated case, in the order :func:`make_cases` makes them."""
    return [(seed * 100_003 + i * len(LABELS) + k, label)
            for i in range(n_per_class) for k, label in enumerate(LABELS)]


def make_cases(n_per_class: int, seed: int, workers: int) -> list[Case]:
    tasks = case_tasks(n_per_class, seed)
    if workers <= 1:
        return [make_case(t) for t in tasks]
    with mp.get_context("spawn").Pool(workers) as pool:
        return pool.map(make_case, tasks, chunksize=2)


def _slices(cases: list[Case], stage: int) -> tuple[torch.Tensor, torch.Tensor]:
    if stage == 1:
        xs = [c.s1 for c in cases]
        ys = [int(c.label != "clinical") for c in cases for _ in range(len(c.s1))]
    else:
        keep = [c for c in cases if c.label != "clinical"]
        xs = [c.s2 for c in keep]
        ys = [int(c.label == "EARL2") for c in keep for _ in range(len(c.s2))]
    return torch.from_numpy(np.concatenate(xs).astype(np.float32)), torch.tensor(ys)


def train_stage(net: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int,
                device: torch.device, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    net.to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * (
        (len(x) + 63) // 64))
    counts = torch.bincount(y, minlength=2).float()
    loss_fn = nn.CrossEntropyLoss(weight=(counts.sum() / (2 * counts.clamp(min=1))).to(device))
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for start in range(0, len(x), 64):
            idx = order[start:start + 64]
            xb, yb = x[idx].to(device), y[idx].to(device)
            if torch.rand(1, generator=gen).item() < 0.5:  # sagittal planes: flip A-P
                xb = xb.flip(-1)
            if torch.rand(1, generator=gen).item() < 0.5:  # head up or down (DICOM z order)
                xb = xb.flip(-2)
            opt.zero_grad()
            loss = loss_fn(net(xb), yb)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        LOGGER.info("  epoch %d/%d loss %.4f", epoch + 1, epochs, total / len(x))
    net.eval()


@torch.inference_mode()
def case_probabilities(model: EarlModel, cases: list[Case], device: torch.device,
                       amp: bool = False) -> list[tuple[float, float]]:
    """Mean P(EARL) and P(EARL2) per case; ``amp`` = fp16 autocast as the daemon does on CUDA."""
    model = model.to(device).eval()
    out = []
    for c in cases:
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp and device.type == "cuda"):
            l1 = model.stage1(torch.from_numpy(c.s1.astype(np.float32)).to(device))
            l2 = model.stage2(torch.from_numpy(c.s2.astype(np.float32)).to(device))
        out.append((torch.softmax(l1.float(), 1)[:, 1].mean().item(),
                    torch.softmax(l2.float(), 1)[:, 1].mean().item()))
    model.cpu()
    return out


def gpu_parity(model: EarlModel, cases: list[Case], thresholds: Thresholds) -> dict[str, Any]:
    """CPU fp32 vs CUDA fp16-autocast: largest probability gap and decisions that differ."""
    cpu = case_probabilities(model, cases, torch.device("cpu"))
    gpu = case_probabilities(model, cases, torch.device("cuda"), amp=True)
    gap = max(max(abs(a[0] - b[0]), abs(a[1] - b[1])) for a, b in zip(cpu, gpu, strict=True))

    def verdict(p: tuple[float, float]) -> str:
        return decide(p[0], p[1] if p[0] >= thresholds.stage1 else None, thresholds)

    differ = sum(verdict(a) != verdict(b) for a, b in zip(cpu, gpu, strict=True))
    return {"cases": len(cases), "max_probability_gap": round(gap, 6),
            "decisions_differing": differ, "gpu": torch.cuda.get_device_name(0),
            "tolerance_stated": 0.01}


def evaluate(model: EarlModel, cases: list[Case], device: torch.device,
             thresholds: Thresholds) -> dict[str, Any]:
    """Case-level metrics with the daemon's decision rule."""
    probs = case_probabilities(model, cases, device)
    return case_metrics([c.label for c in cases], probs, thresholds)


def case_metrics(labels: list[str], probs: list[tuple[float, float]],
                 thresholds: Thresholds) -> dict[str, Any]:
    """Accuracies and confusion table from true labels and (P(EARL), P(EARL2)) per case."""
    confusion = {t: {p: 0 for p in (*LABELS, "indeterminate")} for t in LABELS}
    stage1_ok = stage2_ok = stage2_n = 0
    for label, (p1, p2) in zip(labels, probs, strict=True):
        verdict = decide(p1, p2 if p1 >= thresholds.stage1 else None, thresholds)
        confusion[label][verdict] += 1
        stage1_ok += int((p1 >= thresholds.stage1) == (label != "clinical"))
        if label != "clinical":
            stage2_n += 1
            stage2_ok += int((p2 >= 0.5) == (label == "EARL2"))
    per_class = {t: confusion[t][t] / max(sum(confusion[t].values()), 1) for t in LABELS}
    return {
        "n_cases": len(labels),
        "stage1_accuracy": stage1_ok / max(len(labels), 1),
        "stage2_accuracy": stage2_ok / max(stage2_n, 1),
        "accuracy_per_class": per_class,
        "indeterminate_rate": sum(confusion[t]["indeterminate"] for t in LABELS) / max(
            len(labels), 1),
        "confusion": confusion,
    }


def fit(cases: list[Case], architecture: str, epochs: int, device: torch.device,
        seed: int) -> EarlModel:
    torch.manual_seed(seed)
    model = EarlModel(architecture)
    for stage, net in ((1, model.stage1), (2, model.stage2)):
        x, y = _slices(cases, stage)
        LOGGER.info("%s stage %d: %d slices (%d positive)", architecture, stage, len(x),
                    int(y.sum()))
        train_stage(net, x, y, epochs, device, seed + stage)
    return model.cpu().eval()


def split(cases: list[Case], seed: int, test_fraction: float) -> tuple[list[Case], list[Case]]:
    train, test = split_indices([c.label for c in cases], seed, test_fraction)
    return [cases[i] for i in train], [cases[i] for i in test]


def split_indices(labels: list[str], seed: int, test_fraction: float
                  ) -> tuple[list[int], list[int]]:
    """Positions of the training and held-out cases, stratified by label.

    Needs only the labels, so the held-out set can be rebuilt without simulating the
    training cases (``training.earl.analyze``).
    """
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in LABELS:
        group = [i for i, got in enumerate(labels) if got == label]
        order = rng.permutation(len(group))
        n_test = max(1, int(round(test_fraction * len(group))))
        test += [group[i] for i in order[:n_test]]
        train += [group[i] for i in order[n_test:]]
    return train, test


def save_bundle(out: Path, model: EarlModel, architecture: str, training: dict[str, Any],
                metrics: dict[str, Any], card: Callable[[dict[str, Any]], str],
                **extra: Any) -> dict[str, Any]:
    """Write weights, model.json (``extra`` keys after ``metrics``) and the card; return the spec."""
    out.mkdir(parents=True, exist_ok=True)
    weights = out / "weights.pt"
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, weights)
    spec = {
        "name": "earl", "version": VERSION, "architecture": architecture,
        "weights": weights.name, "sha256": sha256_file(weights),
        "labels": ["clinical", "EARL1", "EARL2", "indeterminate"],
        "input": {"shape": [1, *SLICE_SHAPE], "grid_mm": GRID_MM,
                  "edge_fwhm_mm": EDGE_FWHM_MM, "edge_clip_suv": EDGE_CLIP,
                  "slices": N_SLICES, "stage2_pool": STAGE2_POOL, "units": "SUVbw"},
        "preprocessing": PREPROCESSING_VERSION,
        "thresholds": vars(Thresholds()),
        "training": training,
        "metrics": metrics,
        **extra,
    }
    (out / "model.json").write_text(json.dumps(spec, indent=2) + "\n")
    (out / "MODEL_CARD.md").write_text(card(spec))
    return spec


def write_bundle(out: Path, model: EarlModel, architecture: str, metrics: dict[str, Any],
                 comparison: dict[str, Any], args: argparse.Namespace, n_train: int,
                 n_test: int, seconds: float) -> None:
    from training.earl.card import model_card

    training = {"seed": args.seed, "epochs": args.epochs, "n_train_cases": n_train,
                "n_test_cases": n_test, "data": "simulated FDG PET, see MODEL_CARD.md",
                "trained_on": args.device_name, "seconds": round(seconds, 1),
                "date": dt.date.today().isoformat(),
                "command": f"python -m training.earl.train --n-per-class "
                           f"{args.n_per_class} --epochs {args.epochs} --seed {args.seed}"}
    save_bundle(out, model, architecture, training, {"held_out_simulated": metrics},
                model_card, architecture_comparison=comparison)


def train_real(args: argparse.Namespace, device: torch.device, started: float) -> int:
    """Grouped cross-validation on the real cases of ``--real-labels``, then a final fit on all."""
    from training.earl import real

    rows = real.read_label_table(args.real_labels)
    data = real.describe(rows, args.real_labels)
    cases = real.load_cases(rows, args.workers)
    groups = [r.group for r in rows]
    LOGGER.info("loaded %d real cases in %.0f s: %s", len(cases), time.time() - started,
                data["label_counts"])
    results = {arch: real.cross_validate(cases, groups, args.cv, args.epochs, device,
                                         args.seed, arch)
               for arch in (("edgenet", "paper") if args.compare_paper else ("edgenet",))}
    arch = max(results, key=lambda a: real.cv_score(results[a]))  # first wins ties
    cv = dict(results[arch])
    if len(results) > 1:
        cv["architecture_comparison"] = {a: r["mean"] for a, r in results.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cross_validation.json").write_text(json.dumps(cv, indent=2) + "\n")
    print(json.dumps(cv, indent=2))
    model = fit(cases, arch, args.epochs, device, args.seed)
    training = {"seed": args.seed, "epochs": args.epochs, "n_train_cases": len(cases),
                "n_test_cases": 0, "data": data, "cross_validation_folds": args.cv,
                "trained_on": args.device_name, "seconds": round(time.time() - started, 1),
                "date": dt.date.today().isoformat(),
                "command": f"python -m training.earl.train --real-labels "
                           f"{args.real_labels.name} --cv {args.cv} --epochs {args.epochs} "
                           f"--seed {args.seed}" + (" --compare-paper" if args.compare_paper
                                                    else "")}
    extra: dict[str, Any] = {}
    if torch.cuda.is_available():
        torch.backends.cudnn.allow_tf32 = False  # as the daemon's runtime does
        torch.backends.cuda.matmul.allow_tf32 = False
        extra["gpu_parity"] = {"measured": gpu_parity(model, cases, Thresholds()),
                               "note": "On the training cases (no held-out set); parity is "
                                       "numerical agreement, not accuracy."}
    save_bundle(args.out, model, arch, training, {"cross_validated_real": cv}, real.model_card,
                **extra)
    LOGGER.info("wrote %s (architecture %s, trained on all %d real cases)", args.out, arch,
                len(cases))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-per-class", type=int, default=300)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seed", type=int, default=20261126)
    p.add_argument("--workers", type=int, default=max(1, (mp.cpu_count() or 2) - 1))
    p.add_argument("--device", default="auto")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--compare-paper", action="store_true",
                   help="also train the seed paper's architecture and record both")
    p.add_argument("--real-labels", type=Path, metavar="CSV",
                   help="train on the real cases of this label table (path,label,group; see "
                        "training/earl/real.py) instead of simulating")
    p.add_argument("--cv", type=int, default=5, metavar="K",
                   help="folds of the patient/scanner-grouped cross-validation (real data)")
    p.add_argument("--out", type=Path, default=Path("models/earl") / VERSION)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    args.device_name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    started = time.time()
    if args.real_labels is not None:
        return train_real(args, device, started)
    cases = make_cases(args.n_per_class, args.seed, args.workers)
    LOGGER.info("simulated %d cases in %.0f s: %s", len(cases), time.time() - started,
                {t: sum(c.label == t for c in cases) for t in LABELS})
    train, test = split(cases, args.seed, args.test_fraction)
    comparison: dict[str, Any] = {}
    best: tuple[float, str, EarlModel, dict[str, Any]] | None = None
    for arch in (("edgenet", "paper") if args.compare_paper else ("edgenet",)):
        t0 = time.time()
        model = fit(train, arch, args.epochs, device, args.seed)
        metrics = evaluate(model, test, torch.device("cpu"), Thresholds())
        metrics["train_seconds"] = round(time.time() - t0, 1)
        comparison[arch] = {k: metrics[k] for k in ("stage1_accuracy", "stage2_accuracy",
                                                    "accuracy_per_class", "train_seconds")}
        comparison[arch]["parameters"] = sum(q.numel() for q in model.stage1.parameters())
        LOGGER.info("%s held-out: %s", arch, json.dumps(metrics))
        score = min(metrics["accuracy_per_class"].values())
        if best is None or score > best[0]:
            best = (score, arch, model, metrics)
    assert best is not None
    _, arch, model, metrics = best
    if torch.cuda.is_available():
        torch.backends.cudnn.allow_tf32 = False  # as the daemon's runtime does
        torch.backends.cuda.matmul.allow_tf32 = False
        metrics["gpu_parity"] = gpu_parity(model, test, Thresholds())
        LOGGER.info("GPU parity: %s", metrics["gpu_parity"])
    write_bundle(args.out, model, arch, metrics, comparison, args, len(train), len(test),
                 time.time() - started)
    LOGGER.info("wrote %s (architecture %s)", args.out, arch)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
