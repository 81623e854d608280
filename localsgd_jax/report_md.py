"""comparison.md: the report's tables and notes, rendered from the entries.

The headline table (accuracy with its paired difference from sgd, the
speed-ups), SGD's frontier and each mode's iso-accuracy speed-up against it,
flip TTA apart, the FLOPs and the details, each with its notes. Strings only:
`report.write_report` writes them.
"""
from typing import Any, Dict, List, Optional

from localsgd_jax import aggregate as aggregate_lib
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


# Fewer paired seeds than this: a bootstrap's percentiles show the seeds'
# spread (2 seeds: 3 distinct resamples), not a 95% interval; the cell says so.
MIN_INTERVAL_SEEDS = 5


def _speedup_cell(v: Optional[Dict[str, Any]]) -> str:
  """The iso-accuracy speed-up with its bootstrap interval, and the seeds
  behind it where they are too few for one or some were left out."""
  if v is None:
    return 'n/a'
  (lo, hi), (lo_b, hi_b) = v['speedup_ci95'], v['speedup_ci95_bounds']
  cell = (f'**{_bounded(v["speedup"], v["bound"], ".2f", "x")}** '
          f'[{_bounded(lo, lo_b, ".2f")}, {_bounded(hi, hi_b, ".2f")}]')
  if v['bound']:
    cell += f' ({_OUT_OF_RANGE[v["bound"]]})'
  notes = []
  if len(v['seeds']) < MIN_INTERVAL_SEEDS:
    notes.append(f'n={len(v["seeds"])}: the seeds\' spread, not a 95% '
                 'interval')
  if v['seeds_left_out']:
    notes.append('seed ' + ', '.join(map(str, v['seeds_left_out'])) +
                 ' left out: not every budget')
  return cell + ''.join(f' ({n})' for n in notes)


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
      'minus it. 95% intervals: a paired bootstrap over the seeds with a run '
      'of the mode and of every budget (comparison.json lists any seed left '
      f'out), {resamples} resamples (numpy '
      f'default_rng({aggregate_lib.BOOTSTRAP_SEED})): '
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


def markdown(meta: Dict[str, Any], entries: List[Dict[str, Any]],
              points: Optional[List[Dict[str, Any]]] = None,
              utilization: Optional[List[Dict[str, Any]]] = None) -> str:
  """comparison.md: the headline, SGD's frontier, the details and, where
  the device's peak is known, each kind of step's utilization
  (`aggregate.step_utilization`)."""
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
  if utilization:
    lines += ['', '### Model-FLOP utilization of each kind of step', '',
              utilization_table(utilization), '',
              'Counted FLOPs per step (XLA\'s count of the program as '
              'written, `flops.py`) over the comparison\'s median time per step of '
              'that kind of epoch (the robust time\'s), over the '
              f'{meta["device"]}\'s dense tensor-core peak in the runs\' '
              f'dtype ({utilization[0]["peak_flops"] / 1e12:.0f} TFLOP/s, '
              'NVIDIA\'s datasheet). An epoch in which k changed is a kind '
              'of its own.']
  if meta['unfinished_runs']:
    lines += ['', 'Not counted (no summary.json yet: crashed or still '
              'running; run the comparison again to finish them): '
              + ', '.join(f'`{p}`' for p in meta['unfinished_runs'])]
  lines += ['', '## Plots', '']
  lines += [f'![{name}]({file})' for name, file in PLOTS.items()]
  return '\n'.join(lines) + '\n'


def utilization_table(rows: List[Dict[str, Any]]) -> str:
  return '\n'.join(_table(
      ['kind of epoch', 'epochs', 'GFLOP/step', 'step (ms)', 'TFLOP/s',
       'MFU'],
      [[r['kind'], str(r['epochs']), f'{r["step_flops"] / 1e9:,.1f}',
        f'{1e3 * r["step_time_s"]:.2f}', f'{r["flops_per_s"] / 1e12:.0f}',
        f'{100 * r["mfu"]:.1f}%'] for r in rows]))


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
