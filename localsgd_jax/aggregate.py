"""Per-mode statistics of a comparison's loaded runs (see `runs`).

Accuracy over seeds (mean, std, paired difference from sgd with its 95%
interval), measured and robust times and their speedups over sgd,
time-to-accuracy, and, with SGD trained at several budgets (`sgd@B` runs),
SGD's accuracy-cost frontier and each mode's iso-accuracy speed-up against
it (`frontier`, `vs_frontier`). Numbers only: `report` renders them.
"""
import math
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from localsgd_jax import runs as runs_lib
from localsgd_jax.modes import BASELINE, MODES, SAME_TIME
from localsgd_jax.modes import parse_budget_mode

# The costs a frontier is drawn against: robust training time (the steps'
# median time per kind of epoch, eval and compile excluded) and XLA FLOPs.
COSTS = ('time', 'flops')
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0

# Two-sided 95% quantiles of Student's t by degrees of freedom (n - 1).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447,
        7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228, 15: 2.131, 20: 2.086,
        30: 2.042}


def mean(values: Sequence[float]) -> Optional[float]:
  return float(np.mean(values)) if len(values) else None


def _std(values: Sequence[float]) -> Optional[float]:
  # Sample std over seeds; a single run has no spread to estimate.
  if len(values) < 2:
    return None
  return float(np.std(values, ddof=1))


def _field(runs, field: str) -> List[float]:
  """`field` pooled over every epoch of every run, where it is present."""
  return [r[field] for run in runs for r in run['rows']
          if r.get(field) is not None]


def _ratio(num: Optional[float], den: Optional[float]) -> Optional[float]:
  if num is None or den is None or den <= 0:
    return None
  return num / den


def _time_to_target(run: Dict[str, Any], median_train: Dict[tuple, float],
                    target: float) -> Optional[float]:
  """Robust training time until the run's eval accuracy first reaches
  `target`, or None if it never does."""
  elapsed = 0.0
  for r, steps in zip(run['rows'], runs_lib.row_steps(run)):
    elapsed += median_train[runs_lib.epoch_kind(run, r)] * steps
    if r.get('eval_accuracy') is not None and r['eval_accuracy'] >= target:
      return elapsed
  return None


def _ci95(values: Sequence[float]) -> Optional[float]:
  """Half-width of the 95% confidence interval of the mean (Student's t)."""
  n = len(values)
  if n < 2:
    return None
  dof = max(d for d in _T95 if d <= n - 1)
  t = _T95[dof] if n - 1 <= 30 else 1.96
  return t * float(np.std(values, ddof=1)) / math.sqrt(n)


def paired_difference(by_seed: Dict[int, Dict[str, Any]],
                      reference: Dict[int, Dict[str, Any]]) -> Dict[str, Any]:
  """Final accuracy of `by_seed`'s runs minus `reference`'s, paired by seed
  (the same seed: the same init and data order, so the per-seed difference
  cancels most of the seed-to-seed spread): mean, std, 95% half-width."""
  seeds = sorted(set(by_seed) & set(reference))
  diffs = [_final_acc(by_seed[s]) - _final_acc(reference[s]) for s in seeds]
  return {'seeds': seeds, 'diffs': diffs, 'mean': mean(diffs),
          'std': _std(diffs), 'ci95': _ci95(diffs)}


def _final_acc(run):
  return run['summary']['final_eval_accuracy']


def _train_time(run):
  return sum(r.get('epoch_time_s', 0.0) for r in run['rows'])


class _Timing:
  """The comparison-wide medians every mode's times are rebuilt from.

  A shared machine can slow a whole run down for minutes (2.5x has been
  seen on a 2-core VM). The robust time gives every epoch the median
  training time per step of all the comparison's epochs of its kind, times
  its steps (a partial last epoch pools with whole ones), and every
  evaluation the median evaluation time. Compile time is left out: with the
  persistent compilation cache the first run of a comparison pays for the
  programs the others load (`end_to_end` adds it back as measured).
  """

  def __init__(self, runs_by_mode):
    self.median_train = runs_lib.median_epoch_times(runs_by_mode,
                                                    'epoch_time_s')
    evals = [r.get('eval_time_s', 0.0) for by_seed in runs_by_mode.values()
             for run in by_seed.values() for r in run['rows']
             if r.get('eval_accuracy') is not None]
    self.median_eval = float(np.median(evals)) if evals else 0.0

  def train(self, run) -> float:
    """Robust training time: the steps only (the frontier's cost)."""
    return runs_lib.rebuilt_time(run, self.median_train)

  def robust(self, run) -> float:
    """Robust training + evaluation time."""
    evaluated = sum(r.get('eval_accuracy') is not None for r in run['rows'])
    return self.train(run) + self.median_eval * evaluated

  def end_to_end(self, run) -> float:
    """Robust time plus the run's compile time as measured."""
    return self.robust(run) + run['summary'].get('compile_time_s', 0.0)

  def to_target(self, run, target) -> Optional[float]:
    return _time_to_target(run, self.median_train, target)


