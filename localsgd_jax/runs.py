"""A comparison's run directories, read back: `workdir/<mode>/seed_<s>/`.

Each run holds `summary.json` (written once, after its last epoch),
`metrics.jsonl` (one row per epoch, read by `metrics.read_rows`, the one
reader of that file) and the workdir's `config.json` and `run.json`, which
record the seed it trained with (`other_seed`: a folder holding another
seed's run is never paired as its folder's seed). A loaded run is a dict:
'summary', 'rows' (by epoch), 'epoch_number' and 'cumulative_time_s'
(per-epoch x values for plots).
No JAX here: a report can be redrawn anywhere.
"""
import collections
import os
import re
import shlex
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from localsgd_jax import metrics as metrics_lib
from localsgd_jax.modes import MODES

_SEED_DIR = re.compile(r'^seed_(\d+)$')
# The workdir's records of its run (resume_check.CONFIG_FILE, RECORD_FILE;
# not imported: that module needs JAX).
_CONFIG_FILE, _RECORD_FILE = 'config.json', 'run.json'
Run = Dict[str, Any]
RunsByMode = Dict[str, Dict[int, Run]]


def run_dir(workdir: str, mode: str, seed: int) -> str:
  """Where the run of `mode` with `seed` lives."""
  return os.path.join(workdir, mode, f'seed_{seed}')


def read_json(path: str) -> Any:
  """A run's JSON file (None if absent): `metrics.read_json`."""
  return metrics_lib.read_json(path, 'delete it and run the comparison again')


def other_seed(path: str, seed: int) -> Optional[Tuple[str, str]]:
  """Whether the run in `path`, the folder of `seed`, is another seed's.

  Its config.json records the seed it trains with; its run.json, a seed
  changed on resume (`resume_allow=seed`, which older versions allowed).

  Returns:
    None, or (what the folder holds, e.g. '<path> holds the run of seed 1,
    not seed 0 (its config.json)', the command that moves it aside).
  """
  seeds = []
  config_path = os.path.join(path, _CONFIG_FILE)
  if os.path.exists(config_path):
    seeds.append((read_json(config_path).get('seed'), _CONFIG_FILE))
  record_path = os.path.join(path, _RECORD_FILE)
  if os.path.exists(record_path):
    for resumed in read_json(record_path).get('resumed_with_changes', []):
      old_new = resumed.get('changes', {}).get('seed') or []
      seeds += [(s, _RECORD_FILE) for s in old_new[:1]]  # the seed before
  for recorded, name in seeds:
    if recorded is not None and recorded != seed:
      aside = f'{path}.seed_{recorded}'
      move = f'mv {shlex.quote(path)} {shlex.quote(aside)}'
      return (f'{path} holds the run of seed {recorded}, not seed {seed} '
              f'(its {name})', move)
  return None


def find_runs(workdir: str):
  """The run folders of a comparison, by what they hold.

  Returns:
    ({mode: {seed: run dir}} for finished runs, the unfinished ones (paths
    relative to `workdir`), and `other_seed`'s (what, move) for the folders
    that hold another seed's run: neither finished nor unfinished).
  """
  finished, unfinished, other = {}, [], []
  for mode in sorted(os.listdir(workdir)):
    mode_dir = os.path.join(workdir, mode)
    if not os.path.isdir(mode_dir):
      continue
    for name in os.listdir(mode_dir):
      match = _SEED_DIR.match(name)
      path = os.path.join(mode_dir, name)
      if not match or not os.path.isdir(path):
        continue
      mismatch = other_seed(path, int(match.group(1)))
      if mismatch:
        other.append(mismatch)
        continue
      # summary.json is written once, after the last epoch: without it the
      # run crashed or is still going, and its numbers would not compare.
      if os.path.exists(os.path.join(path, 'summary.json')):
        finished.setdefault(mode, {})[int(match.group(1))] = path
      else:
        unfinished.append(os.path.relpath(path, workdir))
  # Known modes in MODES order (sgd first), then any others by name.
  order = [m for m in MODES if m in finished] + sorted(
      m for m in finished if m not in MODES)
  return ({m: dict(sorted(finished[m].items())) for m in order},
          sorted(unfinished), sorted(other))


