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

from localsgd_jax import aggregate as aggregate_lib
from localsgd_jax import metrics as metrics_lib
from localsgd_jax import plots as plots_lib
from localsgd_jax import runs as runs_lib
from localsgd_jax.aggregate import analyze
from localsgd_jax.errors import UserError
from localsgd_jax.errors import warn
from localsgd_jax.modes import BASELINE, SAME_TIME
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


def _bounded(value: Optional[float], bound: Optional[str], spec: str,
             suffix: str = '') -> str:
  """A value that may be a bound of the frontier's range: '> 1.30x'."""
  if value is None:
    return 'n/a'
  return f'{bound + " " if bound else ""}{value:{spec}}{suffix}'


_OUT_OF_RANGE = {'>': 'accuracy above the largest budget\'s',
                 '<': 'accuracy below the smallest budget\'s'}


def _speedup_cell(v: Optional[Dict[str, Any]]) -> str:
  """The iso-accuracy speed-up with its bootstrap interval."""
  if v is None:
    return 'n/a'
  (lo, hi), (lo_b, hi_b) = v['speedup_ci95'], v['speedup_ci95_bounds']
  cell = (f'**{_bounded(v["speedup"], v["bound"], ".2f", "x")}** '
          f'[{_bounded(lo, lo_b, ".2f")}, {_bounded(hi, hi_b, ".2f")}]')
  if v['bound']:
    cell += f' ({_OUT_OF_RANGE[v["bound"]]})'
  return cell


def _equal_cost_cell(v: Optional[Dict[str, Any]]) -> str:
  """The mode's accuracy minus SGD's frontier at its cost, in points."""
  if v is None:
    return 'n/a'
  if v['sgd_accuracy'] is None:
    return ('cost below the smallest budget' if v['accuracy_bound'] == '<'
            else 'cost above the largest budget')
  diff, ci = v['accuracy_diff'], v['accuracy_diff_ci95']
  cell = f'{100 * v["sgd_accuracy"]:.2f} / {100 * diff:+.2f}'
  if ci is not None:
    cell += f' [{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]'
    if v['accuracy_diff_resamples'].split('/')[0] != str(v['resamples']):
      cell += f' ({v["accuracy_diff_resamples"]} resamples in range)'
  return cell


def frontier_headline_table(entries: List[Dict[str, Any]]) -> str:
  """Each mode against SGD's budget frontier: the iso-accuracy speed-up."""
  rows = []
  for e in entries:
    v = (e.get('vs_frontier') or {}).get('time')
    rows.append([
        e['mode'], f'{e["num_runs"]}', f'{e["train_epochs"]:g}',
        _pm(e['eval_accuracy_mean'], e['eval_accuracy_std'], '.2f', 100),
        _fmt(e['robust_train_time_s_mean'], '.1f'),
        _fmt(None if v is None else v['sgd_cost'], '.1f'),
        _speedup_cell(v), _equal_cost_cell(v), _diff_cell(e),
    ])
  return '\n'.join(_table(
      ['mode', 'seeds', 'epochs', 'accuracy % (mean ± std)',
       'cost: train time (s)', 'sgd\'s cost for that accuracy (s)',
       'iso-accuracy speed-up [95% CI]',
       'sgd accuracy at equal cost % / Δ points [95% CI]',
       'Δ vs sgd, points (paired, 95% CI)'], rows))


def frontier_table(points: List[Dict[str, Any]]) -> str:
  """SGD's budgets: accuracy and cost per budget."""
  rows = [[p['label'], f'{p["epochs"]:g}', f'{len(p["seeds"])}',
           _pm(p['accuracy_mean'], p['accuracy_std'], '.2f', 100),
           f'{100 * p["monotone_accuracy"]:.2f}',
           _fmt(p['time_s_mean'], '.1f'),
           _fmt(None if p['flops_mean'] is None else p['flops_mean'] / 1e12,
                '.3f'),
           _fmt(p['compile_time_s_mean'], '.1f'),
           _fmt(p['end_to_end_time_s_mean'], '.1f')] for p in points]
  return '\n'.join(_table(
      ['sgd budget', 'epochs', 'seeds', 'accuracy % (mean ± std)',
       'frontier %', 'train time (s)', 'TFLOPs', 'compile (s)',
       'end-to-end (s)'], rows))


def headline_table(entries: List[Dict[str, Any]]) -> str:
  """The comparison's main table (also printed by compare.py): against
  SGD's frontier when the comparison has budget runs, else time to
  target (`tta_table`)."""
  if any(e.get('vs_frontier') for e in entries):
    return frontier_headline_table(entries)
  return tta_table(entries)


def tta_table(entries: List[Dict[str, Any]]) -> str:
  """Time to the target accuracy and the speedups over sgd."""
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
        _fmt(e['tta_speedup'], '.2f', 'x'),
        _fmt(e['robust_speedup_vs_sgd'], '.2f', 'x'),
    ])
  return '\n'.join(_table(
      ['mode', 'seeds', 'epochs', 'accuracy % (mean ± std)',
       'Δ vs sgd, points (paired, 95% CI)', 'time to target (s)',
       'speedup to target', 'run speedup'], rows))