class _Targets:
  """The time-to-accuracy target of each seed: `target` for every seed
  when given; else, paired like Δ, the same seed's sgd final accuracy minus
  `drop` (a seed whose sgd run ends low is not held to the other seeds'
  level, which its own sgd run might never reach), and for a seed without
  an sgd run their mean (`default`)."""

  def __init__(self, base, target: Optional[float], drop: float):
    self.by_seed = {} if target is not None else {
        seed: _final_acc(run) - drop for seed, run in base.items()}
    self.default = (target if target is not None
                    else mean(list(self.by_seed.values())))

  def __call__(self, seed: int) -> Optional[float]:
    return self.by_seed.get(seed, self.default)


def analyze(runs_by_mode: Dict[str, Dict[int, Dict[str, Any]]],
            target: Optional[float] = None, target_drop: float = 0.005,
            resamples: int = BOOTSTRAP_RESAMPLES):
  """Per-mode statistics and SGD's frontier from loaded runs.

  Args:
    runs_by_mode: {mode: {seed: {'summary': summary.json, 'rows':
      metrics.jsonl rows}}}.
    target: the accuracy for time-to-accuracy; None: per seed, that
      seed's sgd final accuracy minus `target_drop`.
    target_drop: see `target`.

    resamples: bootstrap resamples of the frontier's intervals.

  Returns:
    (entries, frontier): one entry per mode, in the order of
    `runs_by_mode`, the `sgd@B` budget runs left out (see
    `report.write_report`); `frontier(...)`'s points, None without budget
    runs (each entry's 'vs_frontier' is then None too).
  """
  base = runs_by_mode.get(BASELINE, {})
  timing = _Timing(runs_by_mode)
  targets = _Targets(base, target, target_drop)
  tta_base = None
  if targets.default is not None and base:
    times = [timing.to_target(r, targets(s)) for s, r in base.items()]
    tta_base = mean(times) if None not in times else None
  base_means = {
      'total': mean([r['summary']['total_time_s'] for r in base.values()]),
      'train': mean([_train_time(r) for r in base.values()]),
      'robust': mean([timing.robust(r) for r in base.values()]),
  }
  points = frontier(runs_by_mode, timing)
  entries = []
  for mode, by_seed in runs_by_mode.items():
    if parse_budget_mode(mode) is not None:
      continue
    e = _entry(mode, by_seed, base, base_means, timing, targets, tta_base)
    e['vs_frontier'] = (None if points is None else {
        cost: vs_frontier(points, by_seed, timing, cost, resamples)
        for cost in COSTS})
    e['iso_accuracy_speedup'] = (None if points is None
                                 else e['vs_frontier']['time']['speedup'])
    entries.append(e)
  return entries, points


