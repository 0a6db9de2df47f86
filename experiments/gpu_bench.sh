#!/usr/bin/env bash
# Every GPU figure jaxcnn needs, in one script of under 8 minutes on one H100/H200.
#
#   (a) cifar_speed, 32x32x3, batch 1024, bfloat16, training step: jaxcnn vs PyTorch
#       (torch.compile on a GPU; jaxcnn/compare/torch_impl.py), same session;
#   (b) resnet50, 224x224x3, 1,000 classes, batch 256, bfloat16, training step:
#       images/s and utilisation of the GPU's published peak;
#   (c) --steps-per-call 1 against 8 (the same 40 steps per timed round) for cifar_speed
#       (batch 1024, bfloat16) and keras_convnet (28x28x1, batches 32, 128, 1024, float32):
#       to choose the GPU default of train.steps_per_call;
#   (d) resnet18_cifar, batch 128, float32: jaxcnn vs PyTorch (skipped when the time is up).
#
# Usage (from the repository root; needs jax, flax, optax, orbax and torch, not
# tensorflow-datasets or a network: every benchmark uses synthetic batches):
#
#   PYTHONPATH=. bash experiments/gpu_bench.sh [OUTDIR]
#
# OUTDIR defaults to $OUT, else runs/gpu. It gets one <step>.jsonl (jaxcnn bench --out)
# and <step>.log per step, env.txt (nvidia-smi, versions), and summary.md / summary.json
# (experiments/gpu_bench.py), which are also printed at the end. Each step runs under
# `timeout` (its own limit, 40-150 s, capped by what is left of the 450 s budget, so the
# last steps shrink or are skipped when the first ones run long); a step that fails or
# times out is recorded and the script goes on. Exit status: 0 when every step ran, 1
# otherwise.
#
# CPU dry run (checks that every command parses and runs: the same models and flags with
# tiny shapes, one timed step, 4x the timeouts, torch skipped when not installed; on 2
# shared CPU cores it took 94 s with a warm compilation cache and 6.7 minutes cold, 3 of
# them compiling resnet50; its figures mean nothing):
#
#   SMOKE=1 PYTHONPATH=. bash experiments/gpu_bench.sh /tmp/gpu_smoke
#
# Expected on an H100/H200: not yet measured; the summary holds the figures.

set -u

OUTDIR="${1:-${OUT:-runs/gpu}}"
mkdir -p "$OUTDIR"
# The interpreter: $PYTHON, else the first of .venv/bin/python, python3, python that imports jax.
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for candidate in .venv/bin/python python3 python; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c "import jax" >/dev/null 2>&1; then
      PY="$candidate"
      break
    fi
  done
fi
if [ -z "$PY" ]; then
  echo "no Python with jax found; set PYTHON=/path/to/python" >&2
  exit 2
fi
export PYTHONPATH="${PYTHONPATH:-.}"
SMOKE="${SMOKE:-0}"
BUDGET="${BUDGET:-450}"          # seconds for all steps together (SMOKE: $BUDGET_SMOKE, 1500)
START=$SECONDS
FAILED=()

SCALE=1                          # timeouts are multiplied by this
EXTRA=()                         # flags added to every command
if [ "$SMOKE" = "1" ]; then
  # Tiny shapes and one timed step, so a CPU runs each command in well under a minute once
  # compiled; the models and flags are the GPU run's. A fixed peak skips the CPU's matmul
  # measurement, and the compilation cache stays on so a second dry run compiles nothing.
  CS_BATCH=2; RN50_SHAPE=32x32x3; RN50_BATCH=1; RN50_CLASSES=10
  KC_BATCHES=8; RN18_BATCH=2
  STEPS=1; REPEATS=1; WARMUP=1; SPC_STEPS1=2; SPC_STEPS8=1
  EXTRA=(--peak-flops 1e11 --keep-compilation-cache)
  SCALE=4; BUDGET="${BUDGET_SMOKE:-1500}"
else
  CS_BATCH=1024; RN50_SHAPE=224x224x3; RN50_BATCH=256; RN50_CLASSES=1000
  KC_BATCHES=32,128,1024; RN18_BATCH=128
  STEPS=10; REPEATS=5; WARMUP=2; SPC_STEPS1=40; SPC_STEPS8=5
fi

COMPARE=(--compare torch)
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  if [ "$SMOKE" = "1" ]; then
    echo "torch is not installed: the dry run skips --compare torch" | tee -a "$OUTDIR/env.txt"
    COMPARE=()
  else
    echo "warning: torch is not importable; the torch comparisons will fail" >&2
  fi
