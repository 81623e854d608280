#!/usr/bin/env bash
# The mode comparison of issue #4: CIFAR ResNet-20 on a CIFAR-10 folder (e.g.
# ../shared/data/cifar10-subset), sgd against LoCal+SGD and its peers, with
# paired seeds.
#
#   bash benchmarks/cifar_subset_comparison.sh DATA_DIR WORKDIR [SGD_WORKDIR
#       [--config.x=y ...]]
#   (env: EPOCHS=10 WARMUP=6 SEEDS=3 MODES="static dynamic freeze" (add
#   sgd_same_time after the mode it matches, --match_mode), and
#   K_MAX to fix k_max instead of the config's FLOP share (6 of ResNet-20's
#   11 units); further arguments go to compare.py)
#
# Every mode but sgd trains plain SGD for its first WARMUP epochs, bit-identical
# to the sgd run of the same seed (same init, data order and steps). So those
# runs are forks of that sgd run after WARMUP epochs instead of recomputing
# them (dynamic one epoch earlier: its first decision is made at the end of
# epoch WARMUP, by its own rule): --config.init_from=WORKDIR/sgd/seed_{seed}:E
# starts each from the checkpoint of its seed's sgd run, takes that run's
# metrics rows for those epochs, and records the parent, the epoch and what
# differs from the parent in run.json and summary.json (README, "Outputs").
# Its recorded time includes the sgd run's time for the epochs it did not
# train. The result is the one compare.py alone would give, in about half
# the CPU time. With SGD_WORKDIR (an earlier run of this script with the
# same EPOCHS and SEEDS), its sgd runs are copied instead of trained again,
# so trying another WARMUP or K_MAX costs only the local epochs. Running the
# script again skips every finished run.
set -euo pipefail
DATA=${1:?usage: $0 DATA_DIR WORKDIR [SGD_WORKDIR]}
OUT=${2:?usage: $0 DATA_DIR WORKDIR [SGD_WORKDIR]}
EPOCHS=${EPOCHS:-10} WARMUP=${WARMUP:-6} K_MAX=${K_MAX:-} SEEDS=${SEEDS:-3}
MODES=${MODES:-static dynamic freeze}
# The proxy recipe of RESULTS.md, not the config's public ResNet-18 one.
args=(--config=configs/cifar10_resnet.py --config.data.dir="$DATA"
      --config.batch_size=128 --config.optim.learning_rate=0.1
      --config.optim.schedule=cosine --config.optim.warmup_epochs=1
      --config.data.cutout=0 --config.eval_tta=none
      --config.model.name=resnet20 --config.num_epochs="$EPOCHS"
      --config.selection.warmup_epochs="$WARMUP"
      --config.selection.ramp_epochs=1
      --config.checkpoint.every_epochs=1 --config.checkpoint.keep="$EPOCHS"
      --seeds="$SEEDS" --workdir="$OUT" "${@:4}")
if [[ -n "$K_MAX" ]]; then
  args+=(--config.selection.k_max="$K_MAX" --config.selection.k_max_flop_share=0)
fi
if [[ -n "${3:-}" && ! -e "$OUT/sgd" ]]; then
  # Whole finished runs: their config.json says what they are, and
  # compare.py skips them (plain-SGD runs ignore the selection fields).
  mkdir -p "$OUT" && cp -r "$3/sgd" "$OUT/"
fi
python compare.py "${args[@]}" --modes=sgd
for mode in $MODES; do
  from=$WARMUP
  [[ $mode == dynamic ]] && from=$((WARMUP - 1))
  fork=()
  # sgd_same_time (list it after its --match_mode, default static) is a
  # whole SGD run of fewer epochs: another schedule, so not a fork.
  if [[ $mode != sgd_same_time ]] && ((from >= 1)); then
    fork=(--config.init_from="$OUT/sgd/seed_{seed}:$from")
  fi
  # Each call also rewrites the report of every run in $OUT.
  python compare.py "${args[@]}" --modes="$mode" ${fork[@]+"${fork[@]}"}
done
