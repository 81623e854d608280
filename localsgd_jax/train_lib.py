"""A training run: data, model, the epochs, evaluation, checkpoints, metrics.

`train_and_evaluate(config, workdir)` is the one entry point used by
`train.py`, the comparison harness, the notebooks and the tests. The steps
of an epoch run in `loop.TrainLoop`.
"""
import dataclasses
import functools
import json
import math
import os
import subprocess
import time
from typing import Any, Dict, List, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding

from localsgd_jax import checkpointing
from localsgd_jax import data
from localsgd_jax import distributed
from localsgd_jax import errors
from localsgd_jax import flops as flops_lib
from localsgd_jax import loop as loop_lib
from localsgd_jax import metrics as metrics_lib
from localsgd_jax import models
from localsgd_jax import run_console as console
from localsgd_jax import selection
from localsgd_jax import step_cache
from localsgd_jax import train_step as train_step_lib
from localsgd_jax import workdir as workdir_lib
from localsgd_jax import workdir_lock
from localsgd_jax.config_validation import validate_config
from localsgd_jax.config_validation import validate_eval_tta
from localsgd_jax.errors import UserError


def _checkout_commit() -> str:
  """The checkout's HEAD, '-dirty' if tracked files differ from it;
  'unknown' outside a git checkout."""
  def git(*args):
    return subprocess.run(
        ['git', *args], cwd=os.path.dirname(__file__), capture_output=True,
        text=True, check=True, timeout=10).stdout.strip()
  try:
    head = git('rev-parse', 'HEAD')
    return head + ('-dirty' if git('status', '--porcelain',
                                   '--untracked-files=no') else '')
  except (OSError, subprocess.SubprocessError):
    return 'unknown'


# Read when this module is imported: the code a process runs is the code
# it imported, whatever the checkout's HEAD becomes while it runs.
_COMMIT = _checkout_commit()


def git_commit() -> str:
  """The commit of the code being run (as imported; '-dirty' with
  uncommitted changes), or 'unknown' outside a git checkout."""
  return _COMMIT


def evaluate(eval_step, state, dataset, batch_size: int, sharding) -> Dict:
  """Accuracy and loss over the whole evaluation split.

  With an eval step built for test-time augmentation
  (`train_step.make_eval_step(model, tta)`) also `eval_accuracy_tta` and
  `eval_loss_tta`, from the same pass. With a weight moving average
  (config.optim.ema_decay) the averaged weights are the ones evaluated.
  """
  totals = None
  params, batch_stats = state.eval_variables()
  for batch in dataset.eval_batches(batch_size, sharding=sharding):
    m = eval_step(params, batch_stats, batch)
    totals = m if totals is None else jax.tree.map(jnp.add, totals, m)
  totals = jax.device_get(totals)
  count = max(float(totals['count']), 1.0)
  out = {'eval_accuracy': float(totals['correct']) / count,
         'eval_loss': float(totals['loss_sum']) / count,
         'eval_split': dataset.eval_split}
  if 'tta_correct' in totals:
    out['eval_accuracy_tta'] = float(totals['tta_correct']) / count
    out['eval_loss_tta'] = float(totals['tta_loss_sum']) / count
  return out


@dataclasses.dataclass
class _Clock:
  """A run's time so far, kept in its checkpoints (the `host` item).

  The compile cache counts are the programs compiled through JAX's
  persistent compilation cache and those loaded from it, so a run's compile
  time says whether it was a cold compile or a cache load.
  """
  elapsed_s: float = 0.0
  compile_time_s: float = 0.0
  compile_cache_requests: int = 0
  compile_cache_hits: int = 0

  @classmethod
  def restore(cls, host: Dict[str, Any]) -> '_Clock':
    # The cache counts are absent in checkpoints of older versions: they
    # are counted from here.
    return cls(**{f.name: host.get(f.name, f.default)
                  for f in dataclasses.fields(cls)})


