"""Run outputs: metrics.jsonl, summary.json, TensorBoard events, progress.

`metrics.jsonl` holds one JSON object per finished epoch (`epoch` counts
completed epochs from 1, as the console does); on resume the file is
rewritten with one row per epoch up to the restored checkpoint, so it always
describes one consistent run, and readers take rows by epoch.

A write that fails (a full disk) stops the run with a one-line `UserError`
and leaves no torn file behind (`disk`).
"""
import contextlib
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional

import numpy as np
import tqdm

from localsgd_jax import disk
from localsgd_jax import tb_events
from localsgd_jax.errors import UserError
from localsgd_jax.errors import warn


def _jsonable(value: Any) -> Any:
  if hasattr(value, 'item'):
    return value.item()
  return value


_TB_SKIP = ('epoch', 'step', 'num_units')
# metrics.jsonl field -> TensorBoard tag; fields not named here go by
# `tensorboard_tag`'s rules.
_TB_TAGS = {
    'train_loss': 'train/epoch_loss',     # mean over the epoch's steps
    'train_accuracy': 'train/accuracy',
    'eval_accuracy': 'eval/accuracy',
    'eval_loss': 'eval/loss',
    'transition': 'selection/k',          # k at the epoch's start
    'images_per_s': 'time/images_per_s',
    # The local rule (local_phase.py).
    'local_filter_angle': 'local/filter_angle',
    'local_filter_change': 'local/filter_change',
    'ws_factor_local': 'local/ws_factor',
    'ws_below_1_fraction': 'local/ws_below_1_fraction',
    'local_rule_steps': 'local/rule_steps',
}
# Per-unit lists (None for SGD units): one tag per unit, '<tag>/unit_<i>'.
_TB_PER_UNIT = ('local_filter_angle', 'local_filter_change')


def tensorboard_tag(key: str) -> str:
  """The grouped TensorBoard tag of a metrics.jsonl field.

  train/ (losses, accuracy, learning rates), eval/, selection/ (k and the
  statistics it is chosen from), cost/ (XLA's counts of the step), time/.
  """
  if key in _TB_TAGS:
    return _TB_TAGS[key]
  if key.endswith('_time_s'):
    return 'time/' + key[:-len('_time_s')] + '_s'
  if key.startswith('step_') or key.endswith('_flop_fraction'):
    return 'cost/' + key
  if key.startswith('transition_'):
    return 'selection/' + key
  if key.startswith('eval_'):
    return 'eval/' + key[len('eval_'):]
  return 'train/' + key


class MetricsWriter(contextlib.AbstractContextManager):
  """Writes per-epoch metrics to metrics.jsonl and TensorBoard.

  TensorBoard tags are grouped (see `tensorboard_tag`); `train/loss` holds
  the loss every N steps (`write_losses`), the TEXT tab the config.
  """

  def __init__(self, workdir: str, tensorboard: bool = True):
    """Raises UserError if the TensorBoard folder cannot be written."""
    self.workdir = workdir
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._tb = (tb_events.EventFile(os.path.join(workdir, 'tb'))
                if tensorboard else None)

  def read(self) -> List[Dict[str, Any]]:
    """The rows, one per epoch, by epoch (see `read_rows`)."""
    return read_rows(self.path)

  def truncate(self, num_epochs: int,
               rows: Optional[List[Dict[str, Any]]] = None
               ) -> List[Dict[str, Any]]:
    """Keeps the records of epochs 1..num_epochs; returns them.

    The file is rewritten with one row per epoch, in epoch order (from
    `rows`, e.g. a fork's parent's, instead of the file's own if given).
    """
    rows = [r for r in (self.read() if rows is None else rows)
            if r['epoch'] <= num_epochs]
    disk.replace_atomically(
        self.path, ''.join(json.dumps(r) + '\n' for r in rows),
        'the metrics file')
    return rows

  def write(self, row: Dict[str, Any]) -> None:
    """Appends the epoch's row (and its TensorBoard scalars).

    Raises:
      UserError: the file cannot be written; it is left as it was.
    """
    row = {k: _jsonable(v) for k, v in row.items()}
    disk.append_durably(self.path, json.dumps(row) + '\n', 'the metrics file')
    if self._tb is not None:
      for key, value in row.items():
        if (isinstance(value, (int, float)) and not isinstance(value, bool)
            and key not in _TB_SKIP):
          self._tb.add_scalar(tensorboard_tag(key), value, row['step'])
        elif key in _TB_PER_UNIT and isinstance(value, list):
          for unit, v in enumerate(value):
            if v is not None:
              self._tb.add_scalar(f'{tensorboard_tag(key)}/unit_{unit}', v,
                                  row['step'])
      self._tb.flush()

  def write_losses(self, first_step: int, losses, every: int) -> None:
    """TensorBoard `train/loss`: the loss of every `every`-th global step.

    `losses[i]` is the loss of the epoch's step i; its point is at global
    step `first_step + i + 1` (steps done, as in metrics.jsonl).
    """
    if self._tb is None:
      return
    for i, loss in enumerate(losses):
      step = first_step + i + 1
      if step % every == 0:
        self._tb.add_scalar('train/loss', float(loss), step)

  def write_config(self, config_json: str, step: int) -> None:
    """The resolved config as TensorBoard text (the TEXT tab)."""
    if self._tb is None:
      return
    # Indented by 4: Markdown shows it as code, keeping the JSON layout.
    text = '\n'.join('    ' + line for line in config_json.splitlines())
    self._tb.add_text('config', text, step)
    self._tb.flush()

  def __exit__(self, *exc_info) -> None:
    self.close()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def missing_epochs(rows: List[Dict[str, Any]], num_epochs: int) -> List[int]:
  """The epochs 1..num_epochs without a row in `rows` (a lost history)."""
  have = {r['epoch'] for r in rows}
  return [e for e in range(1, num_epochs + 1) if e not in have]


