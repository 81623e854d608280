"""Everything that matters on one GPU, in one command, within ~9 minutes.

  bash benchmarks/gpu_suite.sh OUTDIR [--data_dir=DIR] [--epochs=N]
  python benchmarks/gpu_suite.py --out=OUTDIR --small   # the same code on a CPU

Parts, each written to OUTDIR as soon as it finishes (so a timeout still
leaves every finished part):
  1. smoke: a 2-epoch LoCal+SGD run of the tiny CNN on digits (static k, the
     Hebbian step, a checkpoint, TensorBoard): a version or install problem
     costs seconds, not the whole budget;
  2. step bench: ResNet-18 (CIFAR stem), bfloat16, batch 512, k in {0, the
     default's k, the largest}: XLA FLOPs and temporary bytes, median step
     times and ratios to k = 0, with the default local-rule settings and
     with a Hebbian update at every step on the whole batch;
  3. (--parts=imagenet_bench, not by default) the step bench of ResNet-50
     and MobileNetV2 with the ImageNet stem at 224 and 128 px, bf16, batch
     256, k in {0, the k holding half of the forward FLOPs, the largest};
  4. full CIFAR-10 (train/ 45k, evaluated on val/ 5k), ResNet-18, bfloat16:
     SGD, the documented default (configs/cifar10_resnet.py: the static
     schedule, its early units learning by the Hebbian rule oja) and the
     same schedule with those units frozen, for a fixed number of epochs,
     at batch 512 (the
     config's recipe; its learning rate follows the batch size).
The decisive experiment (SGD's budget frontier, the schedule grid, 10
seeds), for CIFAR-10 and for Imagenette (--config), is
benchmarks/frontier.py.

Files: suite.json (every figure), suite.log, comparison.md / .json and the
three plots of the full runs. The runs themselves (checkpoints, metrics,
TensorBoard) go to --runs_dir. Imports no TensorFlow.
"""
import os
import shutil
import sys
import time

from absl import app
from absl import flags
from absl import logging
import jax

from localsgd_jax import benchmarking
from localsgd_jax import flops
from localsgd_jax import models
from localsgd_jax import modes as modes_lib
from localsgd_jax import plots
from localsgd_jax import report
from localsgd_jax import runs as runs_lib
from localsgd_jax import selection
from localsgd_jax import train_lib
from localsgd_jax.configs import cifar10_resnet
from localsgd_jax.configs import quickstart

import suite_common  # benchmarks/suite_common.py  # pylint: disable=g-bad-import-order

_OUT = flags.DEFINE_string('out', None, 'Output folder.', required=True)
_DATA_DIR = flags.DEFINE_string(
    'data_dir', '', 'CIFAR-10 image folder (train/, val/); default: '
    '.gpu/cifar10-jpg, else ../shared/data/cifar10-jpg.')
_RUNS_DIR = flags.DEFINE_string('runs_dir', '', 'Where the full runs go '
                                '(default: OUT/../<OUT name>_runs).')
_EPOCHS = flags.DEFINE_integer('epochs', 15, 'Epochs of each full run.')
_SMALL = flags.DEFINE_bool(
    'small', False, 'The same code on a CPU in minutes: tiny CNN, 20 images '
    'per class, 2 epochs, batch 32.')
_PARTS = flags.DEFINE_list('parts', ['smoke', 'step_bench', 'runs'],
                           'Which parts to run.')

MODES = ('sgd', 'static', 'static_frozen')


def smoke(workdir: str) -> dict:
  config = quickstart.get_config()
  config.num_epochs = 2
  config.selection.mode = 'static'
  config.selection.table = '0:0,1:2'
  config.log.progress = False
  summary = train_lib.train_and_evaluate(config, workdir)
  return {k: summary[k] for k in ('final_eval_accuracy', 'total_time_s',
                                  'compile_time_s')}


def step_bench(small: bool) -> dict:
  config = cifar10_resnet.get_config()
  name, batch, dtype = ('tiny', 32, 'float32') if small else (
      'resnet18', 512, 'bfloat16')
  model = models.create_model(name, 10)
  num_units = model.num_units
  k_default = min(selection.k_for_flop_share(
      flops.unit_flops(model, (32, 32, 3)),
      config.selection.k_max_flop_share), num_units - 2)
  ks = [0, k_default, num_units - 1]
  out = {}
  for label, fraction, every in (
      ('default', config.local.hebbian_fraction, config.local.hebbian_every),
      ('every_step', 1.0, 1)):
    rows = benchmarking.measure_steps(
        name, batch, dtype=dtype, ks=ks, hebbian_fraction=fraction,
        hebbian_every=every, repeats=3 if small else 5,
        steps=2 if small else 10)
    print(f'{name}, batch {batch}, {dtype}, hebbian_fraction {fraction}, '
          f'hebbian_every {every}')
    print(benchmarking.format_table(rows), flush=True)
    out[label] = rows
  return out


