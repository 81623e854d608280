"""Measures of a comparison's runs that every statistic is built from.

Means, spreads and intervals over seeds, a run's final accuracy and FLOPs,
and its robust time (`Timing`: every epoch at the comparison's median step
time of its kind, so that a shared machine's slow minutes do not count).
Numbers only, no JAX.
"""
import math
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from localsgd_jax import runs as runs_lib


# Two-sided 95% quantiles of Student's t by degrees of freedom (n - 1).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447,
        7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228, 15: 2.131, 20: 2.086,
        30: 2.042}


def mean(values: Sequence[float]) -> Optional[float]:
  return float(np.mean(values)) if len(values) else None


def std(values: Sequence[float]) -> Optional[float]:
  # Sample std over seeds; a single run has no spread to estimate.
  if len(values) < 2:
    return None
  return float(np.std(values, ddof=1))


def field(runs, field: str) -> List[float]:
  """`field` pooled over every epoch of every run, where it is present."""
  return [r[field] for run in runs for r in run['rows']
          if r.get(field) is not None]


def ratio(num: Optional[float], den: Optional[float]) -> Optional[float]:
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


def ci95(values: Sequence[float]) -> Optional[float]:
  """Half-width of the 95% confidence interval of the mean (Student's t)."""
  n = len(values)
  if n < 2:
    return None
  dof = max(d for d in _T95 if d <= n - 1)
  t = _T95[dof] if n - 1 <= 30 else 1.96
  return t * float(np.std(values, ddof=1)) / math.sqrt(n)


def paired_difference(by_seed: Dict[int, Dict[str, Any]],
                      reference: Dict[int, Dict[str, Any]],
                      value: Optional[Callable[[Dict[str, Any]], float]] = None
                      ) -> Dict[str, Any]:
  """`value` (default: the final accuracy) of `by_seed`'s runs minus
  `reference`'s, paired by seed (the same seed: the same init and data
  order, so the per-seed difference cancels most of the seed-to-seed
  spread): mean, std, 95% half-width."""
  value = value or final_acc
  seeds = sorted(set(by_seed) & set(reference))
  diffs = [value(by_seed[s]) - value(reference[s]) for s in seeds]
  return {'seeds': seeds, 'diffs': diffs, 'mean': mean(diffs),
          'std': std(diffs), 'ci95': ci95(diffs)}


def final_acc(run):
  return run['summary']['final_eval_accuracy']


def train_time(run):
  return sum(r.get('epoch_time_s', 0.0) for r in run['rows'])


class Timing:
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


class Targets:
  """The time-to-accuracy target of each seed: `target` for every seed
  when given; else, paired like Δ, the same seed's sgd final accuracy minus
  `drop` (a seed whose sgd run ends low is not held to the other seeds'
  level, which its own sgd run might never reach), and for a seed without
  an sgd run their mean (`default`)."""

  def __init__(self, base, target: Optional[float], drop: float):
    self.by_seed = {} if target is not None else {
        seed: final_acc(run) - drop for seed, run in base.items()}
    self.default = (target if target is not None
                    else mean(list(self.by_seed.values())))

  def __call__(self, seed: int) -> Optional[float]:
    return self.by_seed.get(seed, self.default)


def flops_mean(runs) -> Optional[float]:
  flops = [runs_lib.run_flops(r) for r in runs]
  return mean(flops) if all(f > 0 for f in flops) else None
