"""Error analysis of an EARL bundle on the simulated cases it was trained and tested on.

    python -m training.earl.analyze --bundle models/earl/1.0.0 [--relabels 8] \
        [--limit N] [--workers W] [--split test|train] --out REPORT.json \
        [--markdown REPORT.md] [--write-bundle]

The held-out cases are rebuilt exactly as ``training.earl.train`` made them (the task
seeds of :func:`~training.earl.cases.case_tasks`, the split of
:func:`~training.earl.cases.split_indices` with the bundle's seed and sizes) and run
through the daemon's preprocessing and the bundle's weights on the CPU
(:func:`~training.earl.train.case_probabilities`, which ``evaluate`` also uses; for a
physics-estimate bundle the daemon's :func:`~qcd.analyzers.earl.analyzer.classify_volume`,
as ``training.earl.physest`` evaluates its held-out cases). Per case
the report records the true and predicted class, the reconstruction parameters, whether
a clinical case is a hard negative (drawn from an EARL proposal box), the label's
stability over ``--relabels`` fresh phantom labellings of the same parameters, the RC
margin (:func:`qcd.analyzers.earl.phantom.class_margin`) and where the phantom's RCs lie
relative to the two bands. The summary gives accuracy overall, on stable labels, without
hard negatives, by margin and by in-plane voxel size, and the physics-relabel ceiling:
the stage-1 accuracy of the majority of the fresh relabels against the stored label.

A whole held-out set (270 cases of ``models/earl/1.0.0``) takes about 33 minutes on two
CPU cores with 8 relabels; the 240 of ``models/earl/2.1.0`` 11 minutes with 4.
``--write-bundle`` stores the summary as the ``error_analysis``
block of the bundle's ``model.json`` (weights untouched) and rewrites its model card.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import functools
import json
import logging
import math
import multiprocessing as mp
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import numpy as np
import torch
from scipy import stats

from qcd.analyzers.earl import phantom, physest
from qcd.analyzers.earl.analyzer import classify_volume, load_cnn
from qcd.analyzers.earl.decision import Thresholds, decide
from qcd.analyzers.earl.model import EarlModel
from qcd.analyzers.earl.phantom import RecoveryCoefficients, ReconParams
from qcd.bundles import Bundle, load_bundle
from training.earl import simulate
from training.earl.card import error_analysis_tables, record
from training.earl.cases import LABELS, Variant, case_tasks, make_case, split_indices
from training.earl.train import case_metrics, case_probabilities

LOGGER = logging.getLogger("training.earl.analyze")
T = TypeVar("T")
R = TypeVar("R")
RELABEL_SALT: Final = 4242
"""Relabel k of the case with seed s uses ``default_rng([s, k, RELABEL_SALT])``."""
STABLE: Final = 0.9
"""A label is stable when at least this share of the fresh relabels agrees with it (stage 1)."""
STAGE1_TARGET: Final = 0.99
MARGIN_EDGES: Final = (0.0, 0.01, 0.02, 0.03, 0.05, 0.1)
ABSTAIN_BANDS: Final = ((0.2, 0.8), (0.1, 0.9))
GROUPS: Final = ("between the bands", "too sharp or noisy (> EARL2)", "mixed",
                 "too blurry (< EARL1)", "background COV > 15%")


@dataclass(frozen=True)
class CaseResult:
    """One simulated case: how it was made, what the model said, how firm its label is."""

    label: str
    index: int
    """Position within its class in :func:`~training.earl.cases.case_tasks` (``i``)."""
    seed: int
    source: str
    """Proposal box of the accepted draw: ``prior``, ``EARL1`` or ``EARL2``."""
    tries: int
    params: ReconParams
    rc: RecoveryCoefficients
    p_earl: float
    p_earl2: float
    relabels: tuple[str, ...]

    @property
    def hard_negative(self) -> bool:
        return self.label == "clinical" and self.source != "prior"

    @property
    def stage1_stability(self) -> float | None:
        """Share of fresh relabels on the same side of clinical/EARL as the stored label."""
        if not self.relabels:
            return None
        return sum(_earl(r) == _earl(self.label) for r in self.relabels) / len(self.relabels)

    def stage1_correct(self, thresholds: Thresholds) -> bool:
        return (self.p_earl >= thresholds.stage1) == _earl(self.label)

    def to_dict(self, thresholds: Thresholds) -> dict[str, Any]:
        """JSON-ready record with the derived fields."""
        stability = (None if not self.relabels else
                     sum(r == self.label for r in self.relabels) / len(self.relabels))
        return {
            "label": self.label, "index": self.index, "seed": self.seed,
            "predicted": decide(self.p_earl, self.p_earl2 if self.p_earl >= thresholds.stage1
                                else None, thresholds),
            "stage1_correct": self.stage1_correct(thresholds),
            "p_earl": self.p_earl, "p_earl2": self.p_earl2,
            "source": self.source, "hard_negative": self.hard_negative, "tries": self.tries,
            "voxel_mm": list(self.params.voxel_mm), "fwhm_mm": self.params.fwhm_mm,
            "overshoot": self.params.overshoot, "cov": self.params.cov,
            "noise_fwhm_mm": self.params.noise_fwhm_mm,
            "relabels": list(self.relabels), "stability": stability,
            "stage1_stability": self.stage1_stability,
            "rc_margin": phantom.class_margin(self.rc), "group": rc_group(self.rc),
            "rc": asdict(self.rc),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CaseResult:
        """Inverse of :meth:`to_dict` (derived fields are recomputed, not read)."""
        rc: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                              for k, v in d["rc"].items()}
        voxel = d["voxel_mm"]
        return cls(d["label"], int(d["index"]), int(d["seed"]), d["source"], int(d["tries"]),
                   ReconParams((voxel[0], voxel[1], voxel[2]), d["fwhm_mm"], d["overshoot"],
                               d["cov"], d.get("noise_fwhm_mm", 0.0)),
                   RecoveryCoefficients(**rc), float(d["p_earl"]), float(d["p_earl2"]),
                   tuple(d["relabels"]))


def _earl(label: str) -> bool:
    return label != "clinical"


def rc_group(rc: RecoveryCoefficients) -> str:
    """Where a phantom's RCs lie relative to the bands (one of :data:`GROUPS` if clinical).

    Compliant phantoms are ``inside EARL1`` / ``inside EARL2``. A clinical one is, in this
    order: ``background COV > 15%``; ``too blurry`` if any RC is below its EARL1 band;
    ``too sharp or noisy`` if some RC is above its EARL2 band and none below it;
    ``between the bands`` if some RC is above its EARL1 band and some below its EARL2
    band and none above it (sharper than EARL1 allows, blurrier than EARL2 allows);
    otherwise ``mixed``.
    """
    label = phantom.classify(rc)
    if label != "clinical":
        return f"inside {label}"
    if rc.background_cov > phantom.MAX_BACKGROUND_COV + 1e-9:
        return GROUPS[4]
    below1, above1 = _outside(rc, phantom.EARL1_RCMAX, phantom.EARL1_RCMEAN)
    below2, above2 = _outside(rc, phantom.EARL2_RCMAX, phantom.EARL2_RCMEAN)
    if below1:
        return GROUPS[3]
    if above2 and not below2:
        return GROUPS[1]
    if above1 and below2 and not above2:
        return GROUPS[0]
    return GROUPS[2]


def _outside(rc: RecoveryCoefficients, *bands: Any) -> tuple[bool, bool]:
    """(some RC below its band, some RC above its band)."""
    pairs = [(v, band[round(d)]) for values, band in zip((rc.rc_max, rc.rc_mean), bands)
             for v, d in zip(values, rc.diameters_mm)]
    return (any(v < lo - 1e-9 for v, (lo, _) in pairs),
            any(v > hi + 1e-9 for v, (_, hi) in pairs))


# --- rebuilding and running the cases ---------------------------------------------------------

@dataclass(frozen=True)
class Task:
    """One case of :func:`~training.earl.cases.case_tasks`: ``make_case((seed, label))``."""

    seed: int
    label: str
    index: int
    """Position within its class (``i`` in ``case_tasks``)."""


def bundle_tasks(spec: dict[str, Any], split: str = "test") -> list[Task]:
    """The held-out (or training) cases of a bundle trained on simulated data.

    Sizes and seed come from ``model.json``'s ``training`` block; the order is that of
    :func:`~training.earl.cases.split_indices` (a random permutation within each class).

    Raises
    ------
    ValueError
        The bundle was not trained on simulated cases with a held-out split, or ``split``
        is not ``test`` or ``train``.
    """
    if split not in ("test", "train"):
        raise ValueError(f"split must be 'test' or 'train', got {split!r}")
    training = spec.get("training", {})
    n_train, n_test = int(training.get("n_train_cases", 0)), int(training.get("n_test_cases", 0))
    n_per_class, rest = divmod(n_train + n_test, len(LABELS))
    if not n_test or rest or "seed" not in training:
        raise ValueError(f"bundle {spec.get('name')}/{spec.get('version')} has no simulated "
                         f"held-out split (n_train_cases {n_train}, n_test_cases {n_test})")
    seed = int(training["seed"])
    tasks = case_tasks(n_per_class, seed)
    train, test = split_indices([label for _, label in tasks], seed, n_test / (n_train + n_test))
    if len(test) != n_test:
        raise ValueError(f"rebuilt split has {len(test)} held-out cases, model.json says {n_test}")
    return [Task(*tasks[j], j // len(LABELS)) for j in (test if split == "test" else train)]


def balanced_head(tasks: Sequence[Task], limit: int | None) -> list[Task]:
    """The first ``limit`` tasks taking the classes in turn (all tasks when ``limit`` is None)."""
    if limit is None:
        return list(tasks)
    queues = [[t for t in tasks if t.label == label] for label in LABELS]
    turns = [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)]
    return turns[:limit]


def proposal_source(rng: np.random.Generator, label: str | None,
                    sampler: str = simulate.DEFAULT_SAMPLER) -> str:
    """The box :func:`training.earl.simulate.sample_params` will draw from with ``rng``.

    Read from a copy of ``rng`` (which is not advanced), following ``sample_params``'s
    own first draws: a clinical proposal is a hard negative from one of the ``sampler``'s
    negative boxes (:func:`training.earl.simulate.negative_boxes`) with its share.
    """
    if label in simulate.BOXES:
        return str(label)
    if label == "clinical":
        share, negatives = simulate.negative_boxes(sampler)
        probe = copy.deepcopy(rng)
        if probe.random() < share:
            return str(probe.choice(sorted(negatives)))
    return "prior"


@contextmanager
def recording_proposals(sources: list[str]) -> Iterator[None]:
    """Within the block, every ``simulate.sample_params`` call appends its proposal box.

    ``simulate`` does not report which box an accepted draw came from; wrapping its
    module-level function records it without changing a single random draw, so the
    cases are bit-identical to the training run's.
    """
    original = simulate.sample_params

    def recording(rng: np.random.Generator, label: str | None = None,
                  sampler: str = simulate.DEFAULT_SAMPLER) -> ReconParams:
        sources.append(proposal_source(rng, label, sampler))
        return original(rng, label, sampler)

    simulate.sample_params = recording  # type: ignore[assignment]
    try:
        yield
    finally:
        simulate.sample_params = original  # type: ignore[assignment]


@functools.lru_cache(maxsize=2)
def bundle_at(bundle_dir: str) -> Bundle:
    """The checksum-verified bundle in ``models/<name>/<version>`` (once per process)."""
    path = Path(bundle_dir)
    return load_bundle(path.parent.parent, path.parent.name, path.name)


@functools.lru_cache(maxsize=2)
def _model(bundle_dir: str) -> EarlModel:
    """The bundle's checksum-verified model (loaded once per process)."""
    return load_cnn(bundle_at(bundle_dir))


