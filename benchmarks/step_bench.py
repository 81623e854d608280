"""Cost of the LoCal+SGD step for every transition index k of a model.

Prints a table and writes a JSON list with one object per k: XLA FLOPs and
temporary bytes, median step time and images/s of the Hebbian step and of the
frozen step, each also as a ratio to k = 0 (see localsgd_jax/benchmarking.py).

  python benchmarks/step_bench.py --model=resnet18 --batch_size=32 \
      --out=/tmp/resnet18.json
"""
import json

from absl import app
from absl import flags
import jax

from localsgd_jax import benchmarking

flags.DEFINE_string('model', 'resnet18', 'Model name.')
flags.DEFINE_integer('batch_size', 32, 'Batch size.')
flags.DEFINE_string('out', '', 'Write the JSON list of results here.')
flags.DEFINE_integer('image_size', 32, 'Input height and width.')
flags.DEFINE_integer('channels', 3, 'Input channels.')
flags.DEFINE_integer('num_classes', 10, 'Classes.')
flags.DEFINE_bool('cifar_stem', True, 'CIFAR stem (3x3, stride 1).')
flags.DEFINE_string('rule', '', 'Local rule of the Hebbian step ('' = the '
                    'default of configs/default.py).')
flags.DEFINE_float('hebbian_fraction', 1.0, 'Hebbian GEMM on 1/m of the batch.')
flags.DEFINE_integer('hebbian_every', 1, 'Hebbian step every m-th step: the '
                     'last column is the mean step time then.')
flags.DEFINE_string('dtype', 'float32', 'Compute dtype: float32 or bfloat16.')
flags.DEFINE_string('ks', '', 'Comma-separated k to measure; default all.')
flags.DEFINE_bool('frozen', True, 'Also time the frozen (forward-only) step.')
flags.DEFINE_integer('repeats', 7, 'Timed repeats per k (median taken).')
flags.DEFINE_integer('steps', 3, 'Consecutive steps per timed repeat.')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  ks = [int(k) for k in FLAGS.ks.split(',')] if FLAGS.ks else None
  rows = benchmarking.measure_steps(
      FLAGS.model, FLAGS.batch_size, image_size=FLAGS.image_size,
      channels=FLAGS.channels, num_classes=FLAGS.num_classes,
      cifar_stem=FLAGS.cifar_stem, rule=FLAGS.rule,
      hebbian_fraction=FLAGS.hebbian_fraction,
      hebbian_every=FLAGS.hebbian_every, dtype=FLAGS.dtype, ks=ks,
      frozen=FLAGS.frozen, repeats=FLAGS.repeats, steps=FLAGS.steps)
  print(f'{FLAGS.model}, batch {FLAGS.batch_size}, {FLAGS.dtype}, rule '
        f'{rows[0]["rule"]}, hebbian_fraction {FLAGS.hebbian_fraction}, '
        f'hebbian_every {FLAGS.hebbian_every}, '
        f'{jax.devices()[0].device_kind} x{jax.device_count()}')
  print(benchmarking.format_table(rows))
  if FLAGS.out:
    with open(FLAGS.out, 'w') as f:
      json.dump(rows, f, indent=1)


if __name__ == '__main__':
  app.run(main)
