#!/usr/bin/env bash
# Issue 10, item 5, in one go on a GPU machine: seconds per iteration (CIFAR-10 T=10, ImageNet-64
# T=10 and T=4, all at B=128), 10-step sampling images/s (CIFAR-10 B=1000, ImageNet-64 B=256), peak
# memory, and the official CIFAR harness on the same GPU, back to back with ours.
#
#   bash benchmarks/gpu_item5.sh [OUT_DIR]        # default results/gpu
#   OFFICIAL=/path/to/Diffusion-by-MaxEntIRL OFFICIAL_PYTHON=/path/to/official-venv/bin/python bash benchmarks/gpu_item5.sh
#
# OFFICIAL is a clone of swyoon/Diffusion-by-MaxEntIRL; OFFICIAL_PYTHON the interpreter of its own virtualenv
# with a CUDA build of torch and numpy<2 (docs/speed.md). benchmarks/official_step_time.py times it.
#
# Synthetic data of the real shapes and freshly initialised networks (time does not depend on the
# weights). Each command writes one JSON; a failing command is reported and the rest still run.
set -u
cd "$(dirname "$0")/.."
OUT=${1:-results/gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python}
SYN="--config.data.name=synthetic --config.init.policy_checkpoint="
status=0
run() {  # name, command...
  local name=$1; shift
  echo "== $name: $*" | tee -a "$OUT/log.txt"
  if ! "$@" >> "$OUT/log.txt" 2>&1; then echo "FAILED: $name" | tee -a "$OUT/log.txt"; status=1; fi
}
STEP="benchmarks/step_time.py --iters=10 --warmup=2 --rounds=3 --count_flops=false"
if [ -n "${OFFICIAL:-}" ]; then
  # the official CIFAR-10 iteration on this GPU, then ours, then the official again
  run official_cifar_1 "${OFFICIAL_PYTHON:-python}" benchmarks/official_step_time.py --official="$OFFICIAL" \
    --preset=cifar --batch=128 --steps=10 --iters=10 --device=cuda
fi
run step_cifar10 $PY $STEP --config=configs/cifar10.py $SYN --out="$OUT/step_time_cifar10.json"
if [ -n "${OFFICIAL:-}" ]; then
  run official_cifar_2 "${OFFICIAL_PYTHON:-python}" benchmarks/official_step_time.py --official="$OFFICIAL" \
    --preset=cifar --batch=128 --steps=10 --iters=10 --device=cuda
fi
run step_imagenet64_t10 $PY $STEP --config=configs/imagenet64.py $SYN --out="$OUT/step_time_imagenet64_t10.json"
run step_imagenet64_t4 $PY $STEP --config=configs/imagenet64.py:t4 $SYN --out="$OUT/step_time_imagenet64_t4.json"
# the same steps with the memory options (models/attention.py, policy-gradient chunks, remat, FSDP)
run step_imagenet64_t10_lowmem $PY $STEP --config=configs/imagenet64.py:lowmem $SYN \
  --out="$OUT/step_time_imagenet64_t10_lowmem.json"
run step_imagenet64_t4_lowmem $PY $STEP --config=configs/imagenet64.py:t4,lowmem $SYN \
  --out="$OUT/step_time_imagenet64_t4_lowmem.json"
run sample_cifar10 $PY benchmarks/sample_throughput.py --config=configs/cifar10.py $SYN --batch=1000 --batches=5 \
  --out="$OUT/sample_cifar10.json"
run sample_imagenet64_t10 $PY benchmarks/sample_throughput.py --config=configs/imagenet64.py $SYN --batch=256 \
  --batches=5 --out="$OUT/sample_imagenet64_t10.json"
run fid_throughput $PY benchmarks/fid_throughput.py --out="$OUT"
exit $status
