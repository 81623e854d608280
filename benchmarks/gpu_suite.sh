#!/usr/bin/env bash
# The GPU suite (benchmarks/gpu_suite.py) in one command, for a machine with
# one NVIDIA GPU and JAX's CUDA build. Installs nothing; needs the project's
# pure-Python requirements (flax, optax, orbax-checkpoint, ml-collections,
# tensorboardX, matplotlib, tqdm, absl-py, scikit-learn) on the path.
#
#   bash benchmarks/gpu_suite.sh OUTDIR [--data_dir=DIR] [--epochs=N] [--small]
set -euo pipefail
out=${1:?usage: bash benchmarks/gpu_suite.sh OUTDIR [--data_dir=DIR] [--epochs=N] [--small]}
shift
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
cd "$root"
exec python3 benchmarks/gpu_suite.py --out="$(cd "$out" && pwd)" "$@"