def _sampler(bundle_dir: str) -> str:
    """The proposal scheme the bundle's simulated cases came from (sim-1 before it was
    recorded)."""
    spec = bundle_at(bundle_dir).spec
    return simulate.check_sampler(str(spec.get("training", {}).get("sampler", "sim-1")))


@functools.lru_cache(maxsize=2)
def _variant(bundle_dir: str) -> Variant:
    """Preprocessing and input options of the bundle, as its cases must be rebuilt."""
    return Variant.from_spec(bundle_at(bundle_dir).spec)


def relabel(params: ReconParams, seed: int, k: int) -> list[str]:
    """``k`` fresh physics labels of ``params`` (new phantom positions and noise each)."""
    return [simulate.label_params(params, np.random.default_rng([seed, j, RELABEL_SALT]))[0]
            for j in range(k)]


def analyze_case(task: Task, bundle_dir: str, relabels: int) -> CaseResult:
    """Rebuild one case as the bundle's trainer made it, run the bundle on the CPU,
    relabel it.

    CNN bundles: ``train.make_case`` and the stage nets. Physics-estimate bundles
    (``physest``): ``simulate.simulate_case`` with the same seed, then the daemon's
    :func:`~qcd.analyzers.earl.analyzer.classify_volume` (features, estimate, virtual
    phantom), as ``training.earl.physest`` evaluates its held-out cases.
    """
    sources: list[str] = []
    if bundle_at(bundle_dir).spec.get("architecture") == physest.ARCHITECTURE:
        with recording_proposals(sources):
            volume, params, label, rc = simulate.simulate_case(
                np.random.default_rng(task.seed), task.label, _sampler(bundle_dir))
        result = classify_volume(volume, params.voxel_mm, bundle_at(bundle_dir))
        p_earl, p_earl2 = result.p_earl, (0.5 if result.p_earl2 is None else result.p_earl2)
    else:
        variant = _variant(bundle_dir)
        with recording_proposals(sources):
            case = make_case((task.seed, task.label), (variant.preprocessing,),
                             _sampler(bundle_dir))
        if case.rc is None:
            raise RuntimeError(f"case {task} came back without its phantom RCs")
        p_earl, p_earl2 = case_probabilities(_model(bundle_dir), [case], torch.device("cpu"),
                                             variant=variant)[0]
        p = case.params
        params = ReconParams(tuple(p["voxel_mm"]), p["fwhm_mm"], p["overshoot"], p["cov"],
                             p.get("noise_fwhm_mm", 0.0))
        label, rc = case.label, case.rc
    if not sources:
        raise RuntimeError(f"case {task} came back without its proposals")
    return CaseResult(label, task.index, task.seed, sources[-1], len(sources), params,
                      rc, p_earl, p_earl2, tuple(relabel(params, task.seed, relabels)))