def _frontier_note(entries, points) -> List[str]:
  resamples = next((v['resamples'] for e in entries
                    for v in (e.get('vs_frontier') or {}).values() if v),
                   'n/a')
  return [
      f'**Iso-accuracy speed-up** (the headline): SGD at the budgets of '
      '--sgd_budgets (`sgd@B`: the same schedule shape compressed into B '
      'epochs\' steps), with the `sgd` and `sgd_same_time` runs, gives '
      'SGD\'s frontier of mean accuracy against mean cost, the cost being '
      'robust training time (each epoch at the comparison\'s median time '
      'per step of its kind, times its steps; evaluation and compilation '
      'excluded). The frontier is made monotone by a cumulative maximum (a '
      'budget is credited with the best accuracy of any cheaper one, which '
      'favours SGD). For a mode with mean accuracy a at mean cost c, the '
      'speed-up is the cost at which the frontier, linearly interpolated '
      'between budgets, reaches a, over c: above 1, SGD needs more time '
      'than the mode at any budget to match it. Never extrapolated: '
      '"> x" when a is above the best budget\'s accuracy (x: the largest '
      'budget\'s cost over c), "< x" when below the cheapest\'s. SGD '
      'accuracy at equal cost: the frontier at c, and the mode\'s accuracy '
      'minus it. 95% intervals: a paired bootstrap over seeds, '
      f'{resamples} resamples (numpy default_rng({aggregate_lib.BOOTSTRAP_SEED})): '
      'seeds drawn with replacement, the same draw for every mode and '
      'budget, the frontier and the mode\'s means recomputed from each; '
      'the 2.5th and 97.5th percentiles (an end beyond the frontier\'s '
      'range is a bound). The same against XLA FLOPs (step FLOPs x steps) '
      'is in the details. Accuracy is the final epoch\'s on the runs\' '
      'eval split; Δ vs sgd pairs runs by seed.',
      '', '### SGD\'s frontier', '', frontier_table(points), '',
      'Frontier %: the monotone frontier\'s accuracy at the budget. '
      'Compile and end-to-end (robust training + evaluation + compile '
      'time as measured) are reported apart from the cost.',
  ]


def _tta_note() -> str:
  return ('**Speedup to target**: sgd\'s training time to '
          'first reach the target accuracy (per seed, the same seed\'s sgd '
          'final accuracy minus 0.5 points, unless --target gives one for '
          'all) over the mode\'s, with '
          'training time rebuilt from the median time per step of each kind '
          'of epoch (compile and eval excluded); n/a unless every seed '
          'reached it. '
          'Accuracy is the final epoch\'s on the runs\' eval split; Δ pairs '
          'runs by seed (same init and data order). Run speedup: sgd\'s '
          'whole run over the mode\'s, epochs rebuilt the same way (eval '
          'included, compile time excluded: the first run compiles what '
          'later runs load from the cache).')


def _markdown(meta: Dict[str, Any], entries: List[Dict[str, Any]],
              points: Optional[List[Dict[str, Any]]] = None) -> str:
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
  ]
  if points:
    lines += _frontier_note(entries, points)
  else:
    lines += [_tta_note()]
  match = next((e['match'] for e in entries if e.get('match')), None)
  if match:
    ran = match.get('epochs', match['num_epochs'])
    lines += ['', f'`{SAME_TIME}` ran {ran:g} of '
              f'{match["baseline_epochs"]} epochs: the {match["match_cost"]} '
              f'of `{match["match_mode"]}` was {match["cost_ratio"]:.3f}x '
              'sgd\'s.']
  lines += ['', '## Details', ''] + _details(entries)
  if points:
    lines += ['', '### Time to target', '', tta_table(entries), '',
              _tta_note(), '', '### Against SGD\'s frontier in FLOPs', '',
              _flops_table(entries)]
  if meta['unfinished_runs']:
    lines += ['', 'Not counted (no summary.json yet: crashed or still '
              'running; run the comparison again to finish them): '
              + ', '.join(f'`{p}`' for p in meta['unfinished_runs'])]
  lines += ['', '## Plots', '']
  lines += [f'![{name}]({file})' for name, file in PLOTS.items()]
  return '\n'.join(lines) + '\n'


def _flops_table(entries: List[Dict[str, Any]]) -> str:
  rows = []
  for e in entries:
    v = (e.get('vs_frontier') or {}).get('flops')
    rows.append([
        e['mode'],
        _fmt(None if e['flops_mean'] is None else e['flops_mean'] / 1e12,
             '.3f'),
        _speedup_cell(v), _equal_cost_cell(v)])
  return '\n'.join(_table(
      ['mode', 'TFLOPs', 'iso-accuracy speed-up in FLOPs [95% CI]',
       'sgd accuracy at equal FLOPs % / Δ points [95% CI]'], rows))


