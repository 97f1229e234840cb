#!/usr/bin/env bash
# GPU acceptance run, one command:  bash scripts/gpu_check.sh
#  1. the tests marked `cuda` (tests/test_cuda.py): fp16/bf16 training steps of every model family (fused
#     Adam, GradScaler, clipping), amp logits vs fp32, compile + channels_last vs eager, the model's mel on
#     the GPU vs torchaudio's on the CPU, 2-GPU NCCL DDP vs 1 process;
#  2. every config's training samples/s and peak memory at its real batch size, for fp16 and bf16,
#     with and without compile and channels_last (scripts/bench_model.py, one fresh process per row),
#     printed as one markdown table and saved to $OUT (default output/gpu_check.md).
# Knobs (environment): CONFIGS="cfg_1 cfg_5a" (default: all), VARIANTS="fp16 bf16" (default: the 8
# combinations), STEPS=20. On a machine without CUDA it says so and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no CUDA device on this machine; the cuda tests skip and nothing is benchmarked."
  python -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider || [ $? -eq 5 ]
  echo "gpu_check: skipped (run it on a GPU machine)."
  exit 0
fi

CONFIGS=${CONFIGS:-all}
VARIANTS=${VARIANTS:-"fp16 bf16 fp16+compile bf16+compile fp16+cl bf16+cl fp16+compile+cl bf16+compile+cl"}
STEPS=${STEPS:-20}
OUT=${OUT:-output/gpu_check.md}
mkdir -p "$(dirname "$OUT")"

python - <<'EOF'
import torch
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"gpu_check: cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB; torch {torch.__version__}, CUDA {torch.version.cuda}")
EOF

echo "gpu_check: 1/2 cuda tests"
tests_rc=0
python -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider || tests_rc=$?

echo "gpu_check: 2/2 benchmark (configs: $CONFIGS; variants: $VARIANTS; $STEPS steps each)"
# shellcheck disable=SC2086  # word splitting of the lists is intended
python scripts/bench_model.py --device cuda -C $CONFIGS --table --variants $VARIANTS --steps "$STEPS" | tee "$OUT"
echo "gpu_check: done; table in $OUT"
if [ "$tests_rc" -ne 0 ]; then
  echo "gpu_check: the cuda tests FAILED (pytest exit $tests_rc): see above" >&2
  exit "$tests_rc"
fi
