"""Re-tune a physics-estimate EARL bundle's stage-1 threshold against labels that repeat.

    python -m training.earl.retune --bundle models/earl/2.1.0 --n-per-class 50 \
        --seed 20261208 --workers 2 --held-out-report earl-2.1.0.json \
        --out models/earl/2.2.0 [--cache tune.json]

Why: a stored training label is the class of a 16-measurement phantom average, and the
rejection sampler keeps a borderline draw whenever that noisy average lands on the wanted
side. Tuned against such labels (``training.earl.physest``), the threshold rewards calling
borderline reconstructions EARL (training/README.md, "The labels are the limit"). Here
the threshold is chosen on fresh simulated cases (their own seeds: never training or
held-out cases) whose true parameters are labelled again from
:data:`PRECISE_POSITIONS` x :data:`PRECISE_NOISE_DRAWS` = 64 phantom measurements.

The estimator weights are copied unchanged (same sha256), so the held-out P(EARL) of the
new bundle is the source bundle's: the held-out metrics are read from a
``training.earl.analyze`` report of the source bundle (its 240 held-out cases, checked by
checksum, split and seeds) and scored with the new threshold, against the stored labels
as in every other card. Threshold-dependent blocks of the source (protocol families,
error analysis) are dropped; rerun ``training.earl.protocols --write-bundle`` and
``training.earl.analyze --from-report --write-bundle`` on the new bundle.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import functools
import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np

from qcd.analyzers.earl import physest
from qcd.analyzers.earl.analyzer import classify_volume
from qcd.analyzers.earl.decision import Thresholds
from qcd.bundles import Bundle
from training.earl.analyze import bundle_at, load_report
from training.earl.cases import case_tasks
from training.earl.physest import (
    best_threshold,
    cached_rows,
    threshold_table,
    write_spec,
)
from training.earl.simulate import label_params, simulate_case
from training.earl.train import case_metrics

LOGGER = logging.getLogger("training.earl.retune")
PRECISE_POSITIONS: Final = 16
PRECISE_NOISE_DRAWS: Final = 4
PRECISE_SALT: Final = 777
"""The precise label of the case with seed s uses ``default_rng([s, PRECISE_SALT])``."""
DROPPED: Final = ("protocols", "protocols_filtered", "error_analysis")
"""Source blocks measured with the source's threshold: stale in the re-tuned bundle."""


def precise_label(params: Any, seed: int) -> str:
    """The class of the phantom's mean RCs over 64 measurements (vs 16 for training)."""
    return label_params(params, np.random.default_rng([seed, PRECISE_SALT]),
                        PRECISE_POSITIONS, PRECISE_NOISE_DRAWS)[0]


def tune_row(task: tuple[int, str], bundle_dir: str, sampler: str) -> dict[str, Any]:
    """One fresh case as training simulates it, the bundle's P(EARL) and its precise
    label. Runs in a worker."""
    seed, label = task
    volume, params, got, _ = simulate_case(np.random.default_rng(seed), label, sampler)
    result = classify_volume(volume, params.voxel_mm, bundle_at(bundle_dir))
    return {"seed": seed, "label": got, "precise_label": precise_label(params, seed),
            "p_earl": result.p_earl, "p_earl2": result.p_earl2,
            "target": [params.fwhm_mm, params.overshoot, params.cov]}


def label_table(rows: Sequence[dict[str, Any]], key: str) -> dict[str, float]:
    """:func:`~training.earl.physest.threshold_table` of the rows' P(EARL) against the
    labels in ``key``."""
    return threshold_table(np.asarray([r["p_earl"] for r in rows]),
                                   np.asarray([r[key] != "clinical" for r in rows]))


def held_out_cases(report_path: Path, source: Bundle) -> list[dict[str, Any]]:
    """The source bundle's held-out cases from a ``training.earl.analyze`` report
    (:func:`~training.earl.analyze.load_report`: its weights, split and case seeds).

    Raises
    ------
    ValueError
        The report is of other weights, another split or other cases.
    """
    return list(load_report(report_path, source, "test")["cases"])