def spans(epochs: List[int]) -> str:
  """[1, 2, 3, 7] -> '1-3, 7'."""
  out, start = [], None
  for i, e in enumerate(epochs):
    if start is None:
      start = e
    if i + 1 == len(epochs) or epochs[i + 1] != e + 1:
      out.append(str(e) if e == start else f'{start}-{e}')
      start = None
  return ', '.join(out)


def read_rows(path: str) -> List[Dict[str, Any]]:
  """The rows of a metrics.jsonl, one per epoch, sorted by epoch.

  A torn last line (a run killed while writing it) is dropped with a
  warning; where an epoch appears twice (files written before resumes
  truncated them), its last row counts.

  Raises:
    UserError: a line before the last is not a JSON object with an epoch.
  """
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = f.read().split('\n')
  by_epoch = {}
  numbered = [(n, line) for n, line in enumerate(lines, 1) if line.strip()]
  for i, (n, line) in enumerate(numbered):
    try:
      row = json.loads(line)
      epoch = row['epoch']
    except (ValueError, KeyError, TypeError) as e:
      if i == len(numbered) - 1:
        warn(f'dropped the torn last line (line {n}) of {path}; the run '
             'stopped while writing it.')
        break
      raise UserError(f'{path} line {n} is not a metrics row ({e}); delete '
                      'that line (its epoch is then missing from the '
                      'metrics) and run again.') from None
    by_epoch[epoch] = row
  return [by_epoch[e] for e in sorted(by_epoch)]


def epoch_row(epoch: int, result, evaluation: Dict[str, Any], eval_time: float,
              costs: Dict[str, float], num_units: int, steps_per_epoch: int,
              batch_size: int) -> Dict[str, Any]:
  """The metrics.jsonl record of one finished epoch (`epoch` 0-based).

  `result` is the epoch's loop.EpochResult (host metrics per step, the k
  segments, the selection statistics and timings); `evaluation` the eval
  fields (empty in epochs without evaluation); `costs` XLA's counts of the
  steps run (loop.TrainLoop.weighted_costs).
  """
  m = result.metrics
  first_step = epoch * steps_per_epoch
  steps = len(m['loss'])  # fewer than steps_per_epoch in a partial epoch
  k_last = result.segments[-1][1]
  return {
      'epoch': epoch + 1,  # completed epochs, counted from 1 everywhere
      'step': first_step + steps,
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
      # Per unit (None for SGD units): local_filter_angle and
      # local_filter_change since its local phase began; the weak-
      # supervision factor over the steps that applied the rule.
      **getattr(result, 'local_stats', {}),
      # The last period's update statistic of its transition unit.
      'transition_update': result.last_stats['update_ratios'][k_last],
      'transition_consistency': result.last_stats['consistency'][k_last],
      **costs,
      'epoch_time_s': result.train_time_s,
      'eval_time_s': eval_time,
      'compile_time_s': result.compile_time_s,
      'images_per_s': steps * batch_size / result.train_time_s,
      'selection': ', '.join(result.decisions),
  }


