"""A training run: data, model, the epochs, evaluation, checkpoints, metrics.

`train_and_evaluate(config, workdir)` is the one entry point used by
`train.py`, the comparison harness, the notebooks and the tests. The steps
of an epoch run in `loop.TrainLoop`.
"""
import json
import math
import os
import subprocess
import sys
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
from localsgd_jax import workdir as workdir_lib
from localsgd_jax.errors import UserError

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
LOCAL_RULES = local_rules.RULES + ('frozen',)
WEAK_SUPERVISION = ('none', 'scale', 'sign')


def _check(ok: bool, field: str, value: Any, expected: str) -> None:
  if not ok:
    raise UserError(f'config.{field}={value!r} is out of range: expected '
                    f'{expected}. Fix it in the config file or with '
                    f'--config.{field}=...')


def _validate_more(config: ml_collections.ConfigDict) -> None:
  """The seed, optimizer, selection and workdir fields (validate_config).

  All before the first step: e.g. an unknown selection.ramp would otherwise
  surface only when the SGD warm-up epochs are over.
  """
  _check(config.seed >= 0, 'seed', config.seed, 'an integer >= 0')
  o = config.optim
  _check(o.name in optim.OPTIMIZERS, 'optim.name', o.name,
         'one of ' + ', '.join(optim.OPTIMIZERS))
  _check(o.schedule in optim.SCHEDULES, 'optim.schedule', o.schedule,
         'one of ' + ', '.join(optim.SCHEDULES))
  _check(all(0 <= b <= 1 for b in o.step_boundaries),
         'optim.step_boundaries', o.step_boundaries,
         'fractions of training in [0, 1]')
  _check(o.step_decay > 0, 'optim.step_decay', o.step_decay, '> 0')
  _check(0 <= o.b1 < 1 and 0 <= o.b2 < 1, 'optim.b1/b2', (o.b1, o.b2),
         'in [0, 1)')
  _check(config.local.ws_power >= 0, 'local.ws_power',
         config.local.ws_power, '>= 0')
  s = config.selection
  _check(s.mode in selection.MODES, 'selection.mode', s.mode,
         'one of ' + ', '.join(selection.MODES))
  _check(s.ramp in selection.RAMPS, 'selection.ramp', s.ramp,
         'one of ' + ', '.join(selection.RAMPS))
  _check(s.k_max >= -1, 'selection.k_max', s.k_max,
         '>= 0, or -1 for all units but the head')
  _check(s.warmup_epochs >= 0, 'selection.warmup_epochs', s.warmup_epochs,
         '>= 0')
  _check(s.ramp_epochs == -1 or s.ramp_epochs >= 1, 'selection.ramp_epochs',
         s.ramp_epochs, '>= 1, or -1 for until the last epoch')
  for epoch, k in selection.parse_table(s.table):
    _check(epoch >= 0 and k >= 0, 'selection.table', s.table,
           '"epoch:k" pairs with epoch >= 0 and k >= 0')
  _check(0 < s.settle_fraction <= 1, 'selection.settle_fraction',
         s.settle_fraction, 'in (0, 1]')
  _check(s.gradnorm_threshold >= 0, 'selection.gradnorm_threshold',
         s.gradnorm_threshold, '>= 0')
  _check(s.max_advance >= 1, 'selection.max_advance', s.max_advance, '>= 1')
  _check(s.min_hold_epochs >= 0, 'selection.min_hold_epochs',
         s.min_hold_epochs, '>= 0')
  _check(s.every_steps >= 0, 'selection.every_steps', s.every_steps,
         '>= 0 (0: decide between epochs only)')
  _check(s.retreat_tolerance >= 0, 'selection.retreat_tolerance',
         s.retreat_tolerance, '>= 0')
  workdir_lib.validate(config)  # init_from, resume_allow


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
  _validate_more(config)
  _check(config.checkpoint.every_epochs >= 1, 'checkpoint.every_epochs',
         config.checkpoint.every_epochs, '>= 1')
  _check(config.checkpoint.keep >= 1, 'checkpoint.keep',
         config.checkpoint.keep, '>= 1')
  _check(config.eval_every_epochs >= 1, 'eval_every_epochs',
         config.eval_every_epochs, '>= 1 (the last epoch is always '
         'evaluated)')
  _check(config.log.check_finite_every >= 1, 'log.check_finite_every',
         config.log.check_finite_every, '>= 1')
  _check(config.log.get('loss_every_steps', 10) >= 1,
         'log.loss_every_steps', config.log.get('loss_every_steps'), '>= 1')


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
      'float32) and start over in a new --workdir, or resume this run with '
      'the change: add --config.resume_allow=<the field you changed>.')


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
        f'{row["images_per_s"]:.0f} img/s  next k: {row["selection"]}',
        flush=True)


