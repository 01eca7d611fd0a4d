"""Train the physics-estimate EARL bundle (architecture ``physest``).

    python -m training.earl.physest --n-per-class 400 --seed 20261207 --workers 2 \
        [--epochs 800] [--extra-cases 1200] [--phantom-rng per-draw] \
        --out models/earl/2.1.0 [--compare models/earl/1.0.0] [--cache cases.json]

Simulates labelled cases exactly as ``training.earl.train`` does (same seeds per case,
same phantom labels, same stratified held-out split), computes the
:mod:`qcd.analyzers.earl.features` vector of each, and fits
:class:`qcd.analyzers.earl.physest.ParamNet` to the reconstruction parameters the
simulation knows (FWHM, overshoot, COV). The spread of its out-of-fold residuals on the
training cases becomes the bundle's ``estimator_sd``. Held-out cases are classified the
way the daemon does (:func:`qcd.analyzers.earl.analyzer.classify_volume`: estimate, then
the virtual phantom), and, with ``--compare``, by another bundle on the very same cases.
Runs on the CPU: the regressor trains in seconds; simulation and the phantom dominate.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from qcd.analyzers.earl.analyzer import EarlResult, classify_volume
from qcd.analyzers.earl.decision import Thresholds
from qcd.analyzers.earl.features import FEATURE_NAMES, FEATURES_VERSION, image_features
from qcd.analyzers.earl import physest
from qcd.analyzers.earl.physest import ARCHITECTURE, PARAMS, ParamNet
from qcd.bundles import Bundle, sha256_file
from training.earl.analyze import bundle_at, map_in_order
from training.earl.cases import case_tasks, split_indices
from training.earl.simulate import DEFAULT_SAMPLER, SAMPLERS, simulate_case, simulate_unlabelled
from training.earl.train import case_metrics

LOGGER = logging.getLogger("training.earl.physest")
T = TypeVar("T")
EPOCHS = 400
LEARNING_RATE = 3e-3
WEIGHT_DECAY = 1e-3
FOLDS = 5
TEST_FRACTION = 0.2
TUNE_CASES = 300
EXTRA_STREAM = 1
"""Seed-stream tag of the unlabelled regression cases (``--extra-cases``)."""
STAGE1_GRID = tuple(round(0.1 + 0.05 * i, 2) for i in range(9))
"""Stage-1 thresholds tried on out-of-fold training estimates (0.1-0.5). P(EARL) is the
share of phantom draws around the estimate that are compliant; the EARL regions are
narrow (an EARL1 reconstruction's FWHM sits in a band ~3 mm wide, in a corner of the
overshoot and noise ranges), so a spread of draws about a correct estimate leaves them
often, and 0.5 calls too many EARL reconstructions clinical."""


def make_row(task: tuple[int, str], sampler: str, compare: str | None) -> dict[str, Any]:
    """Simulate one case; its features, true parameters, label (and the compared
    bundle's probabilities when ``compare`` names one). Runs in a worker."""
    seed, label = task
    volume, params, got, rc = simulate_case(np.random.default_rng(seed), label, sampler)
    row: dict[str, Any] = {
        "seed": seed, "label": got, "voxel_mm": list(params.voxel_mm),
        "target": [params.fwhm_mm, params.overshoot, params.cov],
        "features": image_features(volume, params.voxel_mm).tolist()}
    if compare:
        result = classify_volume(volume, params.voxel_mm, bundle_at(compare), all_stages=True)
        row["compare"] = [result.p_earl, result.p_earl2]
    return row


def make_row_job(job: tuple[tuple[int, str], str, str | None]) -> dict[str, Any]:
    return make_row(*job)


def make_extra_row(index: int, seed: int) -> dict[str, Any]:
    """One unlabelled regression case (:func:`simulate_unlabelled`); its own seed stream,
    disjoint from the labelled cases'. Runs in a worker."""
    volume, params = simulate_unlabelled(np.random.default_rng([seed, EXTRA_STREAM, index]))
    return {"index": index, "voxel_mm": list(params.voxel_mm),
            "target": [params.fwhm_mm, params.overshoot, params.cov],
            "features": image_features(volume, params.voxel_mm).tolist()}


def fit_params(x: np.ndarray, y: np.ndarray, seed: int, epochs: int = EPOCHS) -> ParamNet:
    """Full-batch AdamW on the standardised targets (a few seconds on a CPU)."""
    torch.manual_seed(seed)
    net = ParamNet(x.shape[1])
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    net.x_mean.copy_(xt.mean(0))
    net.x_std.copy_(xt.std(0).clamp_min(1e-6))
    net.y_mean.copy_(yt.mean(0))
    net.y_std.copy_(yt.std(0).clamp_min(1e-6))
    target = (yt - net.y_mean) / net.y_std
    opt = torch.optim.AdamW(net.parameters(), LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    net.train()
    for _ in range(epochs):
        opt.zero_grad()
        loss = torch.mean((net.normalised(xt) - target) ** 2)
        loss.backward()
        opt.step()
    return net.eval()


@torch.inference_mode()
def predict(net: ParamNet, x: np.ndarray) -> np.ndarray:
    return net(torch.tensor(x, dtype=torch.float32)).numpy()


def out_of_fold(x: np.ndarray, y: np.ndarray, seed: int,
                extra: tuple[np.ndarray, np.ndarray] | None = None, epochs: int = EPOCHS
                ) -> np.ndarray:
    """Predictions of each training case by a model that did not see it (K folds).

    ``extra`` (features, targets) of unlabelled regression cases join every fold's
    training set and are never predicted: the residuals describe the labelled cases,
    the distribution the daemon's decisions are judged on."""
    order = np.random.default_rng(seed).permutation(len(x))
    pred = np.zeros_like(y)
    for k, fold in enumerate(np.array_split(order, FOLDS)):
        rest = np.setdiff1d(order, fold)
        xr, yr = x[rest], y[rest]
        if extra is not None:
            xr, yr = np.concatenate([xr, extra[0]]), np.concatenate([yr, extra[1]])
        pred[fold] = predict(fit_params(xr, yr, seed + 1 + k, epochs), x[fold])
    return pred


def residual_stats(pred: np.ndarray, y: np.ndarray) -> dict[str, dict[str, float]]:
    err = pred - y
    return {k: {"sd": float(err[:, i].std()), "mae": float(np.abs(err[:, i]).mean()),
                "bias": float(err[:, i].mean())} for i, k in enumerate(PARAMS)}


def classify_row(job: tuple[list[float], list[float]], bundle: Bundle) -> EarlResult:
    """The daemon's decision from a precomputed feature vector (runs in a worker)."""
    features, voxel = job
    grid = (float(voxel[0]), float(voxel[1]), float(voxel[2]))
    return classify_volume(None, grid, bundle, features=np.asarray(features, np.float32))


def phantom_p_earl(job: tuple[list[float], list[float]], sd: dict[str, float],
                   rng_scheme: str = "sequential") -> float:
    """P(EARL) of the virtual phantom for one estimate row (runs in a worker)."""
    estimate, voxel = job
    grid = (float(voxel[0]), float(voxel[1]), float(voxel[2]))
    return physest.virtual_phantom(physest.as_params(estimate), grid, sd,
                                   rng_scheme=rng_scheme).p_earl


def tune_stage1(labels: list[str], estimates: np.ndarray, voxels: list[list[float]],
                sd: dict[str, float], seed: int, workers: int, n: int = TUNE_CASES,
                rng_scheme: str = "sequential") -> dict[str, Any]:
    """Stage-1 threshold with the best accuracy on ``n`` training cases' out-of-fold
    estimates (ties: the highest threshold, the fewer EARL calls). Held-out cases take
    no part."""
    pick = np.sort(np.random.default_rng(seed).choice(len(labels), min(n, len(labels)),
                                                     replace=False))
    job = functools.partial(phantom_p_earl, sd=sd, rng_scheme=rng_scheme)
    p = np.asarray(list(map_in_order(job, [(estimates[i].tolist(), voxels[i]) for i in pick],
                                     workers)))
    table = threshold_table(p, np.asarray([labels[i] != "clinical" for i in pick]))
    return {"cases": int(len(pick)), "stage1_accuracy_by_threshold": table,
            "chosen": best_threshold(table)}


def threshold_table(p_earl: np.ndarray, earl: np.ndarray) -> dict[str, float]:
    """Stage-1 accuracy per :data:`STAGE1_GRID` threshold of P(EARL) against ``earl``."""
    return {f"{t:.2f}": float(np.mean((p_earl >= t) == earl)) for t in STAGE1_GRID}


def best_threshold(table: dict[str, float]) -> float:
    """The best accuracy's threshold; ties go to the highest (the fewer EARL calls)."""
    best = max(table.values())
    return max(float(t) for t, acc in table.items() if acc == best)


def cached_rows(cache: Path | None, request: dict[str, Any], job: Callable[[T], dict[str, Any]],
                tasks: Sequence[T], workers: int, what: str
                ) -> tuple[list[dict[str, Any]], float]:
    """``job`` over ``tasks`` (and the seconds it took), or the rows ``cache`` holds when it
    was written for this exact ``request``; a fresh result is written to ``cache``."""
    if cache and cache.is_file():
        cached = json.loads(cache.read_text())
        if cached.get("request") == request:
            LOGGER.info("read %d %s from %s", len(cached["rows"]), what, cache)
            return list(cached["rows"]), float(cached.get("seconds", float("nan")))
    started = time.time()
    rows = []
    for i, row in enumerate(map_in_order(job, tasks, workers)):
        rows.append(row)
        if (i + 1) % 50 == 0:
            LOGGER.info("simulated %d/%d %s", i + 1, len(tasks), what)
    seconds = time.time() - started
    if cache:
        cache.write_text(json.dumps({"request": request, "rows": rows, "seconds": seconds}))
    return rows, seconds


def load_rows(args: argparse.Namespace) -> tuple[list[dict[str, Any]], float]:
    """Simulated rows and the seconds simulating them took, from ``--cache`` when it
    holds this exact request."""
    request = {"n_per_class": args.n_per_class, "seed": args.seed, "sampler": args.sampler,
               "features": FEATURES_VERSION, "compare": str(args.compare or "")}
    tasks = case_tasks(args.n_per_class, args.seed)
    held_out = set(split_indices([label for _, label in tasks], args.seed, TEST_FRACTION)[1])
    compare = str(args.compare.resolve()) if args.compare else None
    jobs = [(task, args.sampler, compare if i in held_out else None)
            for i, task in enumerate(tasks)]
    return cached_rows(args.cache, request, make_row_job, jobs, args.workers, "cases")


def load_extra_rows(args: argparse.Namespace) -> tuple[list[dict[str, Any]], float]:
    """``--extra-cases`` unlabelled regression rows (and seconds), cached beside ``--cache``
    as ``<stem>-extra.json`` when it holds this exact request."""
    if args.extra_cases <= 0:
        return [], 0.0
    request = {"extra_cases": args.extra_cases, "seed": args.seed, "features": FEATURES_VERSION}
    cache = args.cache.with_name(args.cache.stem + "-extra.json") if args.cache else None
    return cached_rows(cache, request, functools.partial(make_extra_row, seed=args.seed),
                       range(args.extra_cases), args.workers, "regression cases")


def save_weights(out: Path, net: ParamNet, thresholds: Thresholds,
                 spec_extra: dict[str, Any]) -> Bundle:
    """Write the weights; the bundle they make, held in memory until it is evaluated."""
    out.mkdir(parents=True, exist_ok=True)
    weights = out / "weights.pt"
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, weights)
    spec = {"name": "earl", "version": out.name, "architecture": ARCHITECTURE,
            "weights": weights.name, "sha256": sha256_file(weights),
            "labels": ["clinical", "EARL1", "EARL2", "indeterminate"],
            "input": {"features": list(FEATURE_NAMES), "units": "SUVbw"},
            "preprocessing": FEATURES_VERSION,
            "thresholds": vars(thresholds), **spec_extra}
    return Bundle("earl", out.name, out, spec, spec["sha256"])


def write_spec(bundle: Bundle) -> None:
    """model.json and the card beside the weights: the bundle is complete."""
    from training.earl.card import model_card

    (bundle.path / "model.json").write_text(json.dumps(bundle.spec, indent=2) + "\n")
    (bundle.path / "MODEL_CARD.md").write_text(model_card(bundle.spec))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-per-class", type=int, default=400)
    p.add_argument("--seed", type=int, default=20261207)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--sampler", choices=SAMPLERS, default=DEFAULT_SAMPLER)
    p.add_argument("--out", type=Path, required=True, help="bundle folder models/earl/<version>")
    p.add_argument("--compare", type=Path, help="another EARL bundle to run on the held-out cases")
    p.add_argument("--cache", type=Path, help="JSON of the simulated rows (read if it matches)")
    p.add_argument("--epochs", type=int, default=EPOCHS, help="full-batch AdamW steps")
    p.add_argument("--phantom-rng", choices=physest.RNG_SCHEMES, default="sequential",
                   help="the virtual phantom's random-number scheme the bundle records")
    p.add_argument("--extra-cases", type=int, default=0,
                   help="unlabelled regression cases added to the estimator's training data")
    args = p.parse_args(argv)
    if args.n_per_class < 10 or args.workers < 1 or args.extra_cases < 0 or args.epochs < 1:
        p.error("--n-per-class must be >= 10, --workers and --epochs >= 1, --extra-cases >= 0")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    rows, simulated = load_rows(args)
    extra_rows, extra_simulated = load_extra_rows(args)
    train_idx, test_idx = split_indices([r["label"] for r in rows], args.seed, TEST_FRACTION)
    x = np.asarray([rows[i]["features"] for i in train_idx], dtype=np.float32)
    y = np.asarray([rows[i]["target"] for i in train_idx], dtype=np.float32)
    regression = (
        np.asarray([r["features"] for r in extra_rows], dtype=np.float32).reshape(-1, x.shape[1]),
        np.asarray([r["target"] for r in extra_rows], dtype=np.float32).reshape(-1, 3))
    t0 = time.time()
    oof_pred = out_of_fold(x, y, args.seed, regression if extra_rows else None, args.epochs)
    oof = residual_stats(oof_pred, y)
    net = fit_params(np.concatenate([x, regression[0]]), np.concatenate([y, regression[1]]),
                     args.seed, args.epochs)
    fit_seconds = time.time() - t0
    sd = {k: v["sd"] for k, v in oof.items()}
    tuning = tune_stage1([rows[i]["label"] for i in train_idx], oof_pred,
                         [rows[i]["voxel_mm"] for i in train_idx], sd, args.seed, args.workers,
                         rng_scheme=args.phantom_rng)
    LOGGER.info("stage-1 threshold on out-of-fold training estimates: %s", tuning)
    test = [rows[i] for i in test_idx]
    held_pred = predict(net, np.asarray([r["features"] for r in test], dtype=np.float32))
    held_err = residual_stats(held_pred, np.asarray([r["target"] for r in test]))
    LOGGER.info("estimator out-of-fold %s; held-out %s", oof, held_err)
    command = (f"python -m training.earl.physest --n-per-class {args.n_per_class} "
               f"--seed {args.seed}"
               + (f" --sampler {args.sampler}" if args.sampler != DEFAULT_SAMPLER else "")
               + (f" --epochs {args.epochs}" if args.epochs != EPOCHS else "")
               + (f" --extra-cases {args.extra_cases}" if args.extra_cases else "")
               + (f" --phantom-rng {args.phantom_rng}" if args.phantom_rng != "sequential"
                  else "")
               + (f" --compare {args.compare}" if args.compare else "")
               + f" --out {args.out}")
    extra: dict[str, Any] = {
        "estimator_sd": sd, "threshold_tuning": tuning,
        **({"phantom": {"rng": args.phantom_rng}} if args.phantom_rng != "sequential" else {}),
        "training": {"seed": args.seed, "epochs": args.epochs, "n_train_cases": len(train_idx),
                     "n_test_cases": len(test_idx), "sampler": args.sampler,
                     "n_regression_cases": len(extra_rows),
                     "data": "simulated FDG PET, see MODEL_CARD.md", "trained_on": "CPU",
                     "seconds": round(fit_seconds, 1),
                     "simulation_seconds": round(simulated + extra_simulated, 1),
                     "workers": args.workers,
                     "date": dt.date.today().isoformat(), "command": command},
        "estimator": {"out_of_fold_train": oof, "held_out": held_err}}
    bundle = save_weights(args.out, net, Thresholds(stage1=tuning["chosen"]), extra)
    job = functools.partial(classify_row, bundle=bundle)
    results = list(map_in_order(job, [(r["features"], r["voxel_mm"]) for r in test],
                                args.workers))
    thresholds = Thresholds.from_spec(bundle.spec)
    labels = [r["label"] for r in test]
    metrics = case_metrics(labels, [(r.p_earl, r.p_earl2 if r.p_earl2 is not None else 0.5)
                                    for r in results], thresholds)
    keys = ("stage1_accuracy", "stage2_accuracy", "accuracy_per_class")
    comparison: dict[str, Any] = {
        f"earl/{bundle.version} ({ARCHITECTURE})": {k: metrics[k] for k in keys}}
    if args.compare:
        other: Bundle = bundle_at(str(args.compare.resolve()))
        cm = case_metrics(labels, [tuple(r["compare"]) for r in test],
                          Thresholds.from_spec(other.spec))
        comparison[f"{other.name}/{other.version} ({other.spec.get('architecture')})"] = {
            k: cm[k] for k in keys}
    bundle.spec["metrics"] = {"held_out_simulated": metrics}
    bundle.spec["comparison_same_cases"] = comparison
    write_spec(bundle)
    LOGGER.info("held-out stage 1 %.4f, stage 2 %.4f, per class %s; comparison %s",
                metrics["stage1_accuracy"], metrics["stage2_accuracy"],
                metrics["accuracy_per_class"], comparison)
    print(json.dumps({"metrics": metrics, "comparison": comparison,
                      "estimator": extra["estimator"]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
