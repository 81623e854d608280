"""A training run: data, model, the epochs, evaluation, checkpoints, metrics.

`train_and_evaluate(config, workdir)` is the one entry point used by
`train.py`, the comparison harness, the notebooks and the tests. The steps
of an epoch run in `loop.TrainLoop`.
"""
import json
import math
import os
import subprocess
import time
from typing import Any, Dict

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from localsgd_jax import checkpointing
from localsgd_jax import data
from localsgd_jax import local_rules
from localsgd_jax import loop as loop_lib
from localsgd_jax import metrics as metrics_lib
from localsgd_jax import models
from localsgd_jax import optim
from localsgd_jax import selection
from localsgd_jax import train_step as train_step_lib
from localsgd_jax.errors import UserError

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
LOCAL_RULES = local_rules.RULES + ('frozen',)
WEAK_SUPERVISION = ('none', 'scale', 'sign')


def _check(ok: bool, field: str, value: Any, expected: str) -> None:
  if not ok:
    raise UserError(f'config.{field}={value!r} is out of range: expected '
                    f'{expected}. Fix it in the config file or with '
                    f'--config.{field}=...')


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises UserError for out-of-range values (names are checked later)."""
  _check(config.num_epochs >= 1, 'num_epochs', config.num_epochs, '>= 1')
  _check(config.batch_size >= 1, 'batch_size', config.batch_size, '>= 1')
  _check(config.eval_batch_size >= 1, 'eval_batch_size',
         config.eval_batch_size, '>= 1')
  _check(config.dtype in DTYPES, 'dtype', config.dtype, ' or '.join(DTYPES))
  o = config.optim
  _check(o.learning_rate > 0, 'optim.learning_rate', o.learning_rate, '> 0')
  _check(0 <= o.momentum < 1, 'optim.momentum', o.momentum, 'in [0, 1)')
  _check(o.weight_decay >= 0, 'optim.weight_decay', o.weight_decay, '>= 0')
  _check(o.warmup_epochs >= 0, 'optim.warmup_epochs', o.warmup_epochs, '>= 0')
  _check(0 <= o.label_smoothing < 1, 'optim.label_smoothing',
         o.label_smoothing, 'in [0, 1)')
  loc = config.local
  _check(loc.rule in LOCAL_RULES, 'local.rule', loc.rule,
         'one of ' + ', '.join(LOCAL_RULES))
  _check(loc.activity in local_rules.ACTIVITIES, 'local.activity',
         loc.activity, 'one of ' + ', '.join(local_rules.ACTIVITIES))
  _check(loc.learning_rate >= 0, 'local.learning_rate', loc.learning_rate,
         '>= 0')
  frac = loc.hebbian_fraction
  _check(0 < frac <= 1 and abs(1 / frac - round(1 / frac)) < 1e-6,
         'local.hebbian_fraction', frac, '1/m for an integer m >= 1 '
         '(1.0, 0.5, 0.25, ...)')
  _check(loc.hebbian_every >= 1, 'local.hebbian_every', loc.hebbian_every,
         '>= 1')
  _check(loc.weak_supervision in WEAK_SUPERVISION, 'local.weak_supervision',
         loc.weak_supervision, 'one of ' + ', '.join(WEAK_SUPERVISION))
  _check(0 <= loc.loss_ema_decay < 1, 'local.loss_ema_decay',
         loc.loss_ema_decay, 'in [0, 1)')
  _check(config.checkpoint.every_epochs >= 1, 'checkpoint.every_epochs',
         config.checkpoint.every_epochs, '>= 1')
  _check(config.checkpoint.keep >= 1, 'checkpoint.keep',
         config.checkpoint.keep, '>= 1')
  _check(config.eval_every_epochs >= 1, 'eval_every_epochs',
         config.eval_every_epochs, '>= 1 (the last epoch is always '
         'evaluated)')
  _check(config.log.check_finite_every >= 1, 'log.check_finite_every',
         config.log.check_finite_every, '>= 1')


def git_commit() -> str:
  """The commit of the code being run, or 'unknown' outside a git checkout."""
  try:
    return subprocess.run(
        ['git', 'rev-parse', 'HEAD'], cwd=os.path.dirname(__file__),
        capture_output=True, text=True, check=True, timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return 'unknown'


def evaluate(eval_step, state, dataset, batch_size: int, sharding) -> Dict:
  """Accuracy and loss over the whole evaluation split."""
  totals = None
  for batch in dataset.eval_batches(batch_size, sharding=sharding):
    m = eval_step(state.params, state.batch_stats, batch)
    totals = m if totals is None else jax.tree.map(jnp.add, totals, m)
  totals = jax.device_get(totals)
  count = max(float(totals['count']), 1.0)
  return {'eval_accuracy': float(totals['correct']) / count,
          'eval_loss': float(totals['loss_sum']) / count,
          'eval_split': getattr(dataset, 'eval_split', 'test')}


def enable_compilation_cache(path: str) -> None:
  """Points JAX's persistent compilation cache at `path` ('' = off).

  Every program a run compiles (each k's step, the eval step) is stored
  there and loaded by later runs on this machine instead of compiled again:
  the runs of a comparison or a benchmark suite compile each program once.
  """
  path = os.path.abspath(os.path.expanduser(path)) if path else ''
  if (jax.config.jax_compilation_cache_dir or '') == path:
    return
  from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=g-import-not-at-top
  compilation_cache.reset_cache()
  jax.config.update('jax_enable_compilation_cache', bool(path))
  jax.config.update('jax_compilation_cache_dir', path or None)
  # Cache every program: the small ones compile in well under the default
  # 1 s threshold on a GPU, but a comparison compiles them many times.
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)


def _non_finite_error(losses: np.ndarray, first_step: int, epoch: int,
                      params_finite: bool, checkpointer,
                      workdir: str) -> UserError:
  last = checkpointer.latest_epoch()
  kept = (f'the last good checkpoint (after epoch {last}) is kept in '
          f'{os.path.join(workdir, "checkpoints")}' if last is not None else
          'no checkpoint had been written yet')
  bad = [i for i, l in enumerate(losses) if not math.isfinite(l)]
  what = (f'training loss became {losses[bad[0]]} at step '
          f'{first_step + bad[0]}' if bad else
          f'a parameter became NaN or inf by step {first_step + len(losses)}'
          ' (the loss was still finite)')
  return UserError(
      f'{what} (epoch {epoch + 1}); training stopped and {kept}. Lower '
      'config.optim.learning_rate or config.local.learning_rate (or use '
      'float32), then run the same command again to resume.')


def _epoch_row(epoch: int, state, result: loop_lib.EpochResult,
               evaluation: Dict[str, Any], eval_time: float,
               costs: Dict[str, float], num_units: int, steps_per_epoch: int,
               batch_size: int) -> Dict[str, Any]:
  """The metrics.jsonl record of one finished epoch (`epoch` 0-based)."""
  m = result.metrics
  first_step = epoch * steps_per_epoch
  k_last = result.segments[-1][1]
  return {
      'epoch': epoch + 1,  # completed epochs, counted from 1 everywhere
      'step': first_step + steps_per_epoch,
      'transition': result.segments[0][1],
      # [global step, k] for each k the epoch used (more than one only with
      # config.selection.every_steps).
      'transitions': [[first_step + start, k]
                      for start, k in result.segments],
      'num_units': num_units,
      'train_loss': float(np.mean(m['loss'])),
      'train_accuracy': float(np.sum(m['correct']) / np.sum(m['count'])),
      **evaluation,
      'learning_rate': float(m['learning_rate'][-1]),
      'local_lr': float(np.mean(m['local_lr'])),
      'ws_factor': float(np.mean(m['ws_factor'])),
      # The last period's update statistic of its transition unit.
      'transition_update': result.last_stats['update_ratios'][k_last],
      'transition_consistency': result.last_stats['consistency'][k_last],
      **costs,
      'epoch_time_s': result.train_time_s,
      'eval_time_s': eval_time,
      'compile_time_s': result.compile_time_s,
      'images_per_s': steps_per_epoch * batch_size / result.train_time_s,
      'selection': ', '.join(result.decisions),
  }


def _print_epoch(row: Dict[str, Any], result: loop_lib.EpochResult,
                 num_epochs: int) -> None:
  ks = '->'.join(str(k) for _, k in result.segments)
  evaluation = (f'{row["eval_split"]}_acc {row["eval_accuracy"]:.4f}  '
                if 'eval_accuracy' in row else '')
  print(f'epoch {row["epoch"]}/{num_epochs}  k={ks}/{row["num_units"]}  '
        f'train_loss {row["train_loss"]:.4f}  '
        f'train_acc {row["train_accuracy"]:.4f}  {evaluation}'
        f'{row["epoch_time_s"]:.1f}s (+{row["compile_time_s"]:.1f}s compile)  '
        f'{row["images_per_s"]:.0f} img/s  ({row["selection"]})', flush=True)


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> Dict[str, Any]:
  """Trains `config` in `workdir`, resuming from its latest checkpoint.

  Returns:
    The summary also written to `workdir/summary.json`.
  """
  validate_config(config)
  enable_compilation_cache(config.compile_cache_dir)
  os.makedirs(workdir, exist_ok=True)
  dataset = data.load_dataset(config.data, seed=config.seed)
  model = models.create_model(config.model.name, dataset.num_classes,
                              cifar_stem=config.model.cifar_stem,
                              dtype=DTYPES[config.dtype])
  num_units = len(model.units)
  # Raises a UserError when the batch is larger than the training set.
  steps_per_epoch = dataset.steps_per_epoch(config.batch_size)

  devices = np.array(jax.devices())
  if config.batch_size % len(devices):
    raise UserError(f'config.batch_size={config.batch_size} must be a '
                    f'multiple of the {len(devices)} devices.')
  mesh = Mesh(devices, ('data',))
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P('data'))
  # Eval batches are sharded too: round up to a multiple of the device count
  # (the padding is masked out), so e.g. 500 works on 8 GPUs.
  eval_batch_size = -(-config.eval_batch_size // len(devices)) * len(devices)

  tx = optim.direction(config.optim)
  lr_schedule = optim.learning_rate_schedule(
      config.optim, steps_per_epoch, config.num_epochs)
  state = train_step_lib.create_train_state(
      model, tx, jax.random.key(config.seed), dataset.image_shape)
  # Every process computes the same state from the seed. With one process
  # this is device_put; with several, device_put would all-gather each leaf
  # to check that the processes agree (costly for big models, and the NaN
  # loss EMA never compares equal).
  state = data.pipeline.replicate(state, replicated)
  selector = selection.Selector(config.selection, num_units, config.num_epochs)
  checkpointer = checkpointing.Checkpointer(
      workdir, config.checkpoint.every_epochs, config.checkpoint.keep)
  # Only process 0 writes the run's files; every process takes part in the
  # Orbax saves, which Orbax coordinates.
  primary = jax.process_index() == 0
  writer = metrics_lib.MetricsWriter(workdir,
                                     config.log.tensorboard and primary)

  start_epoch, elapsed, total_compile = 0, 0.0, 0.0
  restored = checkpointer.restore_latest(state)
  if restored is not None:
    start_epoch, state, host = restored
    selector.load_state_dict(host['selector'])
    elapsed, total_compile = host['elapsed_s'], host['compile_time_s']
    print(f'Resuming from the checkpoint after epoch {start_epoch} in '
          f'{workdir}', flush=True)
  rows = (writer.truncate(start_epoch) if primary else
          [r for r in writer.read() if r['epoch'] <= start_epoch])
  if primary:
    metrics_lib.write_json(os.path.join(workdir, 'config.json'),
                           json.loads(config.to_json_best_effort()))
  commit = git_commit()
  if primary:
    with open(os.path.join(workdir, 'git_commit.txt'), 'w') as f:
      f.write(commit + '\n')

  loop = loop_lib.TrainLoop(
      train_step_lib.make_train_step(model, tx, lr_schedule, config),
      train_step_lib.make_local_forward(model, config.local), dataset,
      config, num_units, mesh)
  eval_step = jax.jit(train_step_lib.make_eval_step(model))

  try:
    for epoch in range(start_epoch, config.num_epochs):
      t0 = time.perf_counter()
      progress = metrics_lib.Progress(epoch, config.num_epochs,
                                      steps_per_epoch, config.log.progress)
      state, result = loop.run_epoch(
          state, epoch, selector, progress,
          lambda losses, first, finite, e=epoch: _non_finite_error(
              losses, first, e, finite, checkpointer, workdir))
      evaluation, eval_time = {}, 0.0
      if ((epoch + 1) % config.eval_every_epochs == 0
          or epoch + 1 == config.num_epochs):
        t_eval = time.perf_counter()
        evaluation = evaluate(eval_step, state, dataset, eval_batch_size,
                              batch_sharding)
        eval_time = time.perf_counter() - t_eval
      row = _epoch_row(epoch, state, result, evaluation, eval_time,
                       loop.weighted_costs(result, state), num_units,
                       steps_per_epoch, config.batch_size)
      if primary:
        writer.write(row)
      rows.append(row)
      elapsed += time.perf_counter() - t0
      total_compile += result.compile_time_s
      _print_epoch(row, result, config.num_epochs)
      checkpointer.maybe_save(
          epoch + 1, state,
          {'selector': selector.state_dict(), 'elapsed_s': elapsed,
           'compile_time_s': total_compile},
          force=epoch + 1 == config.num_epochs)
  finally:
    checkpointer.close()
    writer.close()

  accs = [r['eval_accuracy'] for r in rows if 'eval_accuracy' in r]
  summary = {
      'final_eval_accuracy': accs[-1] if accs else None,
      'best_eval_accuracy': max(accs) if accs else None,
      'eval_split': getattr(dataset, 'eval_split', 'test'),
      'total_time_s': elapsed,
      'compile_time_s': total_compile,
      'num_epochs': config.num_epochs,
      'num_units': num_units,
      'num_devices': len(devices),
      'git_commit': commit,
      'config': json.loads(config.to_json_best_effort()),
  }
  if primary:
    metrics_lib.write_json(os.path.join(workdir, 'summary.json'), summary)
  return summary