def _worker_init() -> None:
    torch.set_num_threads(1)


def map_in_order(job: Callable[[T], R], tasks: Sequence[T], workers: int) -> Iterator[R]:
    """``job`` over ``tasks``, results in task order: in this process for one worker,
    else on ``workers`` spawned processes with one torch thread each."""
    if workers <= 1:
        yield from map(job, tasks)
        return
    with mp.get_context("spawn").Pool(workers, initializer=_worker_init) as pool:
        yield from pool.imap(job, tasks)


def run_cases(tasks: Sequence[Task], bundle_dir: Path, relabels: int, workers: int
              ) -> list[CaseResult]:
    """:func:`analyze_case` for every task, in order, on ``workers`` processes."""
    job = functools.partial(analyze_case, bundle_dir=str(bundle_dir.resolve()),
                            relabels=relabels)
    results: list[CaseResult] = []
    for r in map_in_order(job, tasks, workers):
        results.append(_logged(r, len(results), len(tasks)))
    return results


def _logged(r: CaseResult, i: int, n: int) -> CaseResult:
    LOGGER.info("%d/%d %s %d (%s): P(EARL) %.3f, relabels %s", i + 1, n, r.label, r.index,
                r.source, r.p_earl, ",".join(r.relabels) or "-")
    return r