def retuned_spec(source: Bundle, version: str, chosen: float, tuning: dict[str, Any],
                 held_out: Sequence[dict[str, Any]], retune: dict[str, Any]) -> dict[str, Any]:
    """The new bundle's model.json: the source's, with the threshold, its tuning, the
    held-out metrics under it and the retune record; threshold-dependent blocks dropped."""
    spec = {k: copy.deepcopy(v) for k, v in source.spec.items() if k not in DROPPED}
    spec["version"] = version
    spec["thresholds"] = {**spec["thresholds"], "stage1": chosen}
    spec["threshold_tuning"] = tuning
    spec["retune"] = retune
    labels = [c["label"] for c in held_out]
    metrics = case_metrics(labels, [(c["p_earl"], c["p_earl2"]) for c in held_out],
                           Thresholds.from_spec(spec))
    keys = ("stage1_accuracy", "stage2_accuracy", "accuracy_per_class")
    spec["metrics"] = {"held_out_simulated": metrics}
    spec["comparison_same_cases"] = {
        f"earl/{version} ({physest.ARCHITECTURE})": {k: metrics[k] for k in keys},
        **spec.get("comparison_same_cases", {})}
    return spec


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", type=Path, required=True, help="the physest bundle to re-tune")
    p.add_argument("--out", type=Path, required=True, help="new bundle folder models/earl/<v>")
    p.add_argument("--n-per-class", type=int, default=50)
    p.add_argument("--seed", type=int, default=20261208,
                   help="seed of the tuning cases (case_tasks); not the training seed")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--held-out-report", type=Path, required=True,
                   help="training.earl.analyze --out report of the source's held-out cases")
    p.add_argument("--cache", type=Path, help="JSON of the tuning rows (read if it matches)")
    args = p.parse_args(argv)
    if args.n_per_class < 1 or args.workers < 1:
        p.error("--n-per-class and --workers must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    source_dir = args.bundle.resolve()
    source = bundle_at(str(source_dir))
    if source.spec.get("architecture") != physest.ARCHITECTURE:
        p.error(f"{args.bundle} is not a physics-estimate ({physest.ARCHITECTURE}) bundle")
    training_seed = int(source.spec["training"]["seed"])
    if args.seed == training_seed:
        p.error("--seed must differ from the source's training seed (fresh cases only)")
    try:
        held_out = held_out_cases(args.held_out_report, source)
    except ValueError as exc:
        p.error(str(exc))
    sampler = str(source.spec["training"].get("sampler", "sim-1"))
    request = {"bundle": source.sha256, "n_per_class": args.n_per_class, "seed": args.seed,
               "sampler": sampler, "precise": [PRECISE_POSITIONS, PRECISE_NOISE_DRAWS]}
    rows, seconds = cached_rows(args.cache, request,
                                functools.partial(tune_row, bundle_dir=str(source_dir),
                                                  sampler=sampler),
                                case_tasks(args.n_per_class, args.seed), args.workers,
                                "tuning cases")
    table = label_table(rows, "precise_label")
    chosen = best_threshold(table)
    tuning = {
        "cases": len(rows), "seed": args.seed,
        "labels": f"the class of the phantom's mean RCs over {PRECISE_POSITIONS} "
                  f"positions x {PRECISE_NOISE_DRAWS} noise draws",
        "precise_differs_from_stored": sum(r["precise_label"] != r["label"] for r in rows),
        "stage1_accuracy_by_threshold": table,
        "stage1_accuracy_by_threshold_stored_labels": label_table(rows, "label"),
        "chosen": chosen, "retuned_from": f"earl/{source.version}"}
    LOGGER.info("stage-1 threshold against precise labels: %s", tuning)
    command = (f"python -m training.earl.retune --bundle {args.bundle} --n-per-class "
               f"{args.n_per_class} --seed {args.seed} --workers {args.workers} "
               f"--held-out-report {args.held_out_report.name} --out {args.out}")
    retune = {"command": command, "date": dt.date.today().isoformat(),
              "seconds": round(seconds, 1), "workers": args.workers,
              "source": {"version": source.version, "sha256": source.sha256}}
    spec = retuned_spec(source, args.out.name, chosen, tuning, held_out, retune)
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source.path / source.spec["weights"], args.out / source.spec["weights"])
    write_spec(Bundle("earl", args.out.name, args.out, spec, spec["sha256"]))
    m = spec["metrics"]["held_out_simulated"]
    LOGGER.info("held-out stage 1 %.4f, stage 2 %.4f, per class %s (threshold %.2f)",
                m["stage1_accuracy"], m["stage2_accuracy"], m["accuracy_per_class"], chosen)
    print(json.dumps({"threshold_tuning": tuning, "metrics": m}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
