#!/usr/bin/env bash
# One command for a machine with a CUDA GPU (under 5 minutes on one GPU):
#
#   benchmarks/gpu_check.sh [results folder, default benchmarks/results]
#
# 1. runs tests/test_cuda.py (the operator against the CPU result, every eigensolver, the
#    wrapper in every mode with resume, host syncs of a projected step, reproduce --quick
#    --device cuda, and the DDP example on NCCL when two GPUs are present);
# 2. runs the paper-scale benchmark on the GPU with tiny data (--device cuda --quick) and
#    writes its tables: <folder>/paper_scale_cuda.quick.{json,md} and, when the folder is
#    benchmarks/results, the regenerated docs/performance.md;
# 3. keeps the test log next to them (<folder>/gpu_check_tests.txt).
#
# It refuses to run without CUDA (there is nothing to check). Commit the results folder and
# docs/performance.md afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-benchmarks/results}"
mkdir -p "$OUT"
python - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA device visible to torch; nothing to check")
print("gpu_check:", torch.cuda.device_count(), "x", torch.cuda.get_device_name(0), "| torch", torch.__version__)
PY
start=$SECONDS
status=0
timeout 240 python -m pytest tests/test_cuda.py -q -rs -p no:cacheprovider 2>&1 \
    | tee "$OUT/gpu_check_tests.txt" || status=$?
docs=()
if [ "$(realpath "$OUT")" = "$(realpath benchmarks/results)" ]; then
    docs=(--docs docs/performance.md)
fi
timeout 240 python -m benchmarks.paper_scale --device cuda --quick --out "$OUT" "${docs[@]}" \
    || status=$?
echo "gpu_check: finished in $((SECONDS - start)) s with status $status (tests: $OUT/gpu_check_tests.txt)"
exit "$status"