def load_runs(workdir: str, modes: Optional[Sequence[str]] = None
              ) -> RunsByMode:
  """{mode: {seed: run}} of the finished runs (of `modes`, if given)."""
  found, _, _ = find_runs(workdir)
  runs_by_mode = {}
  for mode, by_seed in found.items():
    if modes is not None and mode not in modes:
      continue
    runs_by_mode[mode] = {}
    for seed, path in by_seed.items():
      run = {'summary': read_json(os.path.join(path, 'summary.json')),
             'rows': metrics_lib.read_rows(
                 os.path.join(path, 'metrics.jsonl'))}
      run['epoch_number'] = [r['epoch'] for r in run['rows']]  # from 1
      run['cumulative_time_s'] = _cumulative_time(run['rows'])
      runs_by_mode[mode][seed] = run
  return runs_by_mode


def _cumulative_time(rows: List[Dict[str, Any]]) -> List[float]:
  # Wall time a user waits for each epoch's test accuracy: training,
  # compilation and evaluation alike.
  return np.cumsum([r.get('epoch_time_s', 0.0) + r.get('compile_time_s', 0.0)
                    + r.get('eval_time_s', 0.0) for r in rows]).tolist()


def epoch_kind(run: Run, row: Dict[str, Any]) -> tuple:
  """What an epoch's steps compute, for pooling epoch times across runs.

  The k's the epoch used (with the step each started at) and, where any k is
  above 0, the local-rule settings that decide a local step's cost.
  """
  spans = row.get('transitions') or [[0, row['transition']]]
  kind = tuple((step - spans[0][0], k) for step, k in spans)
  if all(k == 0 for _, k in kind):
    return kind
  local = run['summary'].get('config', {}).get('local', {})
  return kind + tuple(local.get(key) for key in (
      'rule', 'hebbian_every', 'hebbian_fraction'))


def row_steps(run: Run) -> List[int]:
  """The steps each epoch row ran (fewer in a partial last epoch), from the
  rows' global `step`; 1 per row where runs did not record it."""
  out, last = [], 0
  for row in run['rows']:
    if row.get('step') is None:
      out.append(1)
      continue
    out.append(row['step'] - last)
    last = row['step']
  return out


def steps_per_epoch(run: Run) -> Optional[int]:
  """The steps of a whole epoch of `run`, None where not recorded."""
  summary = run['summary']
  if summary.get('num_steps') and summary.get('train_epochs'):
    return round(summary['num_steps'] / summary['train_epochs'])
  steps = [r['step'] for r in run['rows'][:1] if r.get('step')]
  return steps[0] if steps else None


def run_epochs(run: Run) -> float:
  """The run's length in epochs (fractional with a partial last epoch;
  runs of older versions: whole epochs)."""
  summary = run['summary']
  if summary.get('train_epochs') is not None:
    return float(summary['train_epochs'])
  return float(summary.get('num_epochs', len(run['rows'])))


def median_epoch_times(runs_by_mode: RunsByMode, field) -> Dict[tuple, float]:
  """Median of `field` (summed fields if a tuple) per step, per kind of
  epoch, pooled over every run of the comparison: an epoch of a kind costs
  this times its steps (a partial epoch pools with the whole ones)."""
  fields = (field,) if isinstance(field, str) else field
  pooled = collections.defaultdict(list)
  for by_seed in runs_by_mode.values():
    for run in by_seed.values():
      for r, steps in zip(run['rows'], row_steps(run)):
        pooled[epoch_kind(run, r)].append(
            sum(r.get(f, 0.0) for f in fields) / max(steps, 1))
  return {kind: float(np.median(t)) for kind, t in pooled.items()}


def rebuilt_time(run: Run, median: Dict[tuple, float]) -> float:
  """A run's time with each epoch at `median` (per step) of its kind."""
  return sum(median[epoch_kind(run, row)] * steps
             for row, steps in zip(run['rows'], row_steps(run)))


def robust_train_time(runs_by_mode: RunsByMode, run: Run) -> float:
  """A run's training time with each epoch at the median of its kind."""
  return rebuilt_time(run, median_epoch_times(runs_by_mode, 'epoch_time_s'))


def run_flops(run: Run) -> float:
  """XLA's FLOPs of all the steps a run took."""
  return sum(row.get('step_flops', 0.0) * steps
             for row, steps in zip(run['rows'], row_steps(run)))