def imagenet_bench(small: bool) -> dict:
  """The step bench of the paper's ImageNet networks: ResNet-50 and
  MobileNetV2 with the ImageNet stem at 224 px (ImageNet's resolution, 1000
  classes) and 128 px (Imagenette's, 10), bfloat16, batch 256, synthetic
  inputs; k in {0, the k whose units hold at most half of the forward
  FLOPs, all units but the head}; the default local-rule settings beside
  the frozen step. FLOPs of the programs as written (flops.py)."""
  local = cifar10_resnet.get_config().local
  settings = [('tiny', 32, 32, 10)] if small else [
      (name, size, 256, 1000 if size == 224 else 10)
      for name in ('resnet50', 'mobilenet_v2') for size in (224, 128)]
  out = {}
  for name, size, batch, classes in settings:
    model = models.create_model(name, classes, cifar_stem=small)
    per_unit = flops.unit_flops(model, (size, size, 3))
    k_half = selection.k_for_flop_share(per_unit, 0.5)
    rows = benchmarking.measure_steps(
        name, batch, image_size=size, num_classes=classes, cifar_stem=small,
        dtype='float32' if small else 'bfloat16',
        ks=sorted({0, k_half, model.num_units - 1}),
        hebbian_fraction=local.hebbian_fraction,
        hebbian_every=local.hebbian_every, repeats=3 if small else 5,
        steps=2 if small else 5)
    print(f'{name} at {size} px, batch {batch}, k_half {k_half} '
          f'({sum(per_unit[:k_half]) / sum(per_unit):.0%} of the forward '
          'FLOPs)')
    print(benchmarking.format_table(rows), flush=True)
    out[f'{name}_{size}'] = {
        'k_half': k_half,
        'k_half_forward_flop_share': sum(per_unit[:k_half]) / sum(per_unit),
        'rows': rows}
  return out


def full_runs(data_dir: str, runs_dir: str, epochs: int, small: bool,
              out_dir: str, record) -> None:
  config = cifar10_resnet.get_config()
  config.data.name = 'image_folder'
  config.data.dir = data_dir
  config.num_epochs = epochs
  config.checkpoint.every_epochs = epochs  # one checkpoint, at the end
  config.log.progress = False
  if small:
    config.model.name = 'tiny'
    config.selection.k_max, config.selection.k_max_flop_share = 2, 0.0
    config.batch_size = 32
    config.data.train_per_class = 20
  else:
    config.dtype = 'bfloat16'
    config.batch_size = 512
    config.eval_batch_size = 1000
  for mode in MODES:
    cfg = modes_lib.mode_config(config, mode, config.seed)
    print(f'=== full run: {mode}', flush=True)
    summary = train_lib.train_and_evaluate(
        cfg, runs_lib.run_dir(runs_dir, mode, cfg.seed))
    record(mode, {k: summary[k] for k in (
        'final_eval_accuracy', 'best_eval_accuracy', 'eval_split',
        'total_time_s', 'compile_time_s')})
    report.write_report(runs_dir, command=' '.join(sys.argv),
                        device=jax.devices()[0].device_kind)
    for name in ['comparison.md', 'comparison.json',
                 *plots.PLOTS.values()]:
      shutil.copy(os.path.join(runs_dir, name), out_dir)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  out_dir = os.path.abspath(_OUT.value)
  os.makedirs(out_dir, exist_ok=True)
  runs_dir = _RUNS_DIR.value or out_dir.rstrip('/') + '_runs'
  data_dir = _DATA_DIR.value or suite_common.default_data_dir('cifar10-jpg')
  record = suite_common.Record(out_dir, 'suite.json', argv=sys.argv)
  results = record.results

  with suite_common.tee(os.path.join(out_dir, 'suite.log')):
    print(f'suite on {results["device"]} x{results["device_count"]}, jax '
          f'{results["jax"]}, commit {results["git_commit"]}', flush=True)
    t_start = time.perf_counter()
    for part in _PARTS.value:
      t0 = time.perf_counter()
      print(f'--- {part}', flush=True)
      if part == 'smoke':
        record('smoke', smoke(os.path.join(runs_dir, 'smoke')))
      elif part == 'step_bench':
        record('step_bench', step_bench(_SMALL.value))
      elif part == 'imagenet_bench':
        record('imagenet_bench', imagenet_bench(_SMALL.value))
      elif part == 'runs':
        if not data_dir:
          raise app.UsageError('no CIFAR-10 folder: pass --data_dir')
        full_runs(data_dir, runs_dir, 2 if _SMALL.value else _EPOCHS.value,
                  _SMALL.value, out_dir,
                  lambda mode, v: record(f'run_{mode}', v))
      else:
        raise app.UsageError(f'unknown part {part!r}')
      results.setdefault('part_time_s', {})[part] = time.perf_counter() - t0
      results['tensorflow_imported'] = 'tensorflow' in sys.modules
      record.write()
      print(f'--- {part} done in {time.perf_counter() - t0:.1f}s '
            f'({time.perf_counter() - t_start:.1f}s in all)', flush=True)


if __name__ == '__main__':
  app.run(main)
