"""Atrium inference benchmark: batched U-Net slices/s against a batch-1 loop, and the CPU
time of the whole per-volume pipeline for a 110-slice stack.

Why: the daemon sends a volume's slices to the engine's BatchingPredictor in one
request; this measures what batching buys on the device over calling the net one
slice at a time (same model, same autocast, same run), and what a CPU-only site pays
per cardiac volume (prepare -> U-Net -> restore -> postprocess).

    python tests/bench/bench_atrium.py [--device auto] [--slices 110] [--size 320]
                                       [--bundle models/atrium/1.0.0] [--out docs/BENCHMARKS.md]

``--device auto`` uses CUDA when present. The input is a simulated 110-slice volume
(1.25 mm, 320 x 320 as MSD Task02_Heart). Only torch, numpy, scipy and qcd's pure
modules are needed (it runs where pydicom is not installed).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from qcd.analyzers.atrium.model import UNet2D  # noqa: E402
from qcd.analyzers.atrium.postprocess import segment  # noqa: E402
from qcd.analyzers.atrium.preprocess import prepare  # noqa: E402
from qcd.workers.inference import BatchingPredictor  # noqa: E402
from tests.bench.report import cpu_model, header, write_section  # noqa: E402
from training.atrium.simulate import SimConfig, simulate_case  # noqa: E402


def load(bundle: Path) -> tuple[UNet2D, dict]:  # type: ignore[type-arg]
    spec = json.loads((bundle / "model.json").read_text())
    model = UNet2D(int(spec["input"]["channels"]), int(spec.get("base_channels", 16)))
    model.load_state_dict(torch.load(bundle / spec["weights"], map_location="cpu",
                                     weights_only=True))
    return model.eval(), spec


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--slices", type=int, default=110)
    p.add_argument("--size", type=int, default=320)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--bundle", type=Path, default=ROOT / "models" / "atrium" / "1.0.0")
    p.add_argument("--skip-cpu", action="store_true", help="skip the CPU pipeline timing")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    model, spec = load(args.bundle)
    case = simulate_case(1, "cpu", SimConfig(nz=args.slices, sizes=(args.size,)))
    volume = case.image.numpy()
    x = prepare(volume, case.spacing, int(spec["input"]["context"])).x
    n = len(x)

    predictor = BatchingPredictor(model, device, max_batch=args.max_batch, max_wait_ms=5.0)
    single = predictor.model  # same module, same device, eval

    def one_by_one() -> None:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16,
                                                    enabled=device.type == "cuda"):
            for i in range(n):
                single(x[i:i + 1].to(device)).float().cpu()

    def timed(fn: object) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    predictor.predict(x)
    one_by_one()  # warm-up both
    t_batched = statistics.median(timed(lambda: predictor.predict(x))
                                  for _ in range(args.repeats))
    t_single = statistics.median(timed(one_by_one) for _ in range(args.repeats))
    predictor.close()
    rows = ["| path | device | wall median s | slices/s |", "|---|---|---|---|",
            f"| batch-1 loop | {device} | {t_single:.3f} | {n / t_single:.0f} |",
            f"| BatchingPredictor (max_batch {args.max_batch}) | {device} | {t_batched:.3f} | "
            f"{n / t_batched:.0f} |"]
    kind = "2.5D" if x.shape[1] > 1 else "2D"
    summary = (f"{n} slices of {tuple(x.shape[1:])} ({kind}, {case.spacing[1]} mm), "
               f"U-Net base {spec.get('base_channels')} ({spec['name']}/{spec['version']}), "
               f"{'fp16 autocast' if device.type == 'cuda' else 'fp32'}; median of "
               f"{args.repeats}. Batching speed-up: "
               f"**{t_single / t_batched:.1f}x**.")
    if not args.skip_cpu:
        cpu_model_ = model.cpu().eval()

        def predict_cpu(t: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return torch.cat([cpu_model_(t[i:i + 16]) for i in range(0, len(t), 16)])

        walls, cpus = [], []
        for _ in range(max(1, args.repeats - 1)):
            c0, w0 = cpu_seconds(), time.perf_counter()
            segment(predict_cpu, volume, case.spacing, int(spec["input"]["context"]))
            walls.append(time.perf_counter() - w0)
            cpus.append(cpu_seconds() - c0)
        rows.append(f"| whole pipeline, {n}-slice volume (prepare, U-Net, restore, "
                    f"postprocess) | cpu, {torch.get_num_threads()} threads | "
                    f"{statistics.median(walls):.2f} (CPU {statistics.median(cpus):.2f} s) | "
                    f"{n / statistics.median(walls):.0f} |")
    print("\n".join(rows))
    print(summary)
    if args.out:
        gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU"
        write_section(args.out, f"## Atrium inference ({device.type})",
                      header(f"python tests/bench/bench_atrium.py --device {args.device} "
                             f"--out {args.out}",
                             f"{gpu}; {cpu_model()}, {torch.get_num_threads()} torch threads, "
                             f"torch {torch.__version__}")
                      + "\n\n" + "\n".join(rows) + f"\n\n{summary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
