"""Train the chest multi-label CNN on simulated (or real) radiographs and write the bundle.

    python -m training.chest.train --out DIR --seed S [--device auto|cpu|cuda]
        [--preset full|small] [--steps N] [--batch N] [--sim-size PX] [--input-size PX]
        [--width W] [--n-val N] [--n-test N] [--floor P]
    python -m training.chest.train --real-format nih|chexpert|folder --real-root DIR
        [--real-csv CSV] [--real-images DIR] [--uncertain ignore|ones|zeros]
        [--blank unknown|negative]
        [--init-from models/chest/1.0.0] [--epochs E] --out models/chest/2.0.0

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

With ``--real-format`` the images and labels come from a real dataset
(:mod:`training.chest.real`), split by patient (seed ``--seed``) into training,
validation (``--val-fraction``) and held-out (``--test-fraction``) images; each image goes
through the same :func:`prepare_batch` alone, as in the daemon. The loss is masked to the
labels each image states (NIH has no COVID-19/TB; CheXpert states 7 of ours, uncertain
ones masked under the default U-Ignore policy), and a label with no positive training
image is *not trained*: its output is fixed near 0 with threshold 1.0 (never flagged) and
``model.json`` and the card list it as such. ``--init-from`` fine-tunes a bundle's weights.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import os
import re
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
DISABLED_THRESHOLD, DISABLED_BIAS = 1.0, -30.0
"""A label not trained on the data: output sigmoid(-30) ~ 1e-13, threshold 1.0, never fires."""
UNCERTAIN_POLICIES = {"ignore": "U-Ignore: uncertain (-1) labels are masked out of the loss",
                      "ones": "U-Ones: uncertain (-1) labels count as positive",
                      "zeros": "U-Zeros: uncertain (-1) labels count as negative"}
BLANK_POLICIES = {"unknown": "blank (not mentioned) labels are masked out of the loss",
                  "negative": "blank (not mentioned) labels count as negative"}
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


def _label_metrics(scores: np.ndarray, truth: np.ndarray, t: float) -> dict[str, Any]:
    pos = truth > 0.5
    fired = scores >= t
    return {"auc": round(auc(scores, truth), 4), "positives": int(pos.sum()),
            "sensitivity": round(float(fired[pos].mean()) if pos.any() else math.nan, 4),
            "specificity": round(float((~fired[~pos]).mean()) if (~pos).any() else math.nan, 4)}


def evaluate(probs: np.ndarray, truth: np.ndarray,
             thresholds: dict[str, float]) -> dict[str, Any]:
    """Per-label AUC, prevalence, and sensitivity/specificity at the operating thresholds."""
    per = {label: _label_metrics(probs[:, i], truth[:, i], thresholds[label])
           for i, label in enumerate(LABELS)}
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


def masked_bce(logits: torch.Tensor, target: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy over the (image, label) pairs the data states.

    Pairs with ``known`` 0 (a label the source does not state, or an uncertain CheXpert
    label under U-Ignore) add neither loss nor gradient, whatever their target says.
    """
    per = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (per * known).sum() / known.sum().clamp(min=1.0)