# --- summary -----------------------------------------------------------------------------------

def _rate(rows: Sequence[CaseResult], t: Thresholds) -> dict[str, Any]:
    correct = sum(r.stage1_correct(t) for r in rows)
    return {"n": len(rows), "correct": correct, "errors": len(rows) - correct,
            "accuracy": correct / len(rows) if rows else None}


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def _span(values: Sequence[float]) -> list[float] | None:
    return [min(values), max(values)] if values else None


def majority_is_earl(relabels: Sequence[str]) -> bool:
    """Stage-1 majority of fresh labels; a split vote is clinical (a phantom passes or not)."""
    return 2 * sum(map(_earl, relabels)) > len(relabels)


def clopper_pearson(k: int, n: int, level: float = 0.95) -> list[float]:
    """Exact binomial confidence interval for ``k`` successes in ``n``."""
    a = (1.0 - level) / 2
    lo = float(stats.beta.ppf(a, k, n - k + 1)) if k > 0 else 0.0
    hi = float(stats.beta.ppf(1 - a, k + 1, n - k)) if k < n else 1.0
    return [lo, hi]


def summarise(results: Sequence[CaseResult], t: Thresholds) -> dict[str, Any]:
    """Stage-1 accuracy broken down by where the errors are, and the relabel ceiling.

    Everything is stage 1 (clinical vs EARL) unless named otherwise. "Stable" labels are
    those that at least :data:`STABLE` of the fresh relabels agree with; with no relabels
    the stability rows and the ceiling are left out (``None``).
    """
    if not results:
        raise ValueError("no cases to summarise")
    k = min(len(r.relabels) for r in results)
    m = case_metrics([r.label for r in results], [(r.p_earl, r.p_earl2) for r in results], t)
    clinical = [r for r in results if r.label == "clinical"]
    wrong = [r for r in results if not r.stage1_correct(t)]

    def stable(r: CaseResult) -> bool:
        return (r.stage1_stability or 0.0) >= STABLE

    def margin(r: CaseResult) -> float:
        return phantom.class_margin(r.rc)

    summary: dict[str, Any] = {
        "n_cases": len(results), "relabels": k, "stage1": _rate(results, t),
        "stage2_accuracy": m["stage2_accuracy"], "accuracy_per_class": m["accuracy_per_class"],
        "confusion": m["confusion"],
        "stage1_errors": {
            "clinical_called_earl": {c: m["confusion"]["clinical"][c]
                                     for c in ("EARL1", "EARL2", "indeterminate")},
            "earl_called_clinical": {c: m["confusion"][c]["clinical"] for c in ("EARL1", "EARL2")}},
        "clinical_by_source": [
            {"source": s, **_rate(rows, t), "stability": _mean([r.stage1_stability for r in rows])}
            for s in ("prior", "EARL1", "EARL2", "blurry")
            for rows in [[r for r in clinical if r.source == s]]
            if s != "blurry" or rows],  # sim-2's box is listed only where it was used
        "clinical_by_group": [
            {"group": g, **_rate(rows, t),
             "stable_errors": sum(stable(r) for r in bad) if k else None,
             "error_fwhm_mm": _span([r.params.fwhm_mm for r in bad]),
             "error_overshoot": _span([r.params.overshoot for r in bad]),
             "error_cov": _span([r.params.cov for r in bad])}
            for g in GROUPS
            for rows in [[r for r in clinical if rc_group(r.rc) == g]]
            for bad in [[r for r in rows if not r.stage1_correct(t)]]],
        "by_voxel": [{"in_plane_mm": v, **_rate([r for r in results if r.params.voxel_mm[1] == v],
                                                t)}
                     for v in sorted({r.params.voxel_mm[1] for r in results})],
        "by_margin": [
            {"margin": [lo, hi], **_rate(rows, t),
             "stability": _mean([r.stage1_stability for r in rows]),
             "ceiling": (_mean([float(majority_is_earl(r.relabels) == _earl(r.label))
                                for r in rows]) if k else None)}
            for lo, hi in zip(MARGIN_EDGES, (*MARGIN_EDGES[1:], None))
            for rows in [[r for r in results
                          if lo <= abs(margin(r)) and (hi is None or abs(margin(r)) < hi)]]],
        "margin_median": {
            label: {"right": _median([margin(r) for r in rows if r.stage1_correct(t)]),
                    "wrong": _median([margin(r) for r in rows if not r.stage1_correct(t)])}
            for label in LABELS for rows in [[r for r in results if r.label == label]]},
    }
    subsets: list[tuple[str, Callable[[CaseResult], bool]]] = [("all", lambda r: True)]
    if k:
        subsets += [("stable labels", stable), ("unstable labels", lambda r: not stable(r))]
    subsets += [("no hard negatives", lambda r: not r.hard_negative)]
    if k:
        subsets += [("stable labels, no hard negatives",
                     lambda r: stable(r) and not r.hard_negative)]
    subsets += [(f"P(EARL) outside [{lo}, {hi})", _decided(lo, hi)) for lo, hi in ABSTAIN_BANDS]
    summary["subsets"] = [{"subset": name, **_rate([r for r in results if keep(r)], t)}
                          for name, keep in subsets]
    if not k:
        summary["labels"] = summary["ceiling"] = None
        return summary
    agree = sum(majority_is_earl(r.relabels) == _earl(r.label) for r in results)
    n = len(results)
    allowed = math.floor(n * (1.0 - STAGE1_TARGET) + 1e-9)
    summary["labels"] = {
        "stable_threshold": STABLE, "stability_mean": _mean([r.stage1_stability for r in results]),
        "unstable": sum(not stable(r) for r in results),
        "errors_with_stable_labels": sum(stable(r) for r in wrong)}
    summary["ceiling"] = {
        "n": n, "correct": agree, "errors": n - agree, "accuracy": agree / n,
        "ci95": clopper_pearson(agree, n),
        "split_votes": sum(2 * sum(map(_earl, r.relabels)) == len(r.relabels) for r in results),
        "single_relabel": summary["labels"]["stability_mean"],
        "target": STAGE1_TARGET, "errors_allowed_by_target": allowed,
        "target_reachable": n - agree <= allowed}
    # the model against the majority of the fresh relabels: a label measured k times
    # over, less noisy than the stored one (and free of the rejection sampler's selection)
    model_agree = sum((r.p_earl >= t.stage1) == majority_is_earl(r.relabels) for r in results)
    summary["against_majority"] = {"n": n, "correct": model_agree, "accuracy": model_agree / n}
    return summary


