"""Per-mode statistics of a comparison's loaded runs (see `runs`).

Accuracy over seeds (mean, std, paired difference from sgd with its 95%
interval), measured and robust times and their speedups over sgd, and
time-to-accuracy with the iso-accuracy speedup. Numbers only: `report`
renders them.
"""
import math
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from localsgd_jax import runs as runs_lib
from localsgd_jax.modes import BASELINE, MODES

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
  for r in run['rows']:
    elapsed += median_train[runs_lib.epoch_kind(run, r)]
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
  training + eval time of all the comparison's epochs of its kind. Compile
  time is left out: with the persistent compilation cache the first run of
  a comparison pays for the programs the others load.
  """

  def __init__(self, runs_by_mode):
    self.median = runs_lib.median_epoch_times(
        runs_by_mode, ('epoch_time_s', 'eval_time_s'))
    self.median_train = runs_lib.median_epoch_times(runs_by_mode,
                                                    'epoch_time_s')

  def robust(self, run) -> float:
    return sum(self.median[runs_lib.epoch_kind(run, r)] for r in run['rows'])

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


def aggregate(runs_by_mode: Dict[str, Dict[int, Dict[str, Any]]],
              target: Optional[float] = None, target_drop: float = 0.005
              ) -> List[Dict[str, Any]]:
  """Per-mode statistics from loaded runs.

  Args:
    runs_by_mode: {mode: {seed: {'summary': summary.json, 'rows':
      metrics.jsonl rows}}}.
    target: the accuracy for time-to-accuracy; None: per seed, that
      seed's sgd final accuracy minus `target_drop`.
    target_drop: see `target`.

  Returns:
    One entry per mode, in the order of `runs_by_mode` (see
    `report.write_report`).
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
  return [_entry(mode, by_seed, base, base_means, timing, targets, tta_base)
          for mode, by_seed in runs_by_mode.items()]


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
            'iso_accuracy_speedup': None}
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
      'iso_accuracy_speedup': _ratio(tta_base, avg),
  }