def run_summary(rows: List[Dict[str, Any]], **fields) -> Dict[str, Any]:
  """summary.json: the final and best eval accuracy of `rows`, then `fields`.

  By epoch: the final result is the last epoch's, whatever the file order.
  """
  rows = sorted(rows, key=lambda r: r['epoch'])
  accs = [r['eval_accuracy'] for r in rows if 'eval_accuracy' in r]
  summary = {'final_eval_accuracy': accs[-1] if accs else None,
             'best_eval_accuracy': max(accs) if accs else None}
  # With config.eval_tta: the test-time-augmented accuracy, apart.
  tta = [r['eval_accuracy_tta'] for r in rows if 'eval_accuracy_tta' in r]
  if tta:
    summary.update(final_eval_accuracy_tta=tta[-1],
                   best_eval_accuracy_tta=max(tta))
  return {**summary, **fields}


def local_summary(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
  """summary.json's local-rule fields: the last epoch's per-unit filter
  changes (local_phase.py), and the weak-supervision factor over all the
  run's local-rule steps (each epoch weighted by its number of them)."""
  rows = sorted(rows, key=lambda r: r['epoch'])
  last = rows[-1] if rows else {}
  weighted = [r for r in rows if r.get('local_rule_steps')]
  n = sum(r['local_rule_steps'] for r in weighted)

  def mean(field):
    return (sum(r['local_rule_steps'] * r[field] for r in weighted) / n
            if n else None)
  return {'local_filter_angle': last.get('local_filter_angle'),
          'local_filter_change': last.get('local_filter_change'),
          'ws_factor_local': mean('ws_factor_local'),
          'ws_below_1_fraction': mean('ws_below_1_fraction'),
          'local_rule_steps': n}


def read_json(path: str, fix: str = 'restore it, or move it aside'
              ) -> Optional[Any]:
  """The JSON object in `path`, or None if there is no such file.

  Raises:
    UserError: it cannot be read or is not valid JSON; the message ends in
      `fix`, what to do about it.
  """
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError) as e:
    raise UserError(f'{path} cannot be read ({e}); {fix}.') from None


def write_json(path: str, obj: Any) -> None:
  """Writes JSON atomically (temporary file, then rename).

  Raises:
    UserError: it cannot be written (e.g. a full disk); the old file stays.
  """
  text = json.dumps(obj, indent=2, default=_jsonable) + '\n'
  disk.replace_atomically(path, text, 'the JSON file')


class Progress:
  """A progress bar per epoch on a terminal, plain lines otherwise."""

  def __init__(self, epoch: int, num_epochs: int, steps: int, enabled: bool):
    self.tty = enabled and sys.stderr.isatty()
    self.steps = steps
    self.desc = f'epoch {epoch + 1}/{num_epochs}'
    self._bar: Optional[tqdm.tqdm] = None
    self._next_line = 0
    self._t0 = time.perf_counter()
    if self.tty:
      self._bar = tqdm.tqdm(total=steps, desc=self.desc, leave=False,
                            dynamic_ncols=True)

  def update(self, step_in_epoch: int, loss: Optional[float] = None) -> None:
    if self._bar is not None:
      self._bar.update(1)
      if loss is not None:
        self._bar.set_postfix(loss=f'{loss:.4f}')
    elif step_in_epoch + 1 >= self._next_line and loss is not None:
      # Plain logs get about four lines per epoch, not one per step.
      print(f'{self.desc} step {step_in_epoch + 1}/{self.steps} '
            f'loss {loss:.4f} ({time.perf_counter() - self._t0:.1f}s)',
            flush=True)
      self._next_line = step_in_epoch + 1 + max(1, self.steps // 4)

  def note(self, message: str) -> None:
    """A line between the progress updates (e.g. 'compiling ...')."""
    if self._bar is not None:
      self._bar.write(message)
    else:
      print(message, flush=True)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
