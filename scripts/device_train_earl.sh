#!/usr/bin/env bash
# Train the EARL bundle on a lent GPU machine (device tool); outputs land in $OUT/earl.
# The image there has torch, numpy and scipy; pydicom travels as a wheel in .whl/.
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi -L || true
python3 -m training.earl.train --n-per-class "${N:-400}" --epochs "${EPOCHS:-20}" \
  --workers "${WORKERS:-15}" --compare-paper --out "$OUT/earl" 2>&1 | tee "$OUT/train.log"