fi

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "smoke: $SMOKE"
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi
  "$PY" - <<'EOF'
import importlib
for name in ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "torch", "numpy"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as e:  # noqa: BLE001
        print(name, "not available:", type(e).__name__)
try:
    import jax
    print("devices:", jax.devices())
except Exception as e:  # noqa: BLE001
    print("jax devices failed:", e)
EOF
} >> "$OUTDIR/env.txt" 2>&1

# run_step NAME TIMEOUT_S ARGS...: `python -m jaxcnn bench ARGS --out OUTDIR/NAME.jsonl`
# under `timeout`, capped by the budget left; skipped when under 20 s are left.
run_step() {
  local name="$1" limit=$(( $2 * SCALE )); shift 2
  local left=$(( BUDGET - (SECONDS - START) ))
  if [ "$left" -lt 20 ]; then
    echo "[$name] skipped: ${left}s of the ${BUDGET}s budget left" | tee "$OUTDIR/$name.log"
    FAILED+=("$name (skipped)")
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "[$name] (timeout ${limit}s) jaxcnn bench $* ${EXTRA[*]+${EXTRA[*]}}"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$PY" -m jaxcnn bench "$@" ${EXTRA[@]+"${EXTRA[@]}"} \
    --out "$OUTDIR/$name.jsonl" \
    > "$OUTDIR/$name.log" 2>&1
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    tail -n 5 "$OUTDIR/$name.log" | sed "s/^/[$name]   /"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
      echo "[$name] timed out after ${limit}s" | tee -a "$OUTDIR/$name.log"
    else
      echo "[$name] failed (exit $rc)" | tee -a "$OUTDIR/$name.log"
    fi
    FAILED+=("$name (exit $rc)")
  else
    echo "[$name] done in $(( SECONDS - t0 ))s"
  fi
}

COMMON=(--steps "$STEPS" --repeats "$REPEATS" --warmup "$WARMUP" --what train)

# (a) cifar_speed vs torch.compile, the airbench94 setting.
run_step a_cifar_speed_vs_torch 140 --model cifar_speed --input-shape 32x32x3 \
  --batch-sizes "$CS_BATCH" --dtype bfloat16 "${COMMON[@]}" ${COMPARE[@]+"${COMPARE[@]}"}

# (b) resnet50, ImageNet shape, bfloat16: images/s and utilisation.
run_step b_resnet50_bf16 150 --model resnet50 --input-shape "$RN50_SHAPE" \
  --classes "$RN50_CLASSES" --batch-sizes "$RN50_BATCH" --dtype bfloat16 "${COMMON[@]}"

# (c) steps per call 1 vs 8, the same 40 steps per timed round.
SPC=(--repeats "$REPEATS" --warmup "$WARMUP" --what train)
run_step c_cifar_speed_spc1 60 --model cifar_speed --input-shape 32x32x3 \
  --batch-sizes "$CS_BATCH" --dtype bfloat16 --steps-per-call 1 --steps "$SPC_STEPS1" "${SPC[@]}"
run_step c_cifar_speed_spc8 70 --model cifar_speed --input-shape 32x32x3 \
  --batch-sizes "$CS_BATCH" --dtype bfloat16 --steps-per-call 8 --steps "$SPC_STEPS8" "${SPC[@]}"
run_step c_keras_convnet_spc1 40 --model keras_convnet --input-shape 28x28x1 \
  --batch-sizes "$KC_BATCHES" --dtype float32 --steps-per-call 1 --steps "$SPC_STEPS1" "${SPC[@]}"
run_step c_keras_convnet_spc8 45 --model keras_convnet --input-shape 28x28x1 \
  --batch-sizes "$KC_BATCHES" --dtype float32 --steps-per-call 8 --steps "$SPC_STEPS8" "${SPC[@]}"

# (d) optional: resnet18_cifar, float32, vs torch.
run_step d_resnet18_cifar_vs_torch 90 --model resnet18_cifar --input-shape 32x32x3 \
  --batch-sizes "$RN18_BATCH" --dtype float32 "${COMMON[@]}" ${COMPARE[@]+"${COMPARE[@]}"}

echo
echo "total $(( SECONDS - START ))s of the ${BUDGET}s budget"
"$PY" experiments/gpu_bench.py "$OUTDIR" || echo "summary failed"
if [ "${#FAILED[@]}" -gt 0 ]; then
  echo "steps that did not finish: ${FAILED[*]}"
  exit 1
fi
exit 0
