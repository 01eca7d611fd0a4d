"""Train the two EARL CNNs on simulated PET and write the model bundle.

    python -m training.earl.train --n-per-class 300 --out models/earl/1.0.0 \
        [--workers 16] [--epochs 20] [--seed 20261126] [--device auto] [--compare-paper]
        [--variants edgenet,pre2+vox,pre3+vox+aux] [--val-fraction 0.15]
        [--train-fractions 0.25,0.5]
    python -m training.earl.train --real-labels labels.csv [--cv 5] --out models/earl/2.0.0 \
        [--workers 16] [--epochs 20] [--seed 20261126] [--device auto] [--compare-paper]

Cases come from ``training.earl.simulate.simulate_case`` (anthropomorphic FDG volumes
rendered with sampled resolution, overshoot, noise and voxel size; the label is the
EARL band of the NEMA phantom rendered with the same parameters). Each case is
preprocessed by the daemon's own functions (``qcd.analyzers.earl.preprocess``). The
split is by case (slices of one case never straddle train and test). Everything is
seeded; the bundle records the seed, the data description and held-out metrics.

``--variants`` trains several models on the same simulated cases and ships the one with
the best *validation* stage-1 accuracy (then the lowest per-class accuracy); validation
cases are a stratified share (``--val-fraction``) of the training cases, and held-out
numbers of every variant are recorded but never choose. A variant is ``edgenet`` or
``paper`` (the architecture, preprocessing ``earl-pre-1``) or ``preN`` (EdgeNet on
preprocessing ``earl-pre-N``) with ``+vox`` (voxel-size input) and/or ``+aux``
(auxiliary FWHM / overshoot / COV regression); see :mod:`qcd.analyzers.earl.model`.

``--train-fractions`` adds a learning curve: the chosen variant is trained again on
nested, stratified shares of the training cases and scored on the same held-out cases
(``learning_curve`` in ``model.json``, a table in the card). It answers whether more
simulated cases would help before a larger run is paid for; the shipped model is always
the one trained on all training cases.

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
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qcd.analyzers.earl.decision import Thresholds, decide
from qcd.analyzers.earl.model import AUX_TARGETS, N_CLASSES, EarlModel
from qcd.analyzers.earl.preprocess import (
    EDGE_CLIP,
    EDGE_FWHM_MM,
    GRID_MM,
    N_SLICES,
    SLICE_SHAPE,
    STAGE2_POOL,
)
from qcd.hashing import sha256_file
from training.earl.cases import (
    DEFAULT_VARIANT,
    LABELS,
    Case,
    Variant,
    stage_inputs,
    make_cases,
    nested_subset,
    split,
)
from training.earl.simulate import DEFAULT_SAMPLER, SAMPLERS

LOGGER = logging.getLogger("training.earl")
VERSION = "1.0.0"


AUX_WEIGHT = 0.5
"""Weight of the auxiliary regression loss beside the class loss (``+aux``)."""


def train_stage(net: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int,
                device: torch.device, seed: int, aux: torch.Tensor | None = None) -> None:
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
            out = net(xb)
            loss = loss_fn(out[:, :N_CLASSES], yb)
            if aux is not None:
                loss = loss + AUX_WEIGHT * nn.functional.smooth_l1_loss(
                    out[:, N_CLASSES:N_CLASSES + len(AUX_TARGETS)], aux[idx].to(device))
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        LOGGER.info("  epoch %d/%d loss %.4f", epoch + 1, epochs, total / len(x))
    net.eval()


@torch.inference_mode()
def case_probabilities(model: EarlModel, cases: list[Case], device: torch.device,
                       amp: bool = False, variant: Variant = DEFAULT_VARIANT
                       ) -> list[tuple[float, float]]:
    """Mean P(EARL) and P(EARL2) per case; ``amp`` = fp16 autocast as the daemon does on CUDA."""
    model = model.to(device).eval()
    out = []
    for c in cases:
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp and device.type == "cuda"):
            l1 = model.stage1(torch.from_numpy(c.slices(1, variant)).to(device))
            l2 = model.stage2(torch.from_numpy(c.slices(2, variant)).to(device))
        out.append((torch.softmax(l1[:, :N_CLASSES].float(), 1)[:, 1].mean().item(),
                    torch.softmax(l2[:, :N_CLASSES].float(), 1)[:, 1].mean().item()))
    model.cpu()
    return out


def gpu_parity(model: EarlModel, cases: list[Case], thresholds: Thresholds,
               variant: Variant = DEFAULT_VARIANT) -> dict[str, Any]:
    """CPU fp32 vs CUDA fp16-autocast: largest probability gap and decisions that differ."""
    cpu = case_probabilities(model, cases, torch.device("cpu"), variant=variant)
    gpu = case_probabilities(model, cases, torch.device("cuda"), amp=True, variant=variant)
    gap = max(max(abs(a[0] - b[0]), abs(a[1] - b[1])) for a, b in zip(cpu, gpu, strict=True))

    def verdict(p: tuple[float, float]) -> str:
        return decide(p[0], p[1] if p[0] >= thresholds.stage1 else None, thresholds)

    differ = sum(verdict(a) != verdict(b) for a, b in zip(cpu, gpu, strict=True))
    return {"cases": len(cases), "max_probability_gap": round(gap, 6),
            "decisions_differing": differ, "gpu": torch.cuda.get_device_name(0),
            "tolerance_stated": 0.01}


def evaluate(model: EarlModel, cases: list[Case], device: torch.device,
             thresholds: Thresholds, variant: Variant = DEFAULT_VARIANT) -> dict[str, Any]:
    """Case-level metrics with the daemon's decision rule."""
    probs = case_probabilities(model, cases, device, variant=variant)
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


