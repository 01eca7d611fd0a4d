#!/usr/bin/env bash
# One session on a lent GPU machine (device tool): what needs the GPU, batched into one call.
#   STAGE=bench  GPU benchmarks on an idle GPU: batching per analyzer (and atrium in NCHW),
#                result latency per analyzer (LATENCY="motion" for some), PARITY=1: CPU/GPU parity
#   STAGE=train  motion retrain (two variants on the same simulated scans)
#   STAGE=earl   EARL on simulated cases (EARL_N per class): learning curve of the shares
#                EARL_FRACTIONS, variants EARL_VARIANTS (validation picks the bundle),
#                proposal scheme EARL_SAMPLER; then the vendor-protocol families
#                (training.earl.protocols, both noise models); simulation runs on the 16 CPUs
# The image there has torch, numpy and scipy; pydicom & co travel as wheels in .whl/.
# Results land in $OUT as few files (the tool returns at most 8, two folders deep).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi -L || true
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
STAGE=${STAGE:-bench}
if [ "$STAGE" = bench ]; then
  # timings first, on an idle GPU; then the parity runs side by side
  mkdir -p /tmp/bench
  timeout 150 python3 tests/bench/bench_batching.py --device cuda --out /tmp/bench/batching.md \
    2>&1 | tee "$OUT/bench.log"
  timeout 60 python3 tests/bench/bench_batching.py --device cuda --analyzers atrium \
    --no-channels-last --out /tmp/bench/batching_nchw.md 2>&1 | tail -4 | tee -a "$OUT/bench.log"
  for a in ${LATENCY:-earl motion atrium chest}; do
    reps=3; [ "$a" = earl ] || [ "$a" = motion ] || reps=2
    timeout 100 python3 tests/bench/bench_latency.py --analyzer "$a" --device cuda --stand-in \
      --repeats "$reps" --out "/tmp/bench/latency_$a.md" 2>&1 | tail -12 | tee -a "$OUT/bench.log"
  done
  if [ -n "${PARITY:-}" ]; then
    timeout 200 python3 scripts/device_parity.py /tmp/bench/parity.json \
      --n-motion 200 --n-chest 500 --n-atrium 4 > /tmp/bench/parity.log 2>&1 &
    timeout 200 python3 scripts/device_parity_earl.py /tmp/bench/parity_earl.json --n 8 \
      > /tmp/bench/parity_earl.log 2>&1 &
    wait
    tail -30 /tmp/bench/parity.log /tmp/bench/parity_earl.log | tee -a "$OUT/bench.log"
  fi
  tar czf "$OUT/bench.tar.gz" -C /tmp bench
fi
if [ "$STAGE" = train ]; then
  # motion: two variants (with and without the log-motion head) on the same scans;
  # validation picks the shipped one (training/motion/train.py --variants)
  mkdir -p /tmp/t/motion
  timeout "${LIMIT:-540}" python3 -m training.motion.train --config full --seed 20261126 \
      --train-scans "${MOTION_TRAIN:-2400}" --val-scans 1000 --test-scans 800 \
      --epochs "${MOTION_EPOCHS:-20}" --width 32 --variants plain,head \
      --target-sensitivity 0.96 --reuse-calibration models/motion/1.0.0/model.json \
      --device cuda --out /tmp/t/motion/1.0.0 > "$OUT/motion.log" 2>&1 \
    && tar czf "$OUT/motion.tar.gz" -C /tmp/t motion
  nvidia-smi --query-gpu=name,memory.used --format=csv || true
fi
if [ "$STAGE" = earl ]; then
  mkdir -p /tmp/t/earl
  # default: the learning curve of plain EdgeNet on sim-2 (the variants did not beat it on
  # the CPU, 300 per class, 2026-12-07; sim-2 did better on the over-smoothed protocols);
  # EARL_VARIANTS to compare variants instead
  timeout "${LIMIT:-480}" python3 -m training.earl.train --n-per-class "${EARL_N:-1000}" \
      --epochs 25 --seed 20261126 --workers 15 --device cuda \
      --sampler "${EARL_SAMPLER:-sim-2}" \
      --variants "${EARL_VARIANTS:-edgenet}" --train-fractions "${EARL_FRACTIONS:-0.25,0.5}" \
      --out /tmp/t/earl/1.0.0 > "$OUT/earl.log" 2>&1 \
    && for noise in voxel filtered; do
      timeout 60 python3 -m training.earl.protocols --bundle /tmp/t/earl/1.0.0 --n 60 \
        --workers 15 --noise "$noise" --write-bundle --out "/tmp/t/earl/protocols_$noise.json" \
        >> "$OUT/earl.log" 2>&1
    done
  tar czf "$OUT/earl.tar.gz" -C /tmp/t earl
fi
