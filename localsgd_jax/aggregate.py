"""Per-mode statistics of a comparison's loaded runs (see `runs`).

Accuracy over seeds (mean, std, paired difference from sgd with its 95%
interval), measured and robust times and their speedups over sgd,
time-to-accuracy, and, with SGD trained at several budgets (`sgd@B` runs),
SGD's accuracy-cost frontier and each mode's iso-accuracy speed-up against
it (`frontier`, `vs_frontier`), from the run measures of `run_stats`.
Numbers only: `report` renders them.
"""
import collections
import math
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from localsgd_jax import hardware
from localsgd_jax import run_stats as stats
from localsgd_jax import runs as runs_lib
from localsgd_jax.modes import BASELINE, MODES, SAME_TIME
from localsgd_jax.modes import parse_budget_mode

# The costs a frontier is drawn against: robust training time (the steps'
# median time per kind of epoch, eval and compile excluded) and XLA FLOPs.
COSTS = ('time', 'flops')
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


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
    `runs_by_mode`, the `sgd@B` budget runs left out; `frontier(...)`'s
    points, None without budget runs (each entry's 'vs_frontier' is then
    None too). An entry holds: mode, seeds, num_runs,
    eval_accuracy_mean/_std, best_eval_accuracy_mean,
    accuracy_diff_vs_sgd_mean/_std (paired by seed; None without sgd runs),
    total_time_s_mean, speedup_vs_sgd, train_time_s_mean,
    train_speedup_vs_sgd, robust_time_s_mean, robust_speedup_vs_sgd (from
    the median epoch time of each kind of epoch), local_flop_fraction_mean,
    peak_temp_bytes and mean_transition (None where the runs did not record
    the field); robust_train_time_s_mean (the frontier's cost), flops_mean,
    end_to_end_time_s_mean (robust time + compile time as measured),
    compile_cache_requests/_hits; time_to_target_s_mean and tta_speedup;
    and with budget runs 'vs_frontier' ({'time': ..., 'flops': ...}, see
    `vs_frontier`) and iso_accuracy_speedup (its time speed-up).
  """
  base = runs_by_mode.get(BASELINE, {})
  timing = stats.Timing(runs_by_mode)
  targets = stats.Targets(base, target, target_drop)
  tta_base = None
  if targets.default is not None and base:
    times = [timing.to_target(r, targets(s)) for s, r in base.items()]
    tta_base = stats.mean(times) if None not in times else None
  base_means = {
      'total': stats.mean([r['summary']['total_time_s']
                           for r in base.values()]),
      'train': stats.mean([stats.train_time(r) for r in base.values()]),
      'robust': stats.mean([timing.robust(r) for r in base.values()]),
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
  accs = [stats.final_acc(r) for r in runs]
  times = [r['summary']['total_time_s'] for r in runs]
  train_times = [stats.train_time(r) for r in runs]
  robust_times = [timing.robust(r) for r in runs]
  paired = stats.paired_difference(by_seed, base)
  temp = stats.field(runs, 'step_temp_bytes')
  return {
      'mode': mode,
      'overrides': MODES.get(mode),
      'seeds': list(by_seed),
      'num_runs': len(runs),
      'num_epochs': max(r['summary'].get('num_epochs', len(r['rows']))
                        for r in runs),
      'num_units': runs[0]['summary'].get('num_units'),
      'eval_accuracy_mean': stats.mean(accs),
      'eval_accuracy_std': stats.std(accs),
      'eval_accuracy_per_seed': dict(zip(map(str, by_seed), accs)),
      'best_eval_accuracy_mean': stats.mean(
          [r['summary']['best_eval_accuracy'] for r in runs]),
      'accuracy_diff_vs_sgd_mean': paired['mean'] if base else None,
      'accuracy_diff_vs_sgd_std': paired['std'] if base else None,
      'paired_seeds': paired['seeds'] if base else [],
      'total_time_s_mean': stats.mean(times),
      'total_time_s_std': stats.std(times),
      'speedup_vs_sgd': stats.ratio(base_means['total'], stats.mean(times)),
      'train_time_s_mean': stats.mean(train_times),
      'train_speedup_vs_sgd': stats.ratio(base_means['train'],
                                          stats.mean(train_times)),
      'robust_time_s_mean': stats.mean(robust_times),
      'robust_speedup_vs_sgd': stats.ratio(base_means['robust'],
                                           stats.mean(robust_times)),
      'compile_time_s_mean': stats.mean(
          [r['summary'].get('compile_time_s', 0.0) for r in runs]),
      **_cache_fields(runs),
      'end_to_end_time_s_mean': stats.mean([timing.end_to_end(r)
                                            for r in runs]),
      'robust_train_time_s_mean': stats.mean([timing.train(r) for r in runs]),
      'robust_train_time_s_std': stats.std([timing.train(r) for r in runs]),
      'flops_mean': stats.flops_mean(runs),
      'train_epochs': max(runs_lib.run_epochs(r) for r in runs),
      'local_flop_fraction_mean': stats.mean(
          stats.field(runs, 'local_flop_fraction')),
      'peak_temp_bytes': max(temp) if temp else None,
      'mean_transition': stats.mean(stats.field(runs, 'transition')),
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
  avg = stats.mean(reached) if all_reached else None
  return {
      'time_to_target_s': times,
      'time_to_target_s_mean': avg,
      'time_to_target_s_std': stats.std(reached) if all_reached else None,
      'target_reached': f'{len(reached)}/{len(times)}',
      # Only when every seed got there: a mean over the lucky seeds would
      # flatter the mode.
      'tta_speedup': stats.ratio(tta_base, avg),
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


# ------------------------------------------------- model-FLOP utilization


def _kind_ks(kind: tuple) -> List[int]:
  """The k's of a kind of epoch (`runs.epoch_kind`), in the epoch's order."""
  return [entry[1] for entry in kind if isinstance(entry, (tuple, list))]


def kind_label(kind: tuple) -> str:
  """A kind of epoch (`runs.epoch_kind`) in words: its k's (several where
  k changed within the epoch) and, with local units, the rule and how
  often the Hebbian step ran."""
  ks = _kind_ks(kind)
  label = 'k=' + '->'.join(str(k) for k in ks)
  if all(k == 0 for k in ks):
    return label + ' (SGD)'
  rule, every = kind[len(ks)], kind[len(ks) + 1]
  return label + f', {rule}' + (f', Hebbian every {every} steps'
                                if rule != 'frozen' and every and every > 1
                                else '')


def step_utilization(runs_by_mode, device_kind: str) -> List[Dict[str, Any]]:
  """Model-FLOP utilization of each kind of epoch the runs trained.

  Per kind (`runs.epoch_kind`): its counted FLOPs per step (the rows'
  step_flops, XLA's count of the program as written, `flops.py`), the
  comparison's median time per step of that kind (the one the robust
  time uses) and their ratio to the device's dense peak in the runs'
  dtype (`hardware.peak_flops`). [] where the peak is not known (CPUs,
  other cards) or the runs do not share one dtype.
  """
  runs = [run for by_seed in runs_by_mode.values() for run in by_seed.values()]
  dtypes = {run['summary'].get('config', {}).get('dtype') for run in runs}
  peak = (hardware.peak_flops(device_kind or '', dtypes.pop())
          if len(dtypes) == 1 else None)
  if not peak:
    return []
  times = runs_lib.median_epoch_times(runs_by_mode, 'epoch_time_s')
  flops, epochs = collections.defaultdict(list), collections.Counter()
  for run in runs:
    for row in run['rows']:
      kind = runs_lib.epoch_kind(run, row)
      epochs[kind] += 1
      if row.get('step_flops'):
        flops[kind].append(row['step_flops'])
  out = []
  for kind in sorted(flops, key=lambda kind: (len(_kind_ks(kind)),
                                              _kind_ks(kind),
                                              kind_label(kind))):
    step_flops, step_s = float(np.median(flops[kind])), times[kind]
    out.append({'kind': kind_label(kind), 'epochs': epochs[kind],
                'step_flops': step_flops, 'step_time_s': step_s,
                'flops_per_s': step_flops / step_s,
                'mfu': step_flops / step_s / peak, 'peak_flops': peak})
  return out


# ------------------------------------------------------ SGD's budget frontier


def _cost(run, timing, cost: str) -> float:
  return timing.train(run) if cost == 'time' else runs_lib.run_flops(run)


def frontier(runs_by_mode, timing: Optional[stats.Timing] = None
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
  timing = timing or stats.Timing(runs_by_mode)
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
    accs = [stats.final_acc(r) for r in runs]
    points.append({
        'label': '+'.join(point['labels']), 'epochs': epochs,
        'runs': point['runs'], 'seeds': sorted(point['runs']),
        'accuracy_mean': stats.mean(accs), 'accuracy_std': stats.std(accs),
        'time_s_mean': stats.mean([timing.train(r) for r in runs]),
        'flops_mean': stats.flops_mean(runs),
        'compile_time_s_mean': stats.mean(
            [r['summary'].get('compile_time_s', 0.0) for r in runs]),
        'end_to_end_time_s_mean': stats.mean([timing.end_to_end(r)
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
  Their 95% intervals ('*stats.ci95') come from a paired bootstrap over seeds:
  `resamples` draws of the seeds with replacement (RNG seed `seed`), the
  same draw for the mode and every budget, the frontier and the mode's
  means recomputed from each. Paired: only the seeds with a run of the
  mode and of every budget count ('seeds'; the others are
  'seeds_left_out', e.g. a seed whose runs a time limit cut short), unless
  no seed has them all ('paired' False: every seed, each mean over the
  seeds it has). An interval end beyond the frontier's range
  is a bound ('*_ci95_bounds'); accuracy differences exist only for
  resamples whose cost lies within the budgets' costs
  ('accuracy_diff_resamples'). None when a cost was not recorded.
  """
  runs = list(by_seed.values())
  if cost == 'flops' and (stats.flops_mean(runs) is None or any(
      p['flops_mean'] is None for p in points)):
    return None
  frontier_data = [
      ({s: _cost(r, timing, cost) for s, r in p['runs'].items()},
       {s: stats.final_acc(r) for s, r in p['runs'].items()}) for p in points]
  mode_data = ({s: _cost(r, timing, cost) for s, r in by_seed.items()},
               {s: stats.final_acc(r) for s, r in by_seed.items()})
  every = set(by_seed).union(*(p['runs'] for p in points))
  seeds = sorted(set(by_seed).intersection(*(p['runs'] for p in points)))
  paired = bool(seeds)
  seeds = seeds or sorted(every)
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
  out['seeds_left_out'] = sorted(every - set(seeds))
  out['paired'] = paired
  return out


def furthest_above_frontier(entries: List[Dict[str, Any]],
                            modes: Sequence[str]) -> Optional[Dict[str, Any]]:
  """Of `modes` (entries of `analyze`), the one whose mean accuracy lies
  furthest above SGD's frontier at its own cost: robust training time, or
  FLOPs where no mode's time falls within the budgets' times (a machine too
  noisy for them). A mode outside the budgets' costs is not ranked. None:
  none is.
  """
  for cost in ('time', 'flops'):
    scored = {}
    for entry in entries:
      v = (entry.get('vs_frontier') or {}).get(cost)
      if entry['mode'] in modes and v and v.get('accuracy_diff') is not None:
        scored[entry['mode']] = v
    if scored:
      mode = max(scored, key=lambda m: scored[m]['accuracy_diff'])
      return {'mode': mode, 'cost': cost,
              'accuracy_diff': scored[mode]['accuracy_diff'],
              'iso_accuracy_speedup': scored[mode]['speedup'],
              'ranked': sorted(((v['accuracy_diff'], m)
                                for m, v in scored.items()), reverse=True)}
  return None