def _entry(mode, by_seed, base, base_means, timing, targets, tta_base
           ) -> Dict[str, Any]:
  """One mode's entry; `base` holds sgd's runs by seed."""
  runs = list(by_seed.values())
  accs = [_final_acc(r) for r in runs]
  times = [r['summary']['total_time_s'] for r in runs]
  train_times = [_train_time(r) for r in runs]
  robust_times = [timing.robust(r) for r in runs]
  paired = paired_difference(by_seed, base)
  temp = _field(runs, 'step_temp_bytes')
  return {
      'mode': mode,
      'overrides': MODES.get(mode),
      'seeds': list(by_seed),
      'num_runs': len(runs),
      'num_epochs': max(r['summary'].get('num_epochs', len(r['rows']))
                        for r in runs),
      'num_units': runs[0]['summary'].get('num_units'),
      'eval_accuracy_mean': mean(accs),
      'eval_accuracy_std': _std(accs),
      'eval_accuracy_per_seed': dict(zip(map(str, by_seed), accs)),
      'best_eval_accuracy_mean': mean(
          [r['summary']['best_eval_accuracy'] for r in runs]),
      'accuracy_diff_vs_sgd_mean': paired['mean'] if base else None,
      'accuracy_diff_vs_sgd_std': paired['std'] if base else None,
      'paired_seeds': paired['seeds'] if base else [],
      'total_time_s_mean': mean(times),
      'total_time_s_std': _std(times),
      'speedup_vs_sgd': _ratio(base_means['total'], mean(times)),
      'train_time_s_mean': mean(train_times),
      'train_speedup_vs_sgd': _ratio(base_means['train'], mean(train_times)),
      'robust_time_s_mean': mean(robust_times),
      'robust_speedup_vs_sgd': _ratio(base_means['robust'],
                                      mean(robust_times)),
      'compile_time_s_mean': mean(
          [r['summary'].get('compile_time_s', 0.0) for r in runs]),
      **_cache_fields(runs),
      'end_to_end_time_s_mean': mean([timing.end_to_end(r) for r in runs]),
      'robust_train_time_s_mean': mean([timing.train(r) for r in runs]),
      'robust_train_time_s_std': _std([timing.train(r) for r in runs]),
      'flops_mean': _flops_mean(runs),
      'train_epochs': max(runs_lib.run_epochs(r) for r in runs),
      'local_flop_fraction_mean': mean(_field(runs, 'local_flop_fraction')),
      'peak_temp_bytes': max(temp) if temp else None,
      'mean_transition': mean(_field(runs, 'transition')),
      'target_accuracy': targets.default,
      'target_accuracy_per_seed': {str(s): targets(s) for s in by_seed},
      **_tta_fields(by_seed, timing, targets, tta_base),
      'accuracy_diff_vs_sgd_ci95': paired['ci95'] if base else None,
  }


def _tta_fields(by_seed, timing, targets, tta_base) -> Dict[str, Any]:
  """Time-to-accuracy of a mode's runs and its iso-accuracy speedup."""
  if targets.default is None:
    return {'time_to_target_s': None, 'time_to_target_s_mean': None,
            'time_to_target_s_std': None, 'target_reached': None,
            'tta_speedup': None}
  times = [timing.to_target(r, targets(s)) for s, r in by_seed.items()]
  reached = [t for t in times if t is not None]
  all_reached = len(reached) == len(times)
  avg = mean(reached) if all_reached else None
  return {
      'time_to_target_s': times,
      'time_to_target_s_mean': avg,
      'time_to_target_s_std': _std(reached) if all_reached else None,
      'target_reached': f'{len(reached)}/{len(times)}',
      # Only when every seed got there: a mean over the lucky seeds would
      # flatter the mode.
      'tta_speedup': _ratio(tta_base, avg),
  }


def _cache_fields(runs) -> Dict[str, Any]:
  """Programs compiled through the persistent compilation cache and those
  loaded from it, summed over the runs; None where a run did not record
  them (older versions)."""
  out = {}
  for key in ('compile_cache_requests', 'compile_cache_hits'):
    values = [r['summary'].get(key) for r in runs]
    out[key] = None if None in values else int(sum(values))
  return out


def _flops_mean(runs) -> Optional[float]:
  flops = [runs_lib.run_flops(r) for r in runs]
  return mean(flops) if all(f > 0 for f in flops) else None


# ------------------------------------------------------ SGD's budget frontier


def _cost(run, timing, cost: str) -> float:
  return timing.train(run) if cost == 'time' else runs_lib.run_flops(run)