def _cache_cell(e: Dict[str, Any]) -> str:
  if e.get('compile_cache_requests') is None:
    return 'not recorded'
  if not e['compile_cache_requests']:
    return 'cache off'
  return f'{e["compile_cache_hits"]}/{e["compile_cache_requests"]}'


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
        _fmt(e['compile_time_s_mean'], '.1f'), _cache_cell(e),
        _fmt(e['end_to_end_time_s_mean'], '.1f'),
        _fmt(e['local_flop_fraction_mean'], '.3f'),
        _fmt(None if peak is None else peak / 2**20, '.1f', ' MiB'),
        _fmt(e['mean_transition'], '.2f',
             f' / {e["num_units"]}' if e['num_units'] else ''),
    ])
  return _table(
      ['mode', 'best acc', 'wall time (s)', 'wall speedup', 'train time (s)',
       'train speedup', 'compile (s)', 'programs from cache',
       'end-to-end (s)', 'local FLOP frac', 'peak temp', 'mean k'], rows) + [
      '',
      'Wall time is the whole run as measured, compilation and evaluation '
      'included (noisy on shared machines); train time sums the epochs\' '
      'training steps as measured. Compile is the time compiling or '
      'loading programs, as measured; programs from cache: of the programs '
      'compiled through JAX\'s persistent compilation cache, how many were '
      'loaded from it (jax.monitoring\'s cache-hit events, summed over '
      'seeds; a load costs far less than a cold compile, so compile times '
      'of cold and warm runs differ; not recorded by older versions). '
      'End-to-end: robust training + evaluation time plus compile time as '
      'measured. Local FLOP fraction and mean k average '
      'over epochs and seeds; peak temp is the largest XLA temporary memory '
      'of a step. Std is over seeds (ddof=1), n/a for one seed.',
  ]


def write_report(workdir: str, command: Optional[str] = None,
                 device: Optional[str] = None, target: Optional[float] = None,
                 target_drop: float = 0.005, this_device: Optional[str] = None,
                 writer: bool = True) -> List[Dict[str, Any]]:
  """Reads the runs under `workdir` and writes the comparison files.

  Writes `comparison.json` ({'command', 'date', 'device', 'git_commit',
  'unfinished_runs', 'entries': [...], 'frontier': SGD's budget points or
  None}), `comparison.md` and the PNGs in PLOTS, and warns (one line each)
  of the unfinished runs and of each folder holding another seed's run
  (`runs.other_seed`), which the report leaves out. Each entry holds, for one
  mode (the `sgd@B` budget runs make up 'frontier' instead): mode, seeds,
  num_runs,
  eval_accuracy_mean/_std, best_eval_accuracy_mean,
  accuracy_diff_vs_sgd_mean/_std (paired by seed; None without sgd runs),
  total_time_s_mean, speedup_vs_sgd, train_time_s_mean,
  train_speedup_vs_sgd, robust_time_s_mean, robust_speedup_vs_sgd (from the
  median epoch time of each kind of epoch), local_flop_fraction_mean,
  peak_temp_bytes and mean_transition (None where the runs did not record
  the field); robust_train_time_s_mean (the frontier's cost), flops_mean,
  end_to_end_time_s_mean (robust time + compile time as measured),
  compile_cache_requests/_hits; time_to_target_s_mean and tta_speedup;
  and with budget runs 'vs_frontier' ({'time': ..., 'flops': ...}, see
  `aggregate.vs_frontier`) and iso_accuracy_speedup (its time speed-up).

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
      processes share them: callers pass distributed.is_primary()).

  Returns:
    The entries.

  Raises:
    UserError: when `workdir` holds no finished run.
  """
  if not os.path.isdir(workdir):
    raise UserError(f'{workdir} does not exist; run compare.py without '
                    '--report_only first to train the runs')
  found, unfinished, other_seed = runs_lib.find_runs(workdir)
  if writer:  # what the report leaves out, on the console too
    for what, move in other_seed:
      warn(f'{what}: left out of the report; move it aside ({move}) and '
           'run compare.py again to train the folder\'s own seed')
    if unfinished:
      many = len(unfinished) > 1
      warn(f'{len(unfinished)} run{"s are" if many else " is"} unfinished '
           f'(no summary.json yet: {", ".join(unfinished)}): the report '
           'covers the finished ones; run compare.py with '
           f'{"their" if many else "its"} mode and seed, without '
           f'--report_only, to finish {"them" if many else "it"}')
  if not found:
    raise UserError(
        f'{workdir} holds no finished run (expected <mode>/seed_<n>/'
        'summary.json); run compare.py without --report_only first')
  runs_by_mode = runs_lib.load_runs(workdir)
  entries, points = analyze(runs_by_mode, target=target,
                            target_drop=target_drop)
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
  metrics_lib.write_json(json_path, {
      **meta, 'entries': entries,
      'frontier': None if points is None else [
          {k: v for k, v in p.items() if k != 'runs'} for p in points]})
  with open(os.path.join(workdir, 'comparison.md'), 'w') as f:
    f.write(_markdown(meta, entries, points))
  plots_lib.write_plots(workdir, runs_by_mode, entries, points)
  return entries