def fit(cases: list[Case], architecture: str | Variant, epochs: int, device: torch.device,
        seed: int) -> EarlModel:
    variant = (architecture if isinstance(architecture, Variant)
               else Variant(architecture, architecture))
    torch.manual_seed(seed)
    model = variant.model()
    for stage, net in ((1, model.stage1), (2, model.stage2)):
        x, y, aux = stage_inputs(cases, stage, variant)
        LOGGER.info("%s stage %d: %d slices (%d positive)", variant.name, stage, len(x),
                    int(y.sum()))
        train_stage(net, x, y, epochs, device, seed + stage, aux)
    return model.cpu().eval()


def save_bundle(out: Path, model: EarlModel, architecture: str | Variant,
                training: dict[str, Any], metrics: dict[str, Any],
                card: Callable[[dict[str, Any]], str], **extra: Any) -> dict[str, Any]:
    """Write weights, model.json (``extra`` keys after ``metrics``) and the card; return the spec."""
    variant = (architecture if isinstance(architecture, Variant)
               else Variant(architecture, architecture))
    out.mkdir(parents=True, exist_ok=True)
    weights = out / "weights.pt"
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, weights)
    options = ({"voxel_input": True} if variant.voxel_input else {}) | (
        {"aux": sorted(AUX_TARGETS)} if variant.aux else {})
    spec = {
        "name": "earl", "version": VERSION, "architecture": variant.architecture,
        "weights": weights.name, "sha256": sha256_file(weights),
        "labels": ["clinical", "EARL1", "EARL2", "indeterminate"],
        "input": {"shape": [1 + 2 * int(variant.voxel_input), *SLICE_SHAPE],
                  "grid_mm": "native" if variant.preprocessing == "earl-pre-3" else GRID_MM,
                  "edge_fwhm_mm": EDGE_FWHM_MM, "edge_clip_suv": EDGE_CLIP,
                  "slices": N_SLICES, "stage2_pool": STAGE2_POOL, "units": "SUVbw",
                  **options},
        "preprocessing": variant.preprocessing,
        "thresholds": vars(Thresholds()),
        "training": training,
        "metrics": metrics,
        **extra,
    }
    (out / "model.json").write_text(json.dumps(spec, indent=2) + "\n")
    (out / "MODEL_CARD.md").write_text(card(spec))
    return spec


def learning_curve(train: list[Case], test: list[Case], variant: Variant,
                   fractions: list[float], full: dict[str, Any], epochs: int,
                   device: torch.device, seed: int) -> list[dict[str, Any]]:
    """Held-out metrics of ``variant`` trained on nested shares of ``train``.

    ``full`` is the metrics of the model trained on all of ``train`` (the last point).
    Every point uses the same seed, epochs and held-out cases.
    """
    keys = ("stage1_accuracy", "stage2_accuracy", "accuracy_per_class", "train_seconds")
    curve = []
    for fraction in sorted(f for f in fractions if f < 1):
        share = nested_subset(train, fraction, seed + 2)
        t0 = time.time()
        model = fit(share, variant, epochs, device, seed)
        metrics = evaluate(model, test, torch.device("cpu"), Thresholds(), variant)
        metrics["train_seconds"] = round(time.time() - t0, 1)
        LOGGER.info("learning curve %.2f (%d cases): stage 1 %.4f, stage 2 %.4f", fraction,
                    len(share), metrics["stage1_accuracy"], metrics["stage2_accuracy"])
        curve.append({"fraction": fraction, "n_train_cases": len(share)}
                     | {k: metrics[k] for k in keys})
    curve.append({"fraction": 1.0, "n_train_cases": len(train)}
                 | {k: full[k] for k in keys if k in full})
    return curve


