#!/usr/bin/env bash
# Does the local rule earn its place (issue #12)? The CPU proxy: CIFAR
# ResNet-20 on the first 450 training images per class of a CIFAR-10 image
# folder, evaluated on a seeded hold-out of OTHER training images
# (config.data.holdout_per_class; never on val/, which reports). Plain SGD
# runs first; every variant is then a fork of its seed's SGD run at the end
# of the config's warm-up (60% of the epochs), so variants share that state
# and differ only in what the local units do for the remaining epochs, on
# the config's static schedule (k_max by FLOP share: 6 of 11 units).
# `frozen` (learning rate 0, i.e. freezing: the config's default since this
# sweep, benchmarks/RESULTS.md) is the reference the Hebbian variants must
# beat. Paired seeds; the last lines print each variant minus frozen with a
# 95% interval.
#
#   bash benchmarks/local_rule_sweep.sh ../shared/data/cifar10-jpg runs/sweep
#   (env: EPOCHS=10 SEEDS=2 HOLDOUT=500 PER_CLASS=450; reruns skip finished
#   runs)
set -euo pipefail
DATA=${1:?usage: $0 DATA_DIR OUT}; OUT=${2:?usage: $0 DATA_DIR OUT}
EPOCHS=${EPOCHS:-10} SEEDS=${SEEDS:-2} HOLDOUT=${HOLDOUT:-500} PER_CLASS=${PER_CLASS:-450}
WARMUP=$((EPOCHS * 3 / 5))
common=(--config=configs/cifar10_resnet.py --config.data.name=image_folder
        --config.data.dir="$DATA" --config.data.train_per_class="$PER_CLASS"
        --config.data.holdout_per_class="$HOLDOUT"
        --config.model.name=resnet20 --config.num_epochs="$EPOCHS"
        --config.eval_every_epochs="$EPOCHS" --config.log.progress=false)
python compare.py "${common[@]}" --modes=sgd --seeds="$SEEDS" \
    --workdir="$OUT" --config.checkpoint.every_epochs=1 \
    --config.checkpoint.keep="$EPOCHS"
for ((seed = 0; seed < SEEDS; seed++)); do
  while read -r name overrides; do
    # shellcheck disable=SC2086
    python train.py "${common[@]}" --config.seed="$seed" $overrides \
        --config.init_from="$OUT/sgd/seed_{seed}:$WARMUP" \
        --config.checkpoint.every_epochs="$EPOCHS" \
        --workdir="$OUT/$name/seed_$seed"
  done <<'VARIANTS'
frozen          --config.local.rule=frozen
oja             --config.local.rule=oja
oja_lr1e-3      --config.local.rule=oja --config.local.learning_rate=1e-3
oja_lr1e-2      --config.local.rule=oja --config.local.learning_rate=1e-2
oja_every_step  --config.local.rule=oja --config.local.hebbian_every=1 --config.local.hebbian_fraction=1.0
oja_ws_none     --config.local.rule=oja --config.local.weak_supervision=none
gha             --config.local.rule=gha
VARIANTS
done
python compare.py "${common[@]}" --report_only --workdir="$OUT"
python - "$OUT" <<'EOF'
import sys
from localsgd_jax import aggregate, runs
by_variant = runs.load_runs(sys.argv[1])
print('\nvariant minus frozen, final hold-out accuracy (points), paired seeds:')
for name, by_seed in by_variant.items():
  d = aggregate.paired_difference(by_seed, by_variant['frozen'])
  ci = 'n/a' if d['ci95'] is None else f'{100 * d["ci95"]:.2f}'
  print(f'  {name:16s} {100 * d["mean"]:+.2f} (per seed '
        f'{", ".join(f"{100 * x:+.2f}" for x in d["diffs"])}; 95% CI '
        f'+/- {ci}, n={len(d["diffs"])})')
EOF
