"""The FLOP count as written against the compiled CPU program's own count.

  python benchmarks/flop_count_check.py            # ResNet-18, -50, MobileNetV2
  python benchmarks/flop_count_check.py --small    # the tiny CNN, seconds

For the train step of each network at k = 0 (SGD), the k whose units hold
at most half of the forward FLOPs and the largest k, with the Hebbian rule
oja and frozen, prints FLOPs per image two ways: XLA's cost analysis of the
step's CPU lowering before optimization (`flops.cpu_flops`, what every
figure of the project uses) and of the same lowering compiled for the CPU
(`compiled.cost_analysis()`). The second is what XLA:CPU runs, not what the
program asks for: it densifies the weight gradient of depthwise
convolutions (benchmarks/RESULTS.md). Shapes only; nothing runs.
"""
import functools
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from localsgd_jax import flops
from localsgd_jax import models
from localsgd_jax import optim
from localsgd_jax import selection
from localsgd_jax import train_step as ts
from localsgd_jax.configs import default

_SMALL = flags.DEFINE_bool('small', False, 'The tiny CNN at 32 px only.')
_BATCH = flags.DEFINE_integer('batch_size', 2, 'Images per step.')

# (network, px): the CIFAR stem at 32 px, the ImageNet stem otherwise.
NETWORKS = (('resnet18', 32), ('resnet50', 128), ('mobilenet_v2', 128))


def check(name: str, px: int, batch: int):
  """One row per (rule, k): both counts per image and their ratio."""
  model = models.create_model(name, 10, cifar_stem=px == 32)
  config = default.get_config()
  tx = optim.direction(config.optim)
  shape = (px, px, 3)
  state = jax.eval_shape(lambda: ts.create_train_state(
      model, tx, jax.random.key(0), shape))
  images = {'image': jax.ShapeDtypeStruct((batch, *shape), jnp.float32),
            'label': jax.ShapeDtypeStruct((batch,), jnp.int32),
            'mask': jax.ShapeDtypeStruct((batch,), jnp.float32)}
  k_half = selection.k_for_flop_share(flops.unit_flops(model, shape), 0.5)
  rows = []
  for rule in ('oja', 'frozen'):
    cfg = config.copy_and_resolve_references()
    cfg.local.rule = rule
    step = jax.jit(functools.partial(ts.make_train_step(model, tx, cfg),
                                     rates=ts.step_rates(cfg)),
                   static_argnums=(2, 3))
    for k in sorted({0, k_half, model.num_units - 1}):
      if rule == 'frozen' and k == 0:
        continue  # the SGD step, as oja's
      traced = step.trace(state, images, k, True)
      written = flops.cpu_flops(traced)
      t0 = time.perf_counter()
      compiled = flops.cost_counts(traced.lower(
          lowering_platforms=('cpu',)).compile())['flops']
      rows.append((name, px, rule, k, written / batch, compiled / batch,
                   time.perf_counter() - t0))
  return rows


def main(argv):
  del argv
  networks = (('tiny', 32),) if _SMALL.value else NETWORKS
  print('| network | px | rule | k | GFLOP / image, as written | compiled '
        'for the CPU | compiled / as written | CPU compile (s) |')
  print('|---|---|---|---|---|---|---|---|')
  for name, px in networks:
    for n, p, rule, k, written, compiled, secs in check(name, px,
                                                        _BATCH.value):
      print(f'| {n} | {p} | {rule} | {k} | {written / 1e9:.3f} | '
            f'{compiled / 1e9:.3f} | {compiled / written:.3f} | {secs:.1f} |',
            flush=True)


if __name__ == '__main__':
  app.run(main)