def parse_fractions(text: str) -> list[float]:
    """``"0.25,0.5"`` -> [0.25, 0.5]; each share must lie in (0, 1]."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--train-fractions: not a comma-separated list of numbers: "
                         f"{text!r}") from None
    bad = [v for v in values if not 0 < v <= 1]
    if bad:
        raise ValueError(f"--train-fractions: shares must lie in (0, 1], got {bad}")
    return values


def write_bundle(out: Path, model: EarlModel, variant: Variant, metrics: dict[str, Any],
                 comparison: dict[str, Any], args: argparse.Namespace, n_train: int,
                 n_test: int, seconds: float, n_val: int = 0,
                 curve: list[dict[str, Any]] | None = None) -> None:
    from training.earl.card import model_card

    command = (f"python -m training.earl.train --n-per-class {args.n_per_class} "
               f"--epochs {args.epochs} --seed {args.seed}")
    if args.variants:
        command += f" --variants {args.variants} --val-fraction {args.val_fraction}"
    if args.train_fractions:
        command += f" --train-fractions {args.train_fractions}"
    if args.sampler != DEFAULT_SAMPLER:
        command += f" --sampler {args.sampler}"
    training = {"seed": args.seed, "epochs": args.epochs, "n_train_cases": n_train,
                "n_test_cases": n_test, "data": "simulated FDG PET, see MODEL_CARD.md",
                "trained_on": args.device_name, "seconds": round(seconds, 1),
                "date": dt.date.today().isoformat(), "command": command,
                "sampler": args.sampler}
    if n_val:
        training |= {"n_val_cases": n_val, "chosen_variant": variant.name}
    extra: dict[str, Any] = {"architecture_comparison": comparison}
    if curve:
        extra["learning_curve"] = curve
    save_bundle(out, model, variant, training, {"held_out_simulated": metrics},
                model_card, **extra)


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
    p.add_argument("--variants", default="",
                   help="comma-separated variants trained on the same cases, e.g. "
                        "edgenet,pre2+vox,pre3+vox+aux (see the module docstring)")
    p.add_argument("--val-fraction", type=float, default=0.15,
                   help="share of the training cases that chooses between variants")
    p.add_argument("--train-fractions", default="",
                   help="learning curve: also train the chosen variant on these nested "
                        "shares of the training cases, e.g. 0.25,0.5 (simulated data only)")
    p.add_argument("--sampler", choices=SAMPLERS, default=DEFAULT_SAMPLER,
                   help="proposal scheme of the simulated cases (training.earl.simulate."
                        "SAMPLERS; recorded in the bundle)")
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
        if args.train_fractions:
            p.error("--train-fractions is for simulated cases; real cases are cross-validated")
        return train_real(args, device, started)
    names = [v for v in (args.variants or "").split(",") if v.strip()] or ["edgenet"]
    if args.compare_paper and "paper" not in names:
        names.append("paper")
    try:
        variants = [Variant.parse(n) for n in names]
        fractions = parse_fractions(args.train_fractions)
    except ValueError as exc:
        p.error(str(exc))
    versions = tuple(dict.fromkeys(v.preprocessing for v in variants))
    cases = make_cases(args.n_per_class, args.seed, args.workers, versions, args.sampler)
    LOGGER.info("simulated %d cases (preprocessing %s) in %.0f s: %s", len(cases),
                ", ".join(versions), time.time() - started,
                {t: sum(c.label == t for c in cases) for t in LABELS})
    train, test = split(cases, args.seed, args.test_fraction)
    val: list[Case] = []
    # the choice never sees held-out cases; a bare --compare-paper keeps the split (and the
    # held-out choice) of the bundles made before --variants, so they still reproduce
    if args.variants and len(variants) > 1 and args.val_fraction > 0:
        train, val = split(train, args.seed + 1, args.val_fraction)
    comparison: dict[str, Any] = {}
    best: tuple[tuple[float, float], Variant, EarlModel, dict[str, Any]] | None = None
    for variant in variants:
        t0 = time.time()
        model = fit(train, variant, args.epochs, device, args.seed)
        metrics = evaluate(model, test, torch.device("cpu"), Thresholds(), variant)
        metrics["train_seconds"] = round(time.time() - t0, 1)
        entry = {k: metrics[k] for k in ("stage1_accuracy", "stage2_accuracy",
                                         "accuracy_per_class", "train_seconds")}
        entry["parameters"] = sum(q.numel() for q in model.stage1.parameters())
        chooser = metrics
        if val:
            chooser = evaluate(model, val, torch.device("cpu"), Thresholds(), variant)
            entry["validation"] = {k: chooser[k] for k in ("stage1_accuracy", "stage2_accuracy",
                                                           "accuracy_per_class")}
        comparison[variant.name] = entry
        LOGGER.info("%s held-out: %s", variant.name, json.dumps(metrics))
        score = (chooser["stage1_accuracy"], min(chooser["accuracy_per_class"].values()))
        if not val:  # the single-variant / --compare-paper rule of earlier bundles
            score = (min(chooser["accuracy_per_class"].values()), 0.0)
        if best is None or score > best[0]:
            best = (score, variant, model, metrics)
    assert best is not None
    _, variant, model, metrics = best
    if torch.cuda.is_available():
        torch.backends.cudnn.allow_tf32 = False  # as the daemon's runtime does
        torch.backends.cuda.matmul.allow_tf32 = False
        metrics["gpu_parity"] = gpu_parity(model, test, Thresholds(), variant)
        LOGGER.info("GPU parity: %s", metrics["gpu_parity"])
    curve = (learning_curve(train, test, variant, fractions, metrics, args.epochs, device,
                            args.seed) if fractions else None)
    write_bundle(args.out, model, variant, metrics, comparison, args, len(train), len(test),
                 time.time() - started, len(val), curve)
    LOGGER.info("wrote %s (variant %s)", args.out, variant.name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