@dataclasses.dataclass
class Parts:
  """What a run trains with (`build`), made before its workdir is opened.

  Tests and benchmarks that drive the loop themselves build it here too:
  `parts.loop.run_epoch(parts.state, epoch, parts.selector, ...)`.
  """
  dataset: Any
  model: Any
  loop: loop_lib.TrainLoop  # owns the mesh's shardings, steps per epoch
  state: Any
  selector: selection.Selector
  num_devices: int
  eval_batch_size: int
  # Only process 0 writes the run's files; every process takes part in the
  # Orbax saves, which Orbax coordinates.
  primary: bool

  @property
  def steps_per_epoch(self) -> int:
    return self.loop.steps_per_epoch

  @property
  def batch_sharding(self) -> NamedSharding:
    return self.loop.batch_sharding


def build(config: ml_collections.ConfigDict,
          devices: Optional[Sequence[Any]] = None) -> Parts:
  """The data, the model, the device mesh (of `devices`, default all), the
  loop, the selector and the initial state of `config`.

  Raises:
    UserError: a bad config value, data that cannot be loaded, or a batch
      that does not fit the data or the devices.
  """
  validate_config(config)
  console.say(f'Loading data: {console.data_source(config.data)} ...')
  t_data = time.perf_counter()
  dataset = data.load_dataset(config.data, seed=config.seed)
  console.say(console.describe_data(dataset, time.perf_counter() - t_data))
  validate_eval_tta(config.eval_tta, dataset)
  model = models.create_model(config.model.name, dataset.num_classes,
                              cifar_stem=config.model.cifar_stem,
                              dtype=models.DTYPES[config.dtype])
  devices = np.array(jax.devices() if devices is None else devices)
  if config.batch_size % len(devices):
    raise UserError(f'config.batch_size={config.batch_size} must be a '
                    f'multiple of the {len(devices)} devices.')
  # Raises a UserError when the batch is larger than the training set.
  loop = loop_lib.TrainLoop(model, dataset, config, Mesh(devices, ('data',)))
  by_share = config.selection.k_max_flop_share > 0
  return Parts(
      dataset=dataset, model=model, loop=loop,
      state=loop.init_state(config.seed),
      selector=selection.Selector(
          config.selection, model.num_units, config.num_epochs,
          unit_flops=flops_lib.unit_flops(model, dataset.image_shape)
          if by_share else None),
      num_devices=len(devices),
      # Eval batches are sharded too: round up to a multiple of the device
      # count (the padding is masked out), so e.g. 500 works on 8 GPUs.
      eval_batch_size=-(-config.eval_batch_size // len(devices))
      * len(devices),
      primary=distributed.is_primary())


def _check_whole_epochs(config, state, epoch: int, steps_per_epoch: int,
                        fork: bool) -> None:
  """Refuses to go on from a checkpoint taken after a partial last epoch
  (config.last_epoch_fraction < 1) unless the run it ends is this one:
  the next epoch would start mid-way, with the wrong batches."""
  step = int(jax.device_get(state.step))
  if step == epoch * steps_per_epoch or (
      epoch == config.num_epochs
      and step == loop_lib.num_train_steps(config, steps_per_epoch)):
    return
  what = ('config.init_from names' if fork else 'this workdir holds')
  raise UserError(
      f'{what} a checkpoint after a partial epoch {epoch} (step {step}, not '
      f'{epoch * steps_per_epoch}): a run cannot go on from it. Fork from '
      f'an earlier, whole epoch instead (config.init_from=WORKDIR:'
      f'{epoch - 1}), in a new --workdir.')


class _Start(NamedTuple):
  """Where a run starts: after `epoch` epochs, from `state`."""
  epoch: int
  state: Any
  clock: _Clock
  # A fork's parent's metrics rows up to `epoch` (None: not a fork).
  parent_rows: Optional[List[Dict[str, Any]]]


def _restore(config: ml_collections.ConfigDict, workdir: str,
             run: workdir_lib.Run, parts: Parts,
             checkpointer: checkpointing.Checkpointer) -> _Start:
  """The workdir's own latest good checkpoint; else, for a fork
  (config.init_from), the parent's; else epoch 0. Loads the selector's and
  the local phase's state from it."""
  restored, parent_rows = checkpointer.restore_latest(parts.state), None
  if restored is None and run.forks:
    restored, parent_rows = run.restore_fork(parts.state)
  if restored is None:
    return _Start(0, parts.state, _Clock(), None)
  epoch, state, host = restored
  _check_whole_epochs(config, state, epoch, parts.steps_per_epoch,
                      parent_rows is not None)
  parts.selector.load_state_dict(host['selector'])
  parts.loop.local_phase.load(host.get('local_start'))
  if parent_rows is None:
    print(f'Resuming from the checkpoint after epoch {epoch} in {workdir}',
          flush=True)
  return _Start(epoch, state, _Clock.restore(host), parent_rows)


def _history(config: ml_collections.ConfigDict, workdir: str,
             run: workdir_lib.Run, writer: metrics_lib.MetricsWriter,
             parts: Parts, start: _Start) -> List[Dict[str, Any]]:
  """The metrics rows of the epochs before `start` (metrics.jsonl cut back
  to them, or a fork's parent's), warning about epochs without a row; the
  config goes to TensorBoard."""
  parent_rows, primary = start.parent_rows, parts.primary
  rows = (writer.truncate(start.epoch, parent_rows) if primary else
          [r for r in (writer.read() if parent_rows is None else parent_rows)
           if r['epoch'] <= start.epoch])
  missing = metrics_lib.missing_epochs(rows, start.epoch)
  if missing and primary:
    source = (run.fork['parent'] if parent_rows is not None else workdir)
    errors.warn(
        f'{os.path.join(source, "metrics.jsonl")} lacks the rows of '
        f'{len(missing)} of the {start.epoch} epochs the checkpoint holds '
        f'(epochs {metrics_lib.spans(missing)}: deleted, or not copied with '
        'the checkpoints): the run goes on, but summary.json counts only the '
        'epochs on record (its history_missing_epochs lists the others); '
        'restore that file before resuming to keep the whole history.')
  if primary:
    writer.write_config(config.to_json_best_effort(indent=2),
                        start.epoch * parts.steps_per_epoch)
  return rows


def _kept(workdir: str, how_on: bool = False) -> str:
  """What a run that stops leaves to go on from (saves are synchronous),
  and with `how_on` how the same command goes on."""
  directory = os.path.join(workdir, 'checkpoints')
  epochs = checkpointing.step_folders(directory)
  if not epochs:
    return 'no checkpoint had been written yet' + (
        ': the same command starts the run again' if how_on else '')
  return (f'the checkpoint after epoch {epochs[-1]} is kept in {directory}'
          + (': the same command resumes from it' if how_on else ''))


def _non_finite_error(losses: np.ndarray, first_step: int,
                      params_finite: bool, *, epoch: int,
                      workdir: str) -> UserError:
  """The error `TrainLoop.run_epoch` raises for a loss or parameter that is
  no longer finite."""
  bad = [i for i, l in enumerate(losses) if not math.isfinite(l)]
  what = (f'training loss became {losses[bad[0]]} at step '
          f'{first_step + bad[0]}' if bad else
          f'a parameter became NaN or inf by step {first_step + len(losses)}'
          ' (the loss was still finite)')
  return UserError(
      f'{what} (epoch {epoch + 1}); training stopped and {_kept(workdir)}. '
      'Lower '
      'config.optim.learning_rate or config.local.learning_rate (or use '
      'float32) and start over in a new --workdir, or resume this run with '
      'the change: add --config.resume_allow=<the field you changed>.')


def _summary(config: ml_collections.ConfigDict, run: workdir_lib.Run,
             parts: Parts, rows: List[Dict[str, Any]], start: _Start,
             commit: str) -> Dict[str, Any]:
  """summary.json: the last epoch's metrics, the history's totals, the
  run's shape, its cost and its record."""
  clock = start.clock  # as it is now, after the last epoch
  return metrics_lib.run_summary(
      rows, eval_split=parts.dataset.eval_split,
      **metrics_lib.local_summary(rows),  # filter changes, ws factor
      total_time_s=clock.elapsed_s, compile_time_s=clock.compile_time_s,
      compile_cache_requests=clock.compile_cache_requests,
      compile_cache_hits=clock.compile_cache_hits,
      num_epochs=config.num_epochs,
      # The run's length in epochs (fractional with last_epoch_fraction).
      train_epochs=parts.loop.num_steps / parts.steps_per_epoch,
      num_steps=parts.loop.num_steps, num_units=parts.model.num_units,
      num_devices=parts.num_devices,
      device_kind=jax.devices()[0].device_kind, git_commit=commit,
      history_missing_epochs=metrics_lib.missing_epochs(rows, start.epoch),
      config=json.loads(config.to_json_best_effort()),
      **run.summary_fields())  # the fork and the changes allowed on resume


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> Dict[str, Any]:
  """Trains `config` in `workdir`, resuming from its latest checkpoint.

  The workdir holds one run (`workdir.py`): it is locked while training, a
  config that would change its result is refused (`config.resume_allow`
  lets named changes through, recorded), and `config.init_from` forks a
  new workdir from another run's checkpoint. The run's record (config.json,
  run.json) is written once its first checkpoint is (`Run.commit`).

  Returns:
    The summary also written to `workdir/summary.json`.
  """
  # ---- Build: the config checked, the data loaded, the model, mesh, loop,
  # selector and initial state made. Nothing is written yet.
  validate_config(config)
  workdir_lock.check_path(workdir)  # one-line errors; creates nothing yet
  step_cache.enable_compilation_cache(config.compile_cache_dir)
  with errors.signals_stop_the_run(lambda: _kept(workdir, how_on=True)):
    parts = build(config)
    primary, steps_per_epoch = parts.primary, parts.steps_per_epoch
    # Only now is the workdir created, locked and compared with the run it
    # may hold; a failed start leaves no new workdir behind.
    with workdir_lib.open_run(
        workdir, config, fingerprint=parts.dataset.fingerprint(),
        steps_per_epoch=steps_per_epoch, primary=primary) as run:
      with checkpointing.Checkpointer(
          workdir, config.checkpoint.every_epochs, config.checkpoint.keep,
          primary=primary) as checkpointer, metrics_lib.MetricsWriter(
              workdir, config.log.tensorboard and primary) as writer:
        # ---- Resume: this workdir's latest good checkpoint, else a fork's
        # parent's (config.init_from), else epoch 0; and the history.
        start = _restore(config, workdir, run, parts, checkpointer)
        run.started(start.epoch)  # the record, written with a checkpoint
        console.announce_run(config, parts.model, start.state, parts.selector,
                             steps_per_epoch, parts.num_devices, start.epoch)
        rows = _history(config, workdir, run, writer, parts, start)
        state, clock, commit = start.state, start.clock, git_commit()
        eval_step = jax.jit(train_step_lib.make_eval_step(parts.model,
                                                          config.eval_tta))
        # ---- Epochs: the steps, evaluation, a metrics row, a checkpoint.
        for epoch in range(start.epoch, config.num_epochs):
          t0, last = time.perf_counter(), epoch + 1 == config.num_epochs
          with step_cache.CacheEvents(clock):
            state, result = parts.loop.run_epoch(
                state, epoch, parts.selector, metrics_lib.Progress(
                    epoch, config.num_epochs, parts.loop.steps_in_epoch(epoch),
                    config.log.progress),
                functools.partial(_non_finite_error, epoch=epoch,
                                  workdir=workdir))
            evaluation, eval_time = {}, 0.0
            if last or (epoch + 1) % config.eval_every_epochs == 0:
              t_eval = time.perf_counter()
              evaluation = evaluate(eval_step, state, parts.dataset,
                                    parts.eval_batch_size, parts.batch_sharding)
              eval_time = time.perf_counter() - t_eval
          row = metrics_lib.epoch_row(
              epoch, result, evaluation, eval_time,
              parts.loop.weighted_costs(result, state), parts.model.num_units,
              steps_per_epoch, config.batch_size)
          rows.append(row)
          if primary:
            writer.write(row)
            writer.write_losses(epoch * steps_per_epoch,
                                result.metrics['loss'],
                                config.log.loss_every_steps)
          clock.elapsed_s += time.perf_counter() - t0
          clock.compile_time_s += result.compile_time_s
          console.print_epoch(row, result, config.num_epochs)
          if checkpointer.maybe_save(
              epoch + 1, state, {'selector': parts.selector.state_dict(),
                                 **dataclasses.asdict(clock)},
              force=last, local_start=parts.loop.local_phase.start):
            run.commit(commit)  # the checkpoint is on disk: now the record
      # ---- Finish: summary.json, once the last checkpoint is saved.
      summary = _summary(config, run, parts, rows, start, commit)
      if primary:
        metrics_lib.write_json(os.path.join(workdir, 'summary.json'), summary)
  console.print_summary(summary, rows, workdir, config.log.tensorboard)
  return summary