def fit_real(model: ChestNet, x: torch.Tensor, y: torch.Tensor, known: torch.Tensor,
             rows: torch.Tensor, cfg: dict[str, Any], epochs: int, seed: int,
             device: torch.device) -> ChestNet:
    """``epochs`` shuffled passes over the ``rows`` of real inputs ``x`` (CPU float16, not
    copied) with the masked loss."""
    torch.manual_seed(seed)
    model = model.to(device)
    batch = cfg["batch"]
    # a last batch of one image is dropped: batch norm needs two at the 1x1 stage
    per_epoch = len(rows) // batch + (1 if len(rows) % batch >= 2 else 0)
    if per_epoch == 0:
        raise ValueError(f"{len(rows)} training image(s): need at least 2")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg["lr"],
                                                total_steps=epochs * per_epoch, pct_start=0.15)
    gen = torch.Generator().manual_seed(seed * 7919 + 13)
    started, running = time.time(), 0.0
    for epoch in range(epochs):
        model.train()
        order = rows[torch.randperm(len(rows), generator=gen)]
        for k in range(per_epoch):
            idx = order[k * batch:(k + 1) * batch]
            xb = x[idx].to(device, non_blocking=True).float()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = model(xb)
            loss = masked_bce(logits.float(), y[idx].to(device), known[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running = 0.98 * running + 0.02 * loss.item() if (epoch or k) else loss.item()
        LOGGER.info("epoch %d/%d loss %.4f %.0f s", epoch + 1, epochs, running,
                    time.time() - started)
    return model.eval()


def disable_labels(model: ChestNet, labels: list[str]) -> None:
    """Fix the outputs of ``labels`` at sigmoid(:data:`DISABLED_BIAS`): they carry nothing."""
    head = model.head[-1]
    assert isinstance(head, torch.nn.Linear)
    with torch.no_grad():
        for label in labels:
            head.weight[LABELS.index(label)].zero_()
            head.bias[LABELS.index(label)] = DISABLED_BIAS


def real_thresholds(probs: np.ndarray, truth: np.ndarray, known: np.ndarray,
                    not_trained: dict[str, str]) -> tuple[dict[str, float], dict[str, str]]:
    """Per-label threshold on the validation images that state the label, and its source."""
    thresholds, source = {}, {}
    for i, label in enumerate(LABELS):
        rows = known[:, i] > 0.5
        pos = truth[rows, i] > 0.5
        if label in not_trained:
            thresholds[label], source[label] = DISABLED_THRESHOLD, "disabled: not trained"
        elif not pos.any() or pos.all():
            thresholds[label] = 0.5
            source[label] = (f"default 0.5: validation has {int(pos.sum())} positive(s) "
                             f"among {int(rows.sum())} image(s) stating the label")
        else:
            thresholds[label] = round(choose_threshold(probs[rows, i], truth[rows, i],
                                                       label in URGENT), 5)
            source[label] = "validation"
    return thresholds, source


def evaluate_real(probs: np.ndarray, truth: np.ndarray, known: np.ndarray,
                  thresholds: dict[str, float], not_trained: dict[str, str]) -> dict[str, Any]:
    """Held-out metrics per label over the images that state it; none for untrained labels."""
    per: dict[str, Any] = {}
    for i, label in enumerate(LABELS):
        rows = known[:, i] > 0.5
        if label in not_trained:
            per[label] = {"trained": False, "reason": not_trained[label], "auc": None,
                          "known": int(rows.sum()), "positives": int(truth[rows, i].sum())}
            continue
        per[label] = {"trained": True, "known": int(rows.sum()),
                      **{k: None if v != v else v for k, v in _label_metrics(
                          probs[rows, i], truth[rows, i], thresholds[label]).items()}}
    aucs = [v["auc"] for v in per.values() if v["auc"] is not None]
    trained = [i for i, label in enumerate(LABELS) if label not in not_trained]
    full = np.all(known[:, trained] > 0.5, axis=1)  # images that state every trained label
    t = np.array([thresholds[LABELS[i]] for i in trained])
    normal_truth = truth[full][:, trained].sum(1) == 0
    normal_pred = np.all(probs[full][:, trained] < t, axis=1)
    return {"n_cases": int(len(truth)),
            "mean_auc": round(float(np.mean(aucs)), 4) if aucs else None,
            "min_auc": round(float(np.min(aucs)), 4) if aucs else None,
            "labels_with_auc": len(aucs), "per_label": per,
            "normal_agreement": (round(float((normal_truth == normal_pred).mean()), 4)
                                 if full.any() else None),
            "normal_agreement_images": int(full.sum())}


def _init_bundle(path: Path, cfg: dict[str, Any], args: argparse.Namespace
                 ) -> tuple[ChestNet, dict[str, Any]]:
    """The verified weights of the bundle at ``path``; ``cfg`` takes its width and input size."""
    from qcd.analyzers.chest.analyzer import load_model
    from qcd.bundles import load_bundle

    bundle = load_bundle(path.parent.parent, path.parent.name, path.name)
    cfg["width"] = int(bundle.spec["input"]["width"])
    cfg["input_size"] = args.input_size or int(bundle.spec["input"]["size"])
    cfg["lr"] = args.lr or cfg["lr"] / 4
    return load_model(bundle).train(), {
        "bundle": f"{bundle.name}/{bundle.version}", "sha256": bundle.sha256,
        "data": bundle.spec.get("data_source", "simulated")}


def train_real(args: argparse.Namespace, cfg: dict[str, Any], device: torch.device) -> int:
    """Retrain (or fine-tune) on a real dataset, split by patient; write the bundle."""
    from training.chest import real

    started = time.time()
    init: dict[str, Any] | None = None
    if args.init_from is not None:
        model, init = _init_bundle(args.init_from, cfg, args)
    else:
        torch.manual_seed(args.seed)
        model = ChestNet(len(LABELS), width=cfg["width"])
    samples = real.read_samples(args.real_format, args.real_root, args.real_csv,
                                args.real_images, args.uncertain, args.blank)
    x, ok, errors = real.prepare_inputs(samples, cfg["input_size"], args.workers)
    if errors:
        LOGGER.warning("%d unreadable image(s) skipped, e.g. %s", len(errors), errors[0])
    samples = [samples[i] for i in ok]
    y = torch.tensor([s.target for s in samples], dtype=torch.float32)
    known = torch.tensor([s.known for s in samples], dtype=torch.float32)
    patients = [s.patient for s in samples]
    split = real.split_by_patient(patients, args.val_fraction, args.test_fraction, args.seed)
    counts = real.label_counts(samples)
    train_counts = real.label_counts([samples[i] for i in split[0]])
    not_trained = {label: ("not in this dataset" if counts[label]["known"] == 0
                           else "no positive training image")
                   for label in LABELS if train_counts[label]["positives"] == 0}
    source = f"real: {args.real_format}, {len(samples)} images, {len(set(patients))} patients"
    LOGGER.info("%s; not trained: %s; %s", source, ", ".join(not_trained) or "none",
                json.dumps(cfg))
    tr, va, te = (torch.tensor(ix, dtype=torch.long) for ix in split)
    model = fit_real(model, x, y, known, tr, cfg, args.epochs, args.seed, device)
    disable_labels(model, list(not_trained))
    pv = predict(model, x[va], device)
    thresholds, threshold_source = real_thresholds(pv, y[va].numpy(), known[va].numpy(),
                                                   not_trained)
    metrics = evaluate_real(predict(model, x[te], device), y[te].numpy(), known[te].numpy(),
                            thresholds, not_trained)
    LOGGER.info("held-out: mean AUC %s over %d labels; %s", metrics["mean_auc"],
                metrics["labels_with_auc"], json.dumps(
                    {k: v["auc"] for k, v in metrics["per_label"].items() if v["trained"]}))
    command = "python -m training.chest.train " + " ".join(
        args.argv if args.argv is not None else sys.argv[1:])
    data: dict[str, Any] = {
        "kind": "real", "format": args.real_format, "source": source,
        "n_images": len(samples), "n_patients": len(set(patients)),
        "unreadable_images_skipped": len(errors), "label_counts": counts}
    if args.real_format == "chexpert":
        data["uncertain_policy"] = UNCERTAIN_POLICIES[args.uncertain]
        data["blank_policy"] = BLANK_POLICIES[args.blank]
    sets = {name: {"images": len(ix), "patients": len({patients[i] for i in ix})}
            for name, ix in zip(("train", "validation", "held_out"), split, strict=True)}
    write_bundle(args.out, model.cpu(), cfg, thresholds, metrics, {
        "seed": args.seed, "preset": args.preset, "epochs": args.epochs,
        **{k: cfg[k] for k in ("batch", "input_size", "width", "lr")}, "data": data,
        "split": {"rule": f"seed {args.seed}; validation {args.val_fraction} and held-out "
                          f"{args.test_fraction} of the patients", **sets},
        "images_seen": args.epochs * len(split[0]), "initialised_from": init,
        "loss": "binary cross-entropy masked to the labels each image states",
        "trained_on": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "seconds": round(time.time() - started, 1), "date": dt.date.today().isoformat(),
        "torch": torch.__version__, "command": command,
        "threshold_rule": f"Youden's J on the validation images that state the label; urgent "
                          f"labels ({', '.join(URGENT)}): sensitivity >= {URGENT_SENSITIVITY}",
        "threshold_source": threshold_source},
        version=args.out.name, metrics_key="held_out_real",
        extra={"data_source": source, "not_trained": {
            "labels": not_trained,
            "output": f"fixed at sigmoid({DISABLED_BIAS:g}), threshold "
                      f"{DISABLED_THRESHOLD}: never flagged"}})
    LOGGER.info("wrote %s in %.0f s", args.out, time.time() - started)
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path,
                   help=f"bundle folder (simulated default models/chest/{VERSION}; required "
                        "with --real-format, named by version, e.g. models/chest/2.0.0)")
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
    r = p.add_argument_group("real data (instead of simulation; see training/chest/real.py)")
    r.add_argument("--real-format", choices=("nih", "chexpert", "folder"))
    r.add_argument("--real-root", type=Path, metavar="DIR",
                   help="dataset folder (NIH: holds Data_Entry_2017.csv and images/; "
                        "CheXpert: the folder the CSV paths start in; folder: the images)")
    r.add_argument("--real-csv", type=Path, metavar="CSV",
                   help="label table (default NIH: ROOT/Data_Entry_2017.csv, CheXpert: "
                        "ROOT/train.csv; folder: path,labels[,patient], else sub-folder names)")
    r.add_argument("--real-images", type=Path, metavar="DIR",
                   help="NIH image folder (default ROOT/images, else ROOT)")
    r.add_argument("--uncertain", choices=sorted(UNCERTAIN_POLICIES), default="ignore",
                   help="CheXpert uncertain (-1) labels: ignore = masked (default), ones, zeros")
    r.add_argument("--blank", choices=sorted(BLANK_POLICIES), default="unknown",
                   help="CheXpert blank (not mentioned) labels: unknown = masked (default) or "
                        "negative (common practice; far more negatives)")
    r.add_argument("--init-from", type=Path, metavar="BUNDLE",
                   help="fine-tune this bundle's weights (e.g. models/chest/1.0.0); its width "
                        "and input size are kept; learning rate a quarter of the preset's")
    r.add_argument("--epochs", type=int, default=10)
    r.add_argument("--val-fraction", type=float, default=0.1, help="of patients")
    r.add_argument("--test-fraction", type=float, default=0.2, help="of patients, held out")
    r.add_argument("--workers", type=int, default=min(8, max(0, (os.cpu_count() or 1) - 1)),
                   help="processes reading images (0: in this process)")
    return p


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    args.argv = argv
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
    if args.real_format is not None:
        if args.real_root is None or args.out is None:
            p.error("--real-format needs --real-root and --out")
        if not re.fullmatch(r"\d+(\.\d+)*", args.out.name):
            p.error(f"--out {args.out}: name the folder by version, e.g. models/chest/2.0.0 "
                    "(the daemon finds bundles as <models>/chest/<version>)")
        if args.init_from is not None and args.out.resolve() == args.init_from.resolve():
            p.error("--out must differ from --init-from")
        if args.init_from is not None and args.width is not None:
            p.error("--width comes from the --init-from bundle")
        return train_real(args, cfg, device)
    args.out = args.out or Path("models/chest") / VERSION
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
                 metrics: dict[str, Any], training: dict[str, Any], *, version: str = VERSION,
                 metrics_key: str = "held_out_simulated",
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """weights.pt, model.json and MODEL_CARD.md (generated from model.json).

    ``metrics_key`` ``held_out_real`` marks a bundle trained on real data: no simulation
    or NIH-prevalence block, and ``extra`` (data source, untrained labels) is added.
    """
    from training.chest.card import model_card

    out.mkdir(parents=True, exist_ok=True)
    weights = out / "weights.pt"
    torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
               weights)
    simulated = metrics_key == "held_out_simulated"
    spec: dict[str, Any] = {
        "name": "chest", "version": version, "architecture": "chestnet",
        "weights": weights.name, "sha256": sha256_file(weights),
        "labels": list(LABELS), "urgent": list(URGENT),
        "input": {"shape": [1, cfg["input_size"], cfg["input_size"]], "size": cfg["input_size"],
                  "width": cfg["width"], "percentiles": list(PERCENTILES),
                  "pad": "to square, aspect ratio kept", "polarity": "MONOCHROME2"},
        "preprocessing": PREPROCESSING_VERSION,
        "thresholds": thresholds,
        **({"prevalence_nih": {label: NIH_PREVALENCE[label] for label in LABELS},
            "simulation": {"shape": [cfg["sim_size"], cfg["sim_size"]], "field_mm": 430.0}}
           if simulated else {}),
        **(extra or {}),
        "training": training,
        "metrics": {metrics_key: metrics},
    }
    (out / "model.json").write_text(json.dumps(spec, indent=2) + "\n")
    (out / "MODEL_CARD.md").write_text(model_card(spec))
    return spec


if __name__ == "__main__":
    raise SystemExit(main())