def _say(message: str) -> None:
  """A start-up or summary line, from process 0 only."""
  if jax.process_index() == 0:
    print(message, flush=True)


def _data_source(data_cfg: ml_collections.ConfigDict) -> str:
  name, folder = data_cfg.name, data_cfg.get('dir', '')
  if name == 'digits':
    return "digits (scikit-learn's bundled copy)"
  if folder:
    return f'{name} from {folder}'
  if name in ('cifar10', 'cifar100', 'imagenet2012'):
    return f'{name} through tensorflow-datasets'
  return name


def _describe_data(dataset, seconds: float) -> str:
  shape = 'x'.join(str(s) for s in dataset.image_shape)
  eval_split = getattr(dataset, 'eval_split', 'test')
  return (f'Data: {dataset.num_train} training images, {dataset.num_test} '
          f'{eval_split} images ({shape}, {dataset.num_classes} classes) in '
          f'{seconds:.1f}s')


def _ranges(ks) -> str:
  """[0, 0, 2, 2, 2] -> 'k=0 in epochs 1-2, k=2 in epochs 3-5'."""
  parts, start = [], 0
  for e in range(1, len(ks) + 1):
    if e == len(ks) or ks[e] != ks[start]:
      epochs = (f'epoch {start + 1}' if e == start + 1 else
                f'epochs {start + 1}-{e}')
      parts.append(f'k={ks[start]} in {epochs}')
      start = e
  return ', '.join(parts)


def describe_selection(config: ml_collections.ConfigDict,
                       selector: selection.Selector) -> str:
  """What k will do, in one line: 'k' units [0, k) learn locally."""
  sel = config.selection
  if sel.mode == 'sgd':
    return 'Selection: sgd: k=0 (plain SGD) in every epoch'
  if selector.adaptive:
    when = (f'every {selector.every_steps} steps' if selector.every_steps
            else 'after each epoch')
    return (f'Selection: {sel.mode}: k starts at 0 and is decided {when} '
            f'from the training statistics (at most {selector.k_max}; SGD '
            f'warm-up {sel.warmup_epochs} epochs)')
  ks = [selector.transition(e) for e in range(config.num_epochs)]
  return (f'Selection: {sel.mode}: {_ranges(ks)} (units 0..k-1 learn '
          f'locally)')


def _announce_run(config: ml_collections.ConfigDict, model, state,
                  selector: selection.Selector, steps_per_epoch: int,
                  num_devices: int, start_epoch: int) -> None:
  """The model and schedule lines; the finished-run and local-from-init
  notes."""
  params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
  platform = jax.devices()[0].platform
  _say(f'Model: {config.model.name}, {len(model.units)} units, '
       f'{params / 1e6:.2f}M parameters; batch {config.batch_size} on '
       f'{num_devices} {platform} device{"s" if num_devices > 1 else ""}, '
       f'{steps_per_epoch} steps per epoch')
  _say(describe_selection(config, selector))
  if start_epoch >= config.num_epochs:
    _say(f'Nothing to train: all {config.num_epochs} epochs are done; a new '
         '--workdir starts a new run.')
  elif start_epoch == 0:
    reason = selector.local_from_init()
    if reason and jax.process_index() == 0:
      print(f'warning: local learning from random initialization: {reason}; '
            'the shipped configs train by SGD first (an SGD warm-up: '
            '--config.selection.warmup_epochs=1, or a table starting 0:0).',
            file=sys.stderr, flush=True)


