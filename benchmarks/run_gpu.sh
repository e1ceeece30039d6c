#!/usr/bin/env bash
# The GPU benchmark as one command, for the device machine (run from the repository root):
#   bash benchmarks/run_gpu.sh
#   bash benchmarks/run_gpu.sh --sections resnet50   # ResNet-50 alone: the "gpu-resnet50" section
# Writes to $OUT (default ./gpu_out): gpu.log, gpu_partial.jsonl (every result as it is
# measured), gpu_section.md (the table so far), RESULTS.md (benchmarks/RESULTS.md with the
# "gpu" section replaced). The script stops starting new work after --budget seconds
# (420 s by default) so that the whole run fits in 8 minutes.
set -u
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || true
  PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" \
    timeout -k 10 470 python3 benchmarks/gpu.py --out "$OUT" "$@"
  echo "gpu.py exit status: $?"
} 2>&1 | tee "$OUT/gpu.log"
