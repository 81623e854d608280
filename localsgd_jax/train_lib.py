"""The epoch loop: data, model, LoCal+SGD step, selection, checkpoints, metrics.

`train_and_evaluate(config, workdir)` is the one entry point used by
`train.py`, the comparison harness, the notebooks and the tests.
"""
import json
import math
import os
import subprocess
import time
from typing import Any, Dict, List

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from localsgd_jax import checkpointing
from localsgd_jax import data
from localsgd_jax import local_rules
from localsgd_jax import metrics as metrics_lib
from localsgd_jax import models
from localsgd_jax import optim
from localsgd_jax import partition
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
  """Test accuracy and loss over the whole test set."""
  totals = None
  for batch in dataset.eval_batches(batch_size, sharding=sharding):
    m = eval_step(state.params, state.batch_stats, batch)
    totals = m if totals is None else jax.tree.map(jnp.add, totals, m)
  totals = jax.device_get(totals)
  count = max(float(totals['count']), 1.0)
  return {'test_accuracy': float(totals['correct']) / count,
          'test_loss': float(totals['loss_sum']) / count}


@jax.jit
def _relative_change(new_params, old_params):
  """Per unit: ||W_new - W_old|| / ||W_old|| over all its parameters."""
  return {n: optax.tree.norm(jax.tree.map(jnp.subtract, new_params[n],
                                            old_params[n]))
             / jnp.maximum(optax.tree.norm(old_params[n]), 1e-12)
          for n in old_params}


def _period_stats(period_m: List[Dict[str, Any]], params, params_start,
                  k: int, steps_per_epoch: int) -> Dict[str, Any]:
  """What the selector sees of one period (host metrics of its steps).

  Per unit, None for local ones: the update statistic (relative weight change
  over the period per unit of mean learning rate, scaled to a whole epoch's
  steps so that periods of any length compare) and the mean gradient norm.
  """
  mean_lr = float(np.mean([m['learning_rate'] for m in period_m]))
  scale = steps_per_epoch / len(period_m) / max(mean_lr, 1e-12)
  change = jax.device_get(_relative_change(params, params_start))
  grad_norms = np.mean([m['grad_norms'] for m in period_m], axis=0)
  return {
      'transition': k,
      'train_loss': float(np.mean([m['loss'] for m in period_m])),
      'update_ratios': [
          float(change[models.base.unit_name(u)]) * scale if u >= k else None
          for u in range(len(grad_norms))],
      'grad_norms': [float(g) if u >= k else None
                     for u, g in enumerate(grad_norms)],
  }


class _StepCosts:
  """XLA's counts for the step of each k, computed once per k."""

  def __init__(self, steps, local_forward):
    self._steps = steps
    self._local = jax.jit(local_forward, static_argnums=3)
    self._cache: Dict[int, Dict[str, float]] = {}
    self.compile_time_s = 0.0  # compiling the local forward pass alone

  def get(self, k: int, state, batch) -> Dict[str, float]:
    if k not in self._cache:
      step = train_step_lib.xla_costs(self._steps.get(k, state, batch))
      local = 0.0
      if k > 0:
        t0 = time.perf_counter()
        local_p = partition.split(state.params, k)[0]
        local_bs = partition.split(state.batch_stats, k)[0]
        local = train_step_lib.xla_costs(self._local.lower(
            local_p, local_bs, batch['image'], k).compile())['flops']
        self.compile_time_s += time.perf_counter() - t0
      self._cache[k] = {'step_flops': step['flops'],
                        'step_temp_bytes': step['temp_bytes'],
                        'local_flop_fraction': local / max(step['flops'], 1)}
    return self._cache[k]


