#!/usr/bin/env bash
# jaxcnn (the step `jaxcnn train` runs, under its execution policy) against PyTorch eager and
# Keras 3 on TensorFlow, batch 128, training, float32, 28x28x1, three interleaved rounds.
# Usage: PYTHON=/path/to/venv-with-compare-extra/bin/python docs/benchmarks/cpu_policy_sweep.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python}
for model in keras_convnet seed_cnn flax_cnn; do
  "$PYTHON" -m jaxcnn bench --model "$model" --input-shape 28x28x1 --classes 10 \
      --batch-sizes 128 --steps 10 --repeats 5 --warmup 2 --compare torch,keras-tensorflow \
      --rounds 3 --out "docs/benchmarks/cpu_policy_${model}_b128.jsonl"
done
