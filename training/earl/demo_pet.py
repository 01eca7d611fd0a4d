"""Write simulated FDG PET series as DICOM (for the demo and end-to-end tests).

    python -m training.earl.demo_pet OUT_DIR [--label EARL1] [--seed 7]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from qcd.synth import write_pet_series
from training.earl.simulate import simulate_case


def write_case(out: Path, label: str, seed: int, study_uid: str | None = None) -> list[Path]:
    """Simulate one case of ``label`` and write it; the series description names the truth."""
    volume, params, got, _ = simulate_case(np.random.default_rng(seed), label)
    return write_pet_series(volume, params.voxel_mm, out,
                            description=f"PET WB sim {got}", study_uid=study_uid, seed=seed)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--label", default="EARL1", choices=["clinical", "EARL1", "EARL2"])
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    paths = write_case(args.out, args.label, args.seed)
    print(f"wrote {len(paths)} PET slices ({args.label}, seed {args.seed}) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
