"""The comparison's report: read the runs, aggregate, render, plot.

`write_report` reads the run directories of a comparison (`runs`), gets
per-mode statistics (`aggregate`) and writes `comparison.json`,
`comparison.md` and the PNG plots (`plots`) into the workdir. It only reads
files and imports no JAX, so a report can be redrawn at any time
(`compare.py --report_only`), also while runs are missing or unfinished.
Training the runs is `comparison`'s job.
"""
import datetime
import os
from typing import Any, Dict, List, Optional

from localsgd_jax import metrics as metrics_lib
from localsgd_jax import plots as plots_lib
from localsgd_jax import runs as runs_lib
from localsgd_jax.aggregate import aggregate  # pylint: disable=unused-import
from localsgd_jax.errors import UserError
# MODES too: the report tabulates what `modes` defines.
from localsgd_jax.modes import BASELINE, MODES, SAME_TIME  # pylint: disable=unused-import
from localsgd_jax.plots import PLOTS


def _fmt(value: Optional[float], spec: str, suffix: str = '') -> str:
  return 'n/a' if value is None else f'{value:{spec}}{suffix}'


def _pm(mean: Optional[float], std: Optional[float], spec: str,
        scale: float = 1.0) -> str:
  if mean is None:
    return 'n/a'
  spread = 'n/a' if std is None else f'{std * scale:.2f}'
  return f'{mean * scale:{spec}} ± {spread}'


def _diff_cell(e: Dict[str, Any]) -> str:
  """Paired Δ accuracy vs sgd in points, with its 95% interval."""
  mean, ci = e['accuracy_diff_vs_sgd_mean'], e['accuracy_diff_vs_sgd_ci95']
  if mean is None or e['mode'] == BASELINE:
    return '' if e['mode'] == BASELINE else 'n/a'
  if ci is None:
    return f'{100 * mean:+.2f} (n=1)'
  return (f'{100 * mean:+.2f} [{100 * (mean - ci):+.2f}, '
          f'{100 * (mean + ci):+.2f}]')


