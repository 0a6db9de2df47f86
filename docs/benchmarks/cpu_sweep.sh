#!/usr/bin/env bash
# Reproduces docs/benchmarks/cpu_throughput.jsonl and .png: training
# throughput of the three zoo models at batch sizes 32, 128 and 512 (28x28x1,
# 10 classes, float32), jaxcnn beside PyTorch and Keras 3 (TensorFlow and JAX
# backends). Rounds are interleaved (round 0 of every model and framework,
# then round 1, ...), so a busy spell of a shared machine is spread over all
# of them instead of landing on one.
#
# Run from the repository root with an interpreter that has the 'compare'
# extra installed:  PYTHON=/path/to/venv/bin/python docs/benchmarks/cpu_sweep.sh
set -euo pipefail
PYTHON=${PYTHON:-python}
OUT=${OUT:-docs/benchmarks/cpu_throughput.jsonl}
ROUNDS=${ROUNDS:-3}
: > "$OUT"
for round in $(seq 0 $((ROUNDS - 1))); do
  for model in keras_convnet seed_cnn flax_cnn; do
    "$PYTHON" -m jaxcnn bench --model "$model" --input-shape 28x28x1 --classes 10 \
      --batch-sizes 32,128,512 --steps 5 --repeats 5 --warmup 2 \
      --compare torch,keras --first-round "$round" --out "$OUT" --append
  done
done
"$PYTHON" -m jaxcnn bench --plot "$OUT" --png "${OUT%.jsonl}.png"