def print_summary(summary: Dict[str, Any], rows, workdir: str,
                  tensorboard: bool) -> None:
  """The end of a run: accuracy on the named split, time, the files."""
  split = summary['eval_split']
  evaluated = [r for r in rows if 'eval_accuracy' in r]
  lines = [f'Done: {summary["num_epochs"]} epochs, '
           f'{summary["total_time_s"]:.1f}s of training and evaluation '
           f'({summary["compile_time_s"]:.1f}s of it compiling)']
  if evaluated:
    best = max(evaluated, key=lambda r: r['eval_accuracy'])
    lines.append(f'  {split} accuracy: final '
                 f'{summary["final_eval_accuracy"]:.4f}, best '
                 f'{best["eval_accuracy"]:.4f} (after epoch {best["epoch"]})')
  files = [name + ('/' if os.path.isdir(os.path.join(workdir, name)) else '')
           for name in sorted(os.listdir(workdir))
           if not name.endswith(('.tmp', '.lock'))]
  lines.append(f'  files in {workdir}: {", ".join(files)}')
  if tensorboard:
    lines.append(f'  TensorBoard: tensorboard --logdir {workdir}')
  for line in lines:
    _say(line)


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> Dict[str, Any]:
  """Trains `config` in `workdir`, resuming from its latest checkpoint.

  The workdir holds one run (`workdir.py`): it is locked while training, a
  config that would change its result is refused (`config.resume_allow`
  lets named changes through, recorded), and `config.init_from` forks a
  new workdir from another run's checkpoint.

  Returns:
    The summary also written to `workdir/summary.json`.
  """
  validate_config(config)
  workdir_lib.check_path(workdir)  # one-line errors; creates nothing yet
  enable_compilation_cache(config.compile_cache_dir)
  _say(f'Loading data: {_data_source(config.data)} ...')
  t_data = time.perf_counter()
  dataset = data.load_dataset(config.data, seed=config.seed)
  _say(_describe_data(dataset, time.perf_counter() - t_data))
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
  batch_sharding = NamedSharding(mesh, P('data'))
  # Eval batches are sharded too: round up to a multiple of the device count
  # (the padding is masked out), so e.g. 500 works on 8 GPUs.
  eval_batch_size = -(-config.eval_batch_size // len(devices)) * len(devices)

  loop = loop_lib.TrainLoop(model, dataset, config, mesh)
  state = loop.init_state(config.seed)
  selector = selection.Selector(config.selection, num_units, config.num_epochs)
  # Only process 0 writes the run's files; every process takes part in the
  # Orbax saves, which Orbax coordinates.
  primary = jax.process_index() == 0
  # The config and the data are checked: only now is the workdir created,
  # locked, and compared with the run it may hold (workdir.py).
  run = workdir_lib.open_run(
      workdir, config, fingerprint=workdir_lib.data_fingerprint(dataset),
      steps_per_epoch=steps_per_epoch, primary=primary)
  try:
    return _train(config, workdir, run, dataset=dataset, model=model,
                  loop=loop, state=state, selector=selector,
                  num_units=num_units, steps_per_epoch=steps_per_epoch,
                  mesh=mesh, batch_sharding=batch_sharding,
                  eval_batch_size=eval_batch_size, devices=devices,
                  primary=primary)
  finally:
    run.close()  # the workdir's lock


def _train(config: ml_collections.ConfigDict, workdir: str,
           run: workdir_lib.Run, *, dataset, model,
           loop: loop_lib.TrainLoop, state,
           selector: selection.Selector, num_units: int,
           steps_per_epoch: int, mesh: Mesh, batch_sharding: NamedSharding,
           eval_batch_size: int, devices: np.ndarray,
           primary: bool) -> Dict[str, Any]:
  """The epochs of `train_and_evaluate`, in the workdir `run` locked."""
  checkpointer = checkpointing.Checkpointer(
      workdir, config.checkpoint.every_epochs, config.checkpoint.keep,
      primary=primary)
  writer = metrics_lib.MetricsWriter(workdir,
                                     config.log.tensorboard and primary)

  start_epoch, elapsed, total_compile = 0, 0.0, 0.0
  # The workdir's own latest good checkpoint; else, for a fork
  # (config.init_from), the parent's checkpoint and its metrics rows.
  restored, parent_rows = checkpointer.restore_latest(state), None
  if restored is None and run.forks:
    restored, parent_rows = run.restore_fork(state)
  if restored is not None:
    start_epoch, state, host = restored
    selector.load_state_dict(host['selector'])
    elapsed, total_compile = host['elapsed_s'], host['compile_time_s']
    if parent_rows is None:
      print(f'Resuming from the checkpoint after epoch {start_epoch} in '
            f'{workdir}', flush=True)
  run.started(start_epoch)  # config.json and run.json
  _announce_run(config, model, state, selector, steps_per_epoch,
                len(devices), start_epoch)
  rows = (writer.truncate(start_epoch, parent_rows) if primary else
          [r for r in (writer.read() if parent_rows is None else parent_rows)
           if r['epoch'] <= start_epoch])
  if primary:
    writer.write_config(config.to_json_best_effort(indent=2),
                        start_epoch * steps_per_epoch)
  commit = git_commit()
  if primary:
    with open(os.path.join(workdir, 'git_commit.txt'), 'w') as f:
      f.write(commit + '\n')

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
        writer.write_losses(epoch * steps_per_epoch, result.metrics['loss'],
                            config.log.get('loss_every_steps', 10))
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

  # By epoch: the final result is the last epoch's, whatever the file order.
  accs = [r['eval_accuracy'] for r in sorted(rows, key=lambda r: r['epoch'])
          if 'eval_accuracy' in r]
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
      **run.summary_fields(),  # the fork and the changes allowed on resume
  }
  if primary:
    metrics_lib.write_json(os.path.join(workdir, 'summary.json'), summary)
  print_summary(summary, rows, workdir, config.log.tensorboard)
  return summary