def _table(header: List[str], rows: List[List[str]]) -> List[str]:
  return (['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
          + ['| ' + ' | '.join(r) + ' |' for r in rows])


def headline_table(entries: List[Dict[str, Any]]) -> str:
  """The comparison's main table (also printed by compare.py)."""
  rows = []
  for e in entries:
    epochs = str(e['num_epochs'])
    rows.append([
        e['mode'], f'{e["num_runs"]}', epochs,
        _pm(e['eval_accuracy_mean'], e['eval_accuracy_std'], '.2f', 100),
        _diff_cell(e),
        _pm(e['time_to_target_s_mean'], e['time_to_target_s_std'], '.1f')
        if e['time_to_target_s_mean'] is not None else
        f'not reached ({e["target_reached"]})' if e['target_reached']
        else 'n/a',
        _fmt(e['iso_accuracy_speedup'], '.2f', 'x'),
        _fmt(e['robust_speedup_vs_sgd'], '.2f', 'x'),
    ])
  return '\n'.join(_table(
      ['mode', 'seeds', 'epochs', 'accuracy % (mean ± std)',
       'Δ vs sgd, points (paired, 95% CI)', 'time to target (s)',
       'iso-accuracy speedup', 'run speedup'], rows))


def _markdown(meta: Dict[str, Any], entries: List[Dict[str, Any]]) -> str:
  target = next((e['target_accuracy'] for e in entries
                 if e.get('target_accuracy') is not None), None)
  lines = [
      '# LoCal+SGD comparison', '',
      f'- command: `{meta["command"] or "n/a"}`',
      f'- date: {meta["date"]}',
      f'- device: {meta["device"]}',
      f'- git commit: {meta["git_commit"]}',
      f'- target accuracy: {_fmt(target, ".4f")} (mean over seeds)', '',
      headline_table(entries), '',
      '**Iso-accuracy speedup** (the headline): sgd\'s training time to '
      'first reach the target accuracy (per seed, the same seed\'s sgd '
      'final accuracy minus 0.5 points, unless --target gives one for '
      'all) over the mode\'s, with '
      'training time rebuilt from the median time of each kind of epoch '
      '(compile and eval excluded); n/a unless every seed reached it. '
      'Accuracy is the final epoch\'s on the runs\' eval split; Δ pairs '
      'runs by seed (same init and data order). Run speedup: sgd\'s whole '
      'run over the mode\'s, epochs rebuilt the same way (eval included, '
      'compile time excluded: the first run compiles what later runs load '
      'from the cache).'
  ]
  match = next((e['match'] for e in entries if e.get('match')), None)
  if match:
    lines += ['', f'`{SAME_TIME}` ran {match["num_epochs"]} of '
              f'{match["baseline_epochs"]} epochs: the {match["match_cost"]} '
              f'of `{match["match_mode"]}` was {match["cost_ratio"]:.3f}x '
              'sgd\'s.']
  lines += ['', '## Details', ''] + _details(entries)
  if meta['unfinished_runs']:
    lines += ['', 'Not counted (no summary.json yet: crashed or still '
              'running; run the comparison again to finish them): '
              + ', '.join(f'`{p}`' for p in meta['unfinished_runs'])]
  lines += ['', '## Plots', '']
  lines += [f'![{name}]({file})' for name, file in PLOTS.items()]
  return '\n'.join(lines) + '\n'


def _details(entries: List[Dict[str, Any]]) -> List[str]:
  """The details table and its note."""
  rows = []
  for e in entries:
    peak = e['peak_temp_bytes']
    rows.append([
        e['mode'], _fmt(e['best_eval_accuracy_mean'], '.4f'),
        _fmt(e['total_time_s_mean'], '.1f'),
        _fmt(e['speedup_vs_sgd'], '.2f', 'x'),
        _fmt(e['train_time_s_mean'], '.1f'),
        _fmt(e['train_speedup_vs_sgd'], '.2f', 'x'),
        _fmt(e['compile_time_s_mean'], '.1f'),
        _fmt(e['local_flop_fraction_mean'], '.3f'),
        _fmt(None if peak is None else peak / 2**20, '.1f', ' MiB'),
        _fmt(e['mean_transition'], '.2f',
             f' / {e["num_units"]}' if e['num_units'] else ''),
    ])
  return _table(
      ['mode', 'best acc', 'wall time (s)', 'wall speedup', 'train time (s)',
       'train speedup', 'compile (s)', 'local FLOP frac', 'peak temp',
       'mean k'], rows) + [
      '',
      'Wall time is the whole run as measured, compilation and evaluation '
      'included (noisy on shared machines); train time sums the epochs\' '
      'training steps as measured. Local FLOP fraction and mean k average '
      'over epochs and seeds; peak temp is the largest XLA temporary memory '
      'of a step. Std is over seeds (ddof=1), n/a for one seed.',
  ]


def write_report(workdir: str, command: Optional[str] = None,
                 device: Optional[str] = None, target: Optional[float] = None,
                 target_drop: float = 0.005, this_device: Optional[str] = None,
                 writer: bool = True) -> List[Dict[str, Any]]:
  """Reads the runs under `workdir` and writes the comparison files.

  Writes `comparison.json` ({'command', 'date', 'device', 'git_commit',
  'unfinished_runs', 'entries': [...]}), `comparison.md` and the PNGs in
  PLOTS. Each entry holds, for one mode: mode, seeds, num_runs,
  eval_accuracy_mean/_std, best_eval_accuracy_mean,
  accuracy_diff_vs_sgd_mean/_std (paired by seed; None without sgd runs),
  total_time_s_mean, speedup_vs_sgd, train_time_s_mean,
  train_speedup_vs_sgd, robust_time_s_mean, robust_speedup_vs_sgd (from the
  median epoch time of each kind of epoch), local_flop_fraction_mean,
  peak_temp_bytes and mean_transition (None where the runs did not record
  the field).

  Args:
    workdir: the comparison's directory (`workdir/<mode>/seed_<s>/`).
    command: the command line; None keeps the one of an earlier report.
    device: the accelerator the runs used; None keeps the one of an earlier
      report (a redraw may happen on another machine), else `this_device`.
    target: the accuracy for time-to-accuracy; None: per seed, that
      seed's sgd final accuracy minus `target_drop`.
    target_drop: see `target` (0.005 = half a point).
    this_device: this machine's accelerator, for a first report made by a
      redraw (the caller asks JAX; this module does not import it).
    writer: whether this process writes the files (one writer when several
      processes share them: callers pass jax.process_index() == 0).

  Returns:
    The entries.

  Raises:
    UserError: when `workdir` holds no finished run.
  """
  if not os.path.isdir(workdir):
    raise UserError(f'{workdir} does not exist; run compare.py without '
                    '--report_only first to train the runs')
  found, unfinished = runs_lib.find_runs(workdir)
  if not found:
    raise UserError(
        f'{workdir} holds no finished run (expected <mode>/seed_<n>/'
        'summary.json); run compare.py without --report_only first')
  runs_by_mode = runs_lib.load_runs(workdir)
  entries = aggregate(runs_by_mode, target=target, target_drop=target_drop)
  match_path = os.path.join(workdir, SAME_TIME, 'match.json')
  for e in entries:
    if e['mode'] == SAME_TIME and os.path.exists(match_path):
      e['match'] = runs_lib.read_json(match_path)
  json_path = os.path.join(workdir, 'comparison.json')
  previous = (runs_lib.read_json(json_path) if os.path.exists(json_path)
              else {})
  meta = {
      'command': command if command is not None else previous.get('command'),
      'date': datetime.datetime.now().astimezone().isoformat(
          timespec='seconds'),
      'device': device or previous.get('device') or this_device or 'unknown',
      # The runs' commits (several if the runs span commits).
      'git_commit': ', '.join(sorted(
          {run['summary'].get('git_commit') or 'unknown'
           for by_seed in runs_by_mode.values()
           for run in by_seed.values()})),
      'unfinished_runs': unfinished,
  }
  if not writer:
    return entries  # One writer: every host sees the same files.
  metrics_lib.write_json(json_path, {**meta, 'entries': entries})
  with open(os.path.join(workdir, 'comparison.md'), 'w') as f:
    f.write(_markdown(meta, entries))
  plots_lib.write_plots(workdir, runs_by_mode)
  return entries
