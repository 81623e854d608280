"""The training loop's own costs: the input path and the fixed host cost per step.

  python benchmarks/loop_bench.py [--folder=../shared/data/cifar10-jpg]

1. Input path alone, images/s of building training batches (no model):
   the device-resident in-memory path (`storage=memory`: gather + crop +
   flip + normalize on the device) against tf.data streaming of the same
   image folder (`storage=stream`: decode, crop, uint8 to the device,
   normalized there). Without --folder only the in-memory path (digits).
2. Fixed host cost per step: an epoch of the tiny CNN on 8x8 digits through
   `loop.TrainLoop.run_epoch` (batch built inside the step, metrics kept on
   the device, finite check every 50 steps) against the same compiled
   program called back to back with its inputs fixed. The difference per
   step is what the loop itself adds. Medians over --repeats epochs.
"""
import statistics
import time

from absl import app
from absl import flags
import jax

from localsgd_jax import data
from localsgd_jax import metrics as metrics_lib
from localsgd_jax import train_lib
from localsgd_jax.configs import quickstart

_FOLDER = flags.DEFINE_string('folder', '', 'An image folder (train/, val/) '
                              'for the input-path comparison.')
_BATCHES = flags.DEFINE_integer('batches', 100, 'Batches per input path.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Epochs timed per variant.')


def input_path(dataset, batch_size: int, batches: int) -> float:
  """Images/s of `train_batches` alone (after one warm-up batch)."""
  it = dataset.train_batches(0, batch_size)
  jax.block_until_ready(next(it))
  t0 = time.perf_counter()
  n = 0
  for batch in it:
    n += 1
    if n == batches:
      break
  jax.block_until_ready(batch)
  return n * batch_size / (time.perf_counter() - t0)


def loop_cost(repeats: int):
  """(loop ms/step, bare program ms/step) for the tiny CNN on 8x8 digits."""
  config = quickstart.get_config()
  config.selection.mode = 'sgd'  # the plain step (k = 0) in every epoch
  config.data.image_size = 8
  config.batch_size = 8
  config.local.hebbian_every = 1
  config.num_epochs = 100
  parts = train_lib.build(config, jax.devices()[:1])
  dataset, loop, state, selector = (parts.dataset, parts.loop, parts.state,
                                    parts.selector)
  steps = parts.steps_per_epoch
  loop_times = []
  for epoch in range(repeats + 1):
    progress = metrics_lib.Progress(epoch, 100, steps, False)
    state, result = loop.run_epoch(state, epoch, selector, progress,
                                   lambda *a: RuntimeError(a))
    if epoch:  # the first epoch compiles
      loop_times.append(result.train_time_s / steps)
  # The same compiled program, inputs fixed, called back to back.
  compiled = loop.steps.compiled[(0, False)]
  feed = dataset.train_feed(0, config.batch_size, loop.replicated)
  operand = loop.operand(repeats + 1, feed)
  carry = (state, loop._zeros())  # pylint: disable=protected-access
  bare = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    for _ in range(steps):
      carry = compiled(carry, operand)
    jax.block_until_ready(carry)
    bare.append((time.perf_counter() - t0) / steps)
    carry = (carry[0].replace(step=carry[0].step - steps), carry[1])
  return statistics.median(loop_times) * 1e3, statistics.median(bare) * 1e3


def main(argv):
  del argv
  print(f'{jax.devices()[0].device_kind} x{jax.device_count()}, '
        f'jax {jax.__version__}')
  cfg = quickstart.get_config().data
  if _FOLDER.value:
    cfg.name, cfg.dir = 'image_folder', _FOLDER.value
    for storage in ('memory', 'stream'):
      cfg.storage = storage
      ds = data.load_dataset(cfg, seed=0)
      print(f'input path, {storage:>6}: '
            f'{input_path(ds, 128, _BATCHES.value):>9.0f} images/s '
            f'(batch 128, {ds.image_shape})', flush=True)
  else:
    ds = data.load_dataset(cfg, seed=0)
    print(f'input path, memory (digits): '
          f'{input_path(ds, 128, _BATCHES.value):.0f} images/s')
  loop_ms, bare_ms = loop_cost(_REPEATS.value)
  print(f'tiny CNN, 8x8 digits, batch 8: loop {loop_ms:.3f} ms/step, the '
        f'same program back to back {bare_ms:.3f} ms/step: the loop adds '
        f'{loop_ms - bare_ms:.3f} ms/step')


if __name__ == '__main__':
  app.run(main)