def _decided(lo: float, hi: float) -> Callable[[CaseResult], bool]:
    """Cases a model that abstains for ``lo <= P(EARL) < hi`` would still decide."""
    return lambda r: not lo <= r.p_earl < hi


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


# --- command line ------------------------------------------------------------------------------

def write_error_analysis(bundle_dir: Path, part: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Store ``entry`` as ``error_analysis[part]`` of the bundle's model.json; rewrite the card."""
    if part not in ("held_out", "training_cases"):
        raise ValueError(f"part must be 'held_out' or 'training_cases', got {part!r}")
    return record(bundle_dir, ("error_analysis", part), entry)


def load_report(path: Path, bundle: Bundle, split: str = "test",
                tasks: Sequence[Task] | None = None) -> dict[str, Any]:
    """An earlier ``--out`` report of ``bundle``'s weights on ``split`` (``tasks``, default
    all of the split's cases): checked by sha256, split and the cases' seeds, in order.

    Raises
    ------
    ValueError
        The report is of other weights, another split or other cases.
    """
    report: dict[str, Any] = json.loads(path.read_text())
    want = bundle_tasks(bundle.spec, split) if tasks is None else tasks
    if (report["bundle"]["sha256"], report["split"]) != (bundle.sha256, split) or (
            [c["seed"] for c in report["cases"]] != [t.seed for t in want]):
        raise ValueError(f"{path} is not a report of earl/{bundle.version}'s weights on its "
                         f"{len(want)} {split} cases")
    return report


def _command(args: argparse.Namespace) -> str:
    parts = ["python -m training.earl.analyze", f"--bundle {args.bundle}",
             f"--relabels {args.relabels}"]
    if args.split != "test":
        parts.append(f"--split {args.split}")
    if args.limit is not None:
        parts.append(f"--limit {args.limit}")
    return " ".join(parts + [f"--workers {args.workers}", f"--out {args.out.name}"])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", type=Path, required=True, help="e.g. models/earl/1.0.0")
    p.add_argument("--relabels", type=int, default=8, metavar="K",
                   help="fresh phantom labellings per case (0: no stability, no ceiling)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N cases, classes in turn")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--split", choices=("test", "train"), default="test",
                   help="the held-out cases (default) or the bundle's own training cases")
    p.add_argument("--out", type=Path, required=True, help="report (JSON)")
    p.add_argument("--markdown", type=Path, help="tables (default: --out with suffix .md)")
    p.add_argument("--write-bundle", action="store_true",
                   help="store the summary in the bundle's model.json and rewrite its card")
    p.add_argument("--from-report", type=Path, metavar="JSON",
                   help="summarise the cases of an earlier --out report of this bundle and "
                        "split again instead of simulating them (after a summary change)")
    args = p.parse_args(argv)
    if args.relabels < 0 or (args.limit is not None and args.limit < 1) or args.workers < 1:
        p.error("--relabels must be >= 0, --limit and --workers >= 1")
    if args.write_bundle and args.limit is not None:
        p.error("--write-bundle records a whole split; drop --limit")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    bundle_dir = args.bundle.resolve()
    bundle = bundle_at(str(bundle_dir))
    thresholds = Thresholds.from_spec(bundle.spec)
    try:
        tasks = balanced_head(bundle_tasks(bundle.spec, args.split), args.limit)
    except ValueError as exc:
        p.error(str(exc))
    started = time.time()
    if args.from_report:
        try:
            earlier = load_report(args.from_report, bundle, args.split, tasks)
        except ValueError as exc:
            p.error(str(exc))
        results = [CaseResult.from_dict(c) for c in earlier["cases"]]
        entry = {k: earlier[k] for k in ("command", "date", "seconds", "workers")}
        if earlier["bundle"].get("version") != bundle.version:  # a re-tuned bundle's source
            entry = {"command": f"{_command(args)} --from-report {args.from_report.name}",
                     "cases_from": earlier["command"], "date": dt.date.today().isoformat(),
                     "seconds": earlier["seconds"], "workers": earlier["workers"]}
    else:
        results = run_cases(tasks, bundle_dir, args.relabels, args.workers)
        entry = {"command": _command(args), "date": dt.date.today().isoformat(),
                 "seconds": round(time.time() - started, 1), "workers": args.workers}
    summary = summarise(results, thresholds)
    entry["summary"] = summary
    report = {"bundle": {"name": bundle.name, "version": bundle.version,
                         "sha256": bundle.sha256},
              "split": args.split, **entry,
              "cases": [r.to_dict(thresholds) for r in results]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    tables = error_analysis_tables(summary)
    (args.markdown or args.out.with_suffix(".md")).write_text(tables)
    print(tables)
    if args.write_bundle:
        write_error_analysis(bundle_dir, "held_out" if args.split == "test" else "training_cases",
                             entry)
        LOGGER.info("wrote the error analysis into %s", bundle_dir / "model.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