def _non_finite_error(losses: List[float], first_step: int, epoch: int,
                      checkpointer, workdir: str) -> UserError:
  bad = next(i for i, l in enumerate(losses) if not math.isfinite(l))
  last = checkpointer.latest_epoch()
  kept = (f'the last good checkpoint (after epoch {last}) is kept in '
          f'{os.path.join(workdir, "checkpoints")}' if last is not None else
          'no checkpoint had been written yet')
  return UserError(
      f'training loss became {losses[bad]} at step {first_step + bad} '
      f'(epoch {epoch + 1}); training stopped and {kept}. Lower '
      'config.optim.learning_rate or config.local.learning_rate (or use '
      'float32), then run the same command again to resume.')


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> Dict[str, Any]:
  """Trains `config` in `workdir`, resuming from its latest checkpoint.

  Returns:
    The summary also written to `workdir/summary.json`.
  """
  validate_config(config)
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
  state = jax.tree.map(lambda x: jax.make_array_from_process_local_data(
      replicated, x, x.shape), state)
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
          [r for r in writer.read() if r['epoch'] < start_epoch])
  if primary:
    metrics_lib.write_json(os.path.join(workdir, 'config.json'),
                           json.loads(config.to_json_best_effort()))
  commit = git_commit()
  if primary:
    with open(os.path.join(workdir, 'git_commit.txt'), 'w') as f:
      f.write(commit + '\n')

  steps = train_step_lib.StepCache(
      train_step_lib.make_train_step(model, tx, lr_schedule, config))
  eval_step = jax.jit(train_step_lib.make_eval_step(model))
  costs = _StepCosts(steps, train_step_lib.make_local_forward(
      model, config.local))

  try:
    for epoch in range(start_epoch, config.num_epochs):
      k = selector.transition(epoch)
      compile_before = (sum(steps.compile_time_s.values())
                        + costs.compile_time_s)
      t0 = time.perf_counter()
      progress = metrics_lib.Progress(epoch, config.num_epochs,
                                      steps_per_epoch, config.log.progress)
      step_metrics, losses, decisions = [], [], []
      segments = []  # (first step in the epoch, k, XLA costs of k's step)
      first_step = epoch * steps_per_epoch
      # A selection period is the epoch, or `every_steps` steps of it. The
      # step donates its input state: keep a copy to measure updates.
      period_start, period_params = 0, jax.tree.map(jnp.copy, state.params)
      for i, batch in enumerate(dataset.train_batches(
          epoch, config.batch_size, sharding=batch_sharding)):
        if not segments or segments[-1][1] != k:
          segments.append((i, k, costs.get(k, state, batch)))
        state, m = steps(state, batch, k,
                         i % config.local.hebbian_every == 0)
        step_metrics.append(m)
        if (i + 1) % config.log.check_finite_every == 0 \
            or i + 1 == steps_per_epoch:
          # One device-to-host fetch per check, of the losses since the last.
          losses += [float(x) for x in jax.device_get(
              [x['loss'] for x in step_metrics[len(losses):]])]
          if not all(math.isfinite(l) for l in losses):
            raise _non_finite_error(losses, first_step, epoch,
                                    checkpointer, workdir)
          progress.update(i, losses[-1])
        else:
          progress.update(i)
        last = i + 1 == steps_per_epoch
        if last or (selector.every_steps
                    and (i + 1) % selector.every_steps == 0):
          stats = _period_stats(jax.device_get(step_metrics[period_start:]),
                                state.params, period_params, k,
                                steps_per_epoch)
          decisions.append(selector.observe(
              epoch + (i + 1) / steps_per_epoch, stats))
          if not last:
            k = selector.transition(epoch)
            period_start = i + 1
            period_params = jax.tree.map(jnp.copy, state.params)
      progress.close()
      host_m = jax.device_get(step_metrics)
      epoch_compile = (sum(steps.compile_time_s.values())
                       + costs.compile_time_s - compile_before)
      train_time = time.perf_counter() - t0 - epoch_compile
      t_eval = time.perf_counter()
      test = evaluate(eval_step, state, dataset, eval_batch_size,
                      batch_sharding)
      eval_time = time.perf_counter() - t_eval
      count = sum(float(m['count']) for m in host_m)
      # XLA's counts of the steps this epoch ran, weighted by their number.
      ends = [start for start, _, _ in segments[1:]] + [steps_per_epoch]
      step_costs = {
          key: sum(c[key] * (end - start) for (start, _, c), end
                   in zip(segments, ends)) / steps_per_epoch
          for key in segments[0][2]}
      row = {
          'epoch': epoch,
          'step': int(state.step),
          'transition': segments[0][1],
          # [global step, k] for each k the epoch used (more than one only
          # with config.selection.every_steps).
          'transitions': [[first_step + start, kk]
                          for start, kk, _ in segments],
          'num_units': num_units,
          'train_loss': float(np.mean([m['loss'] for m in host_m])),
          'train_accuracy': sum(float(m['correct']) for m in host_m) / count,
          **test,
          'learning_rate': float(host_m[-1]['learning_rate']),
          'local_lr': float(np.mean([m['local_lr'] for m in host_m])),
          'ws_factor': float(np.mean([m['ws_factor'] for m in host_m])),
          # The last period's update statistic of its transition unit.
          'transition_update': stats['update_ratios'][k],
          **step_costs,
          'epoch_time_s': train_time,
          'eval_time_s': eval_time,
          'compile_time_s': epoch_compile,
          'images_per_s': steps_per_epoch * config.batch_size / train_time,
          'selection': ', '.join(decisions),
      }
      if primary:
        writer.write(row)
      rows.append(row)
      elapsed += time.perf_counter() - t0
      total_compile += epoch_compile
      ks = '->'.join(str(kk) for _, kk, _ in segments)
      print(f'epoch {epoch + 1}/{config.num_epochs}  k={ks}/{num_units}  '
            f'train_loss {row["train_loss"]:.4f}  '
            f'train_acc {row["train_accuracy"]:.4f}  '
            f'test_acc {row["test_accuracy"]:.4f}  '
            f'{row["epoch_time_s"]:.1f}s (+{epoch_compile:.1f}s compile)  '
            f'{row["images_per_s"]:.0f} img/s  ({row["selection"]})',
            flush=True)
      checkpointer.maybe_save(
          epoch + 1, state,
          {'selector': selector.state_dict(), 'elapsed_s': elapsed,
           'compile_time_s': total_compile},
          force=epoch + 1 == config.num_epochs)
  finally:
    checkpointer.close()
    writer.close()

  accs = [r['test_accuracy'] for r in rows]
  summary = {
      'final_test_accuracy': accs[-1] if accs else None,
      'best_test_accuracy': max(accs) if accs else None,
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
