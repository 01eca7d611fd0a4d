"""CPU vs CUDA parity of the shipped EARL bundle through the daemon's own runtime.

Run on a GPU host (device tool): simulated held-out cases are preprocessed once, then
classified with LocalRuntime on cpu and on cuda (batching predictor, AMP requested as
in production). Prints and writes JSON: largest probability gap, differing decisions.
    python3 scripts/device_parity_earl.py OUT.json [--n 20]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain script

from qcd.analyzers.earl.analyzer import CNN_BUNDLE, load_cnn  # noqa: E402
from qcd.analyzers.earl.decision import Thresholds, decide  # noqa: E402
from qcd.bundles import load_bundle  # noqa: E402
from qcd.workers.inference import InferenceSettings  # noqa: E402
from qcd.workers.runtime import LocalRuntime  # noqa: E402


def _prepare(task: tuple[int, str]) -> tuple[str, np.ndarray, np.ndarray]:
    from qcd.analyzers.earl.preprocess import model_inputs
    from training.earl.simulate import simulate_case

    seed, label = task
    volume, params, _, _ = simulate_case(np.random.default_rng(seed), label)
    spec = load_bundle(Path("models"), "earl", CNN_BUNDLE).spec
    s1, _, s2, _ = model_inputs(volume, params.voxel_mm, spec)
    return label, s1, s2


def _classify(device: str, cases: list[tuple[str, np.ndarray, np.ndarray]]
              ) -> list[tuple[float, float]]:
    bundle = load_bundle(Path("models"), "earl", CNN_BUNDLE)
    runtime = LocalRuntime(InferenceSettings(device=device, amp=True))
    model = load_cnn(bundle)
    p1s = runtime.predictor("s1", lambda: model.stage1)
    p2s = runtime.predictor("s2", lambda: model.stage2)
    out = []
    for _, s1, s2 in cases:
        p1 = torch.softmax(p1s.predict(torch.from_numpy(s1))[:, :2], 1)[:, 1].mean().item()
        p2 = torch.softmax(p2s.predict(torch.from_numpy(s2))[:, :2], 1)[:, 1].mean().item()
        out.append((p1, p2))
    runtime.close()
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("--n", type=int, default=20, help="cases per class")
    args = p.parse_args()
    tasks = [(8_000_000 + 3 * i + k, label) for i in range(args.n)
             for k, label in enumerate(("clinical", "EARL1", "EARL2"))]
    with mp.get_context("spawn").Pool(min(15, mp.cpu_count())) as pool:
        cases = pool.map(_prepare, tasks)
    cpu, gpu = _classify("cpu", cases), _classify("cuda", cases)
    t = Thresholds.from_spec(load_bundle(Path("models"), "earl", CNN_BUNDLE).spec)

    def verdict(q: tuple[float, float]) -> str:
        return decide(q[0], q[1] if q[0] >= t.stage1 else None, t)

    result = {
        "cases": len(cases), "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
        "path": "LocalRuntime/BatchingPredictor, amp requested, TF32 off",
        "max_probability_gap": max(max(abs(a[0] - b[0]), abs(a[1] - b[1]))
                                   for a, b in zip(cpu, gpu, strict=True)),
        "decisions_differing": sum(verdict(a) != verdict(b) for a, b in zip(cpu, gpu,
                                                                             strict=True)),
        "accuracy_cpu": float(np.mean([verdict(a) == c[0] for a, c in zip(cpu, cases,
                                                                           strict=True)])),
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