def frontier(runs_by_mode, timing: Optional['_Timing'] = None
             ) -> Optional[List[Dict[str, Any]]]:
  """SGD's points of cost and accuracy, one per budget, by cost; None
  without `sgd@B` runs.

  Every plain-SGD run of the comparison is a point at its length: the
  `sgd@B` runs, `sgd` (config.num_epochs) and `sgd_same_time` (the same
  schedule shape, compressed). Runs of one length and seed count once (the
  first of sgd@B, sgd, sgd_same_time). Each point holds 'runs' ({seed:
  run}, left out of comparison.json), its label, epochs, seeds, accuracy
  mean and std over seeds, mean robust training time ('time_s_mean'),
  FLOPs ('flops_mean'), compile time and end-to-end time apart.
  """
  budget_modes = sorted((m for m in runs_by_mode
                         if parse_budget_mode(m) is not None),
                        key=parse_budget_mode)
  if not budget_modes:
    return None
  timing = timing or _Timing(runs_by_mode)
  by_length: Dict[float, Dict[str, Any]] = {}
  for mode in budget_modes + [BASELINE, SAME_TIME]:
    for seed, run in runs_by_mode.get(mode, {}).items():
      point = by_length.setdefault(round(runs_lib.run_epochs(run), 6),
                                   {'labels': [], 'runs': {}})
      if seed not in point['runs']:
        point['runs'][seed] = run
        if mode not in point['labels']:
          point['labels'].append(mode)
  points = []
  for epochs, point in by_length.items():
    runs = list(point['runs'].values())
    accs = [_final_acc(r) for r in runs]
    points.append({
        'label': '+'.join(point['labels']), 'epochs': epochs,
        'runs': point['runs'], 'seeds': sorted(point['runs']),
        'accuracy_mean': mean(accs), 'accuracy_std': _std(accs),
        'time_s_mean': mean([timing.train(r) for r in runs]),
        'flops_mean': _flops_mean(runs),
        'compile_time_s_mean': mean(
            [r['summary'].get('compile_time_s', 0.0) for r in runs]),
        'end_to_end_time_s_mean': mean([timing.end_to_end(r)
                                        for r in runs]),
    })
  points.sort(key=lambda p: (p['time_s_mean'], p['epochs']))
  costs = [p['time_s_mean'] for p in points]
  monotone = monotone_frontier(costs, [p['accuracy_mean'] for p in points])[1]
  for p, acc in zip(points, monotone):
    p['monotone_accuracy'] = acc
  return points


def monotone_frontier(costs: Sequence[float], accs: Sequence[float]):
  """(costs ascending, the cumulative maximum of their accuracies): a
  budget never does worse than a cheaper one could (a dominated point is
  lifted to the best cheaper one, which favours SGD)."""
  order = np.argsort(np.asarray(costs, dtype=float), kind='stable')
  c = np.asarray(costs, dtype=float)[order]
  a = np.maximum.accumulate(np.asarray(accs, dtype=float)[order])
  return c, a


def frontier_cost(costs, accs, accuracy: float):
  """SGD's cost to reach `accuracy` on its monotone frontier, linearly
  interpolated between budgets, never extrapolated: (cost, bound) with
  bound None inside the range, '>' (`accuracy` above the best budget's:
  more than the largest cost, which is returned) or '<' (below the
  cheapest budget's: less than the smallest cost, returned)."""
  c, a = monotone_frontier(costs, accs)
  if accuracy > a[-1]:
    return float(c[-1]), '>'
  if accuracy < a[0]:
    return float(c[0]), '<'
  i = int(np.searchsorted(a, accuracy, side='left'))  # first a[i] >= acc
  if i == 0 or a[i] == accuracy:
    return float(c[i]), None
  t = (accuracy - a[i - 1]) / (a[i] - a[i - 1])
  return float(c[i - 1] + t * (c[i] - c[i - 1])), None


def frontier_accuracy(costs, accs, cost: float):
  """SGD's accuracy at `cost` on its monotone frontier (linear between
  budgets): (accuracy, bound), accuracy None outside the budgets' costs
  (bound '<' below the cheapest, '>' above the largest)."""
  c, a = monotone_frontier(costs, accs)
  if cost < c[0]:
    return None, '<'
  if cost > c[-1]:
    return None, '>'
  return float(np.interp(cost, c, a)), None


def _weighted_mean(values: Dict[int, float], weights: Dict[int, int]
                   ) -> Optional[float]:
  total = sum(weights.get(s, 0) for s in values)
  if not total:
    return None
  return sum(v * weights.get(s, 0) for s, v in values.items()) / total


