#!/usr/bin/env bash
# Local-rule choices on real data: CIFAR ResNet-20 on a CIFAR-10 folder, SGD and
# freezing as references, then LoCal+SGD with each rule / activity / weak
# supervision, all under the same static schedule (2 SGD epochs, then the
# boundary ramps to 7 of 11 units). One seed each: a screen, not the final
# comparison (compare.py with 3 seeds is).
#   bash benchmarks/local_rule_sweep.sh ../shared/data/cifar10-subset runs/sweep
set -euo pipefail
DATA=${1:?CIFAR folder}; OUT=${2:?output dir}; EPOCHS=${EPOCHS:-5}
common=(--config=configs/cifar10_resnet.py --config.data.dir="$DATA"
        --config.model.name=resnet20 --config.num_epochs="$EPOCHS"
        --config.selection.warmup_epochs=2 --config.selection.ramp_epochs=2
        --config.selection.k_max=7 --config.log.progress=false --seeds=1)
python compare.py "${common[@]}" --modes=sgd,freeze --workdir="$OUT/refs"
while read -r name overrides; do
  # shellcheck disable=SC2086
  python compare.py "${common[@]}" --modes=static $overrides \
      --workdir="$OUT/$name"
done <<'VARIANTS'
oja_bn          --config.local.rule=oja --config.local.activity=bn
oja_bn_relu     --config.local.rule=oja --config.local.activity=bn_relu
oja_conv        --config.local.rule=oja --config.local.activity=conv
gha_bn          --config.local.rule=gha --config.local.activity=bn
oja_bn_ws_none  --config.local.rule=oja --config.local.weak_supervision=none
oja_bn_lr1e-3   --config.local.rule=oja --config.local.learning_rate=1e-3
VARIANTS
