"""An EARL bundle on reconstructions that mimic vendor protocols, not the training prior.

    python -m training.earl.protocols --bundle models/earl/1.0.0 [--n 60] [--workers 2] \
        [--seed 0] --out protocols.json

The training prior (``training.earl.simulate.PRIOR``) draws resolution, overshoot and
noise uniformly, so its held-out accuracy says little about the reconstructions sites
actually run. This module draws them from three families built from SCIENCE.md 1c
(typical clinical reconstructions; the rule of thumb that EARL1 is met without PSF, with
4 mm voxels and a 6-8 mm Gaussian filter, and EARL2 with PSF/TOF, 2-4 mm voxels and a
0-5 mm filter). A family's effective FWHM is the scanner's system resolution and its
post-filter added in quadrature; PSF reconstructions get a DoG overshoot. These mappings
are modelling assumptions (SCIENCE.md grade [M]), not measurements.

Each case is labelled by the same phantom physics as the training cases
(:func:`training.earl.simulate.label_params`): a family name says how the reconstruction
was made, never which class it is. The case then goes through the daemon's own code path
(:func:`qcd.analyzers.earl.analyzer.classify_volume`) on the CPU, CNN or physics estimate
alike. The report gives,
per family, the physics labels found and the model's stage-1 accuracy against them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from qcd.analyzers.earl.analyzer import PROTOCOL_KEYS, classify_volume
from qcd.analyzers.earl.decision import Thresholds, decide
from qcd.analyzers.earl.phantom import ReconParams, apply_recon
from training.earl.analyze import bundle_at, map_in_order
from training.earl.card import protocol_table, record
from training.earl.simulate import SLICE_MM, Z_EXTENT_MM, label_params, render_body

LOGGER = logging.getLogger("training.earl.protocols")
NOISE_MODELS: Final = tuple(PROTOCOL_KEYS)
SALT: Final = 7070
"""Case ``i`` of family ``k`` draws from ``default_rng([seed, k, i, SALT])``."""


@dataclass(frozen=True)
class Family:
    """How a kind of reconstruction is made, as ranges the draws are uniform in."""

    description: str
    in_plane_mm: tuple[float, ...]
    system_fwhm_mm: tuple[float, float]
    filter_fwhm_mm: tuple[float, float]
    overshoot: tuple[float, float]
    cov: tuple[float, float]

    def draw(self, rng: np.random.Generator, noise: str = "voxel") -> ReconParams:
        """One reconstruction of this family (FWHM = system and filter in quadrature).

        ``noise``: ``voxel`` (noise grain 0.8 voxel whatever the filter, as sim-1/sim-2
        train on) or ``filtered`` (the post-filter smooths the noise too, as sim-3).
        """
        if noise not in NOISE_MODELS:
            raise ValueError(f"noise must be one of {NOISE_MODELS}, got {noise!r}")
        in_plane = float(rng.choice(self.in_plane_mm))
        slice_mm = round(float(rng.uniform(*SLICE_MM)), 2)
        system = float(rng.uniform(*self.system_fwhm_mm))  # draw order as before noise
        post_filter = float(rng.uniform(*self.filter_fwhm_mm))
        fwhm = math.hypot(system, post_filter)
        return ReconParams((slice_mm, in_plane, in_plane), fwhm,
                           float(rng.uniform(*self.overshoot)), float(rng.uniform(*self.cov)),
                           post_filter if noise == "filtered" else 0.0)


FAMILIES: Final = {
    "psf_tof_no_filter": Family(
        "PSF+TOF OSEM, no or a 2 mm post-filter (Siemens mCT 3i21s, GE D710, Philips Vereos; "
        "SCIENCE 1c)", (2.0, 2.7, 4.0), (3.5, 5.0), (0.0, 2.0), (0.2, 0.5), (0.06, 0.15)),
    "no_psf_6_8mm_filter": Family(
        "OSEM without PSF, 6-8 mm Gaussian post-filter (the usual EARL1 recipe; SCIENCE 1c)",
        (2.7, 3.0, 4.0), (4.5, 6.0), (6.0, 8.0), (0.0, 0.0), (0.04, 0.08)),
    "psf_tof_0_5mm_filter": Family(
        "PSF+TOF OSEM, 0-5 mm Gaussian post-filter (the usual EARL2 recipe; SCIENCE 1c)",
        (2.0, 2.7, 3.0, 4.0), (4.0, 5.0), (0.0, 5.0), (0.1, 0.4), (0.05, 0.12)),
}


def protocol_case(task: tuple[int, str, int], bundle_dir: str, noise: str = "voxel"
                  ) -> dict[str, Any]:
    """Draw, label, simulate and classify one case of a family (runs in a worker)."""
    seed, family, index = task
    rng = np.random.default_rng([seed, list(FAMILIES).index(family), index, SALT])
    params = FAMILIES[family].draw(rng, noise)
    label, _ = label_params(params, rng)
    body = render_body(params, rng, shape_mm=(float(rng.uniform(*Z_EXTENT_MM)), 260.0, 160.0))
    result = classify_volume(apply_recon(body, params, rng), params.voxel_mm,
                             bundle_at(bundle_dir), all_stages=True)
    p_earl, p_earl2 = result.p_earl, result.p_earl2
    return {"family": family, "index": index, "label": label, "p_earl": p_earl,
            "p_earl2": p_earl2, "voxel_mm": list(params.voxel_mm), "fwhm_mm": params.fwhm_mm,
            "overshoot": params.overshoot, "cov": params.cov,
            "noise_fwhm_mm": params.noise_fwhm_mm}


def summarise(cases: Sequence[dict[str, Any]], thresholds: Thresholds) -> dict[str, Any]:
    """Per family (and over all): physics labels, predictions and stage-1 accuracy."""
    def block(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        predicted = [decide(r["p_earl"], r["p_earl2"] if r["p_earl"] >= thresholds.stage1
                            else None, thresholds) for r in rows]
        stage1 = [(r["p_earl"] >= thresholds.stage1) == (r["label"] != "clinical")
                  for r in rows]
        return {"n": len(rows), "labels": dict(Counter(r["label"] for r in rows)),
                "predicted": dict(Counter(predicted)),
                "stage1_accuracy": sum(stage1) / len(rows) if rows else None,
                "clinical_called_earl": sum(r["label"] == "clinical" and not ok
                                            for r, ok in zip(rows, stage1)),
                "earl_called_clinical": sum(r["label"] != "clinical" and not ok
                                            for r, ok in zip(rows, stage1)),
                "exact_accuracy": (sum(p == r["label"] for p, r in zip(predicted, rows))
                                   / len(rows) if rows else None),
                "fwhm_mm": [min(r["fwhm_mm"] for r in rows), max(r["fwhm_mm"] for r in rows)]
                if rows else None}
    out = {name: block([c for c in cases if c["family"] == name]) for name in FAMILIES}
    out["all"] = block(cases)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", type=Path, required=True, help="e.g. models/earl/1.0.0")
    p.add_argument("--n", type=int, default=60, help="cases per family")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise", choices=NOISE_MODELS, default="voxel",
                   help="noise grain: 0.8 voxel at every filter (voxel, as sim-1/sim-2) or "
                        "smoothed by the post-filter too (filtered, as sim-3)")
    p.add_argument("--out", type=Path, required=True, help="report (JSON; tables beside as .md)")
    p.add_argument("--write-bundle", action="store_true",
                   help="store the summary in the bundle's model.json and rewrite its card")
    args = p.parse_args(argv)
    if args.n < 1 or args.workers < 1:
        p.error("--n and --workers must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    bundle_dir = args.bundle.resolve()
    bundle = bundle_at(str(bundle_dir))
    tasks = [(args.seed, family, i) for i in range(args.n) for family in FAMILIES]
    job = functools.partial(protocol_case, bundle_dir=str(bundle_dir), noise=args.noise)
    started = time.time()
    cases = list(map_in_order(job, tasks, args.workers))
    summary = summarise(cases, Thresholds.from_spec(bundle.spec))
    noise_flag = "" if args.noise == "voxel" else f" --noise {args.noise}"
    entry = {"command": f"python -m training.earl.protocols --bundle {args.bundle} "
                        f"--n {args.n} --seed {args.seed}{noise_flag}",
             "noise": args.noise,
             "date": dt.date.today().isoformat(), "seconds": round(time.time() - started, 1),
             "workers": args.workers,
             "families": {k: v.description for k, v in FAMILIES.items()}, "summary": summary}
    report = {"bundle": {"name": bundle.name, "version": bundle.version,
                         "sha256": bundle.sha256},
              **entry, "family_ranges": {k: vars(v) for k, v in FAMILIES.items()},
              "cases": cases}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    table = protocol_table(summary)
    args.out.with_suffix(".md").write_text(table)
    print(table)
    if args.write_bundle:
        record(bundle_dir, (PROTOCOL_KEYS[args.noise],), entry)
        LOGGER.info("wrote the protocol families into %s", bundle_dir / "model.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