def _estimate(frontier_data, mode_data, weights) -> Dict[str, Any]:
  """The iso-accuracy numbers for one weighting of the seeds."""
  pts = [(_weighted_mean(c, weights), _weighted_mean(a, weights))
         for c, a in frontier_data]
  pts = [(c, a) for c, a in pts if c is not None]
  acc = _weighted_mean(mode_data[1], weights)
  cost = _weighted_mean(mode_data[0], weights)
  if not pts or acc is None:
    return None
  costs, accs = [p[0] for p in pts], [p[1] for p in pts]
  sgd_cost, bound = frontier_cost(costs, accs, acc)
  sgd_acc, acc_bound = frontier_accuracy(costs, accs, cost)
  return {'sgd_cost': sgd_cost, 'bound': bound, 'speedup': sgd_cost / cost,
          'sgd_accuracy': sgd_acc, 'accuracy_bound': acc_bound,
          'accuracy_diff': None if sgd_acc is None else acc - sgd_acc,
          'accuracy': acc, 'cost': cost}


def _interval(values: List[float], bounds: List[Optional[str]]):
  """The 2.5 and 97.5 percentiles of bootstrap values (order statistics),
  each with its bound: a resample past the frontier's range sorts as -inf
  ('<') or +inf ('>'), and an end landing there is that bound."""
  keys = [(-math.inf if b == '<' else math.inf if b == '>' else v, v, b)
          for v, b in zip(values, bounds)]
  keys.sort(key=lambda k: k[0])
  n = len(keys)
  lo, hi = keys[int(0.025 * n)], keys[max(0, math.ceil(0.975 * n) - 1)]
  return [lo[1], hi[1]], [lo[2], hi[2]]


def vs_frontier(points: List[Dict[str, Any]], by_seed, timing, cost: str,
                resamples: int = BOOTSTRAP_RESAMPLES,
                seed: int = BOOTSTRAP_SEED) -> Optional[Dict[str, Any]]:
  """A mode's runs against SGD's frontier in `cost` ('time' or 'flops').

  'speedup' is the iso-accuracy speed-up: the cost SGD's frontier needs for
  the mode's mean accuracy ('sgd_cost', `frontier_cost`, with its 'bound')
  over the mode's mean cost; 'sgd_accuracy' is the frontier's accuracy at
  the mode's cost and 'accuracy_diff' the mode's mean accuracy minus it.
  Their 95% intervals ('*_ci95') come from a paired bootstrap over seeds:
  `resamples` draws of the seeds with replacement (RNG seed `seed`), the
  same draw for the mode and every budget, the frontier and the mode's
  means recomputed from each. An interval end beyond the frontier's range
  is a bound ('*_ci95_bounds'); accuracy differences exist only for
  resamples whose cost lies within the budgets' costs
  ('accuracy_diff_resamples'). None when a cost was not recorded.
  """
  runs = list(by_seed.values())
  if cost == 'flops' and (_flops_mean(runs) is None or any(
      p['flops_mean'] is None for p in points)):
    return None
  frontier_data = [
      ({s: _cost(r, timing, cost) for s, r in p['runs'].items()},
       {s: _final_acc(r) for s, r in p['runs'].items()}) for p in points]
  mode_data = ({s: _cost(r, timing, cost) for s, r in by_seed.items()},
               {s: _final_acc(r) for s, r in by_seed.items()})
  seeds = sorted(set(by_seed).union(*(p['runs'] for p in points)))
  out = _estimate(frontier_data, mode_data, {s: 1 for s in seeds})
  if out is None:
    return None
  rng = np.random.default_rng(seed)
  boots = []
  for _ in range(resamples):
    draw = rng.choice(len(seeds), size=len(seeds), replace=True)
    weights = {}
    for i in draw:
      weights[seeds[i]] = weights.get(seeds[i], 0) + 1
    b = _estimate(frontier_data, mode_data, weights)
    if b is not None:
      boots.append(b)
  out['speedup_ci95'], out['speedup_ci95_bounds'] = _interval(
      [b['speedup'] for b in boots], [b['bound'] for b in boots])
  diffs = [b['accuracy_diff'] for b in boots if b['accuracy_diff'] is not None]
  out['accuracy_diff_ci95'] = (
      _interval(diffs, [None] * len(diffs))[0] if diffs else None)
  out['accuracy_diff_resamples'] = f'{len(diffs)}/{len(boots)}'
  out['resamples'] = len(boots)
  out['seeds'] = seeds
  return out
