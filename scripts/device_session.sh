#!/usr/bin/env bash
# One session on a lent GPU machine (device tool): what needs the GPU, batched into one call.
#   STAGE=bench  GPU benchmarks on an idle GPU: batching per analyzer, result latency per analyzer
#   STAGE=train  motion and chest retrains side by side (each bundle tarred as soon as it is done)
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
  mkdir -p /tmp/bench
  timeout 150 python3 tests/bench/bench_batching.py --device cuda --out /tmp/bench/batching.md \
    2>&1 | tee "$OUT/bench.log"
  for a in earl motion atrium chest; do
    reps=3; [ "$a" = earl ] || [ "$a" = motion ] || reps=2
    timeout 100 python3 tests/bench/bench_latency.py --analyzer "$a" --device cuda --stand-in \
      --repeats "$reps" --out "/tmp/bench/latency_$a.md" 2>&1 | tail -12 | tee -a "$OUT/bench.log"
  done
  tar czf "$OUT/bench.tar.gz" -C /tmp bench
fi
if [ "$STAGE" = train ]; then
  mkdir -p /tmp/t/motion /tmp/t/chest
  LIMIT=${LIMIT:-480}
  ( timeout "$LIMIT" python3 -m training.motion.train --config full --seed 20261126 \
      --train-scans "${MOTION_TRAIN:-1400}" --val-scans 800 --test-scans 800 --epochs 20 \
      --target-sensitivity 0.96 --device cuda --out /tmp/t/motion/1.0.0 > "$OUT/motion.log" 2>&1 \
    && tar czf "$OUT/motion.tar.gz" -C /tmp/t motion ) &
  ( timeout "$LIMIT" python3 -m training.chest.train --seed 20261126 --steps "${CHEST_STEPS:-2000}" \
      --device cuda --out /tmp/t/chest/1.0.0 > "$OUT/chest.log" 2>&1 \
    && tar czf "$OUT/chest.tar.gz" -C /tmp/t chest ) &
  wait
  nvidia-smi --query-gpu=name,memory.used --format=csv || true
fi
