"""The comparison harness: every mode with every seed, then the report.

`run_comparison` trains each mode (LoCal+SGD and its peers, see `modes`)
and SGD at each budget of `sgd_budgets` (its frontier, `sgd@B`) with the
same seeds under one config, each run in `workdir/<mode>/seed_<s>`,
skipping runs finished under this config and refusing ones trained under
another, sets `sgd_same_time`'s length (in steps: fractional epochs) from
the finished runs' costs, and then has `report.write_report` write the
table and plots. This module
trains; `report` only reads.
"""
import os
from typing import Any, Dict, List, Optional, Sequence

import jax
import ml_collections

from localsgd_jax import config_validation
from localsgd_jax import distributed
from localsgd_jax import metrics as metrics_lib
from localsgd_jax import modes as modes_lib
from localsgd_jax import report
from localsgd_jax import run_stats
from localsgd_jax import runs as runs_lib
from localsgd_jax import train_lib
from localsgd_jax import workdir as workdir_lib
from localsgd_jax.errors import UserError
from localsgd_jax.modes import BASELINE, MODES, SAME_TIME
from localsgd_jax.modes import budget_mode, mode_config, parse_budgets
from localsgd_jax.modes import parse_modes
from localsgd_jax.runs import run_dir

MATCH_COSTS = ('time', 'flops')


def _check_supported(cfg: ml_collections.ConfigDict, mode: str) -> None:
  # Catches a mode this version cannot train before hours of other runs,
  # not at the moment its turn comes.
  try:
    config_validation.validate_config(cfg)
  except UserError as e:
    raise UserError(f'mode {mode!r}: {e} (or leave {mode!r} out of '
                    '--modes)') from None


def _check_seed(path: str, seed: int) -> None:
  # Before workdir.finished_run compares the configs: another seed's run is
  # another sample, not a change of config to allow on resume.
  mismatch = runs_lib.other_seed(path, seed)
  if mismatch:
    what, move = mismatch
    raise UserError(f'{what}: move it aside ({move}) or use another '
                    '--workdir; resume_allow cannot make one seed\'s run '
                    'stand for another')


def _check_args(modes: List[str], seeds: int, match_mode: str,
                match_cost: str) -> None:
  if seeds < 1:
    raise UserError(f'--seeds={seeds}: need at least 1 seed')
  if match_cost not in MATCH_COSTS:
    raise UserError(f'--match_cost={match_cost!r}: choose one of '
                    f'{", ".join(MATCH_COSTS)}')
  if SAME_TIME in modes and (match_mode not in MODES
                             or match_mode in (BASELINE, SAME_TIME)):
    raise UserError(f'{SAME_TIME} gets the training time of --match_mode='
                    f'{match_mode!r}: name a trained mode such as static '
                    f'(e.g. --modes=sgd,static,{SAME_TIME})')


def _check_same_time_inputs(workdir: str, modes: List[str], seeds: List[int],
                            match_mode: str) -> None:
  """Before any training: sgd_same_time needs sgd and `match_mode` runs of
  every seed, listed in --modes or already finished in the workdir (e.g.
  forks that benchmarks/cifar_subset_comparison.sh trained)."""
  finished, _, _ = runs_lib.find_runs(workdir) if os.path.isdir(workdir) \
      else ({}, [], [])
  missing = [m for m in (BASELINE, match_mode) if m not in modes
             and not set(seeds) <= set(finished.get(m, {}))]
  if missing:
    raise UserError(f'{SAME_TIME} gets the training time of --match_mode='
                    f'{match_mode!r}: list {" and ".join(missing)} in '
                    f'--modes (e.g. --modes=sgd,static,{SAME_TIME}), or '
                    f'finish those runs in {workdir} first')


def run_comparison(config: ml_collections.ConfigDict, workdir: str,
                   modes: Sequence[str], seeds: int,
                   command: Optional[str] = None, match_mode: str = 'static',
                   match_cost: str = 'time', target: Optional[float] = None,
                   target_drop: float = 0.005,
                   sgd_budgets: Sequence[Any] = ()) -> List[Dict[str, Any]]:
  """Trains every mode with seeds config.seed .. config.seed + seeds - 1.

  Seeds are the outer loop, so if the comparison stops early the finished
  runs still form complete pairs across modes. Each run resumes from its own
  checkpoint, so running the same comparison again continues where it
  stopped (and skips finished runs). `sgd_same_time` runs last: its length
  is `config.num_epochs` scaled by the training cost of `match_mode` over
  sgd's, measured on the finished runs, in fractional epochs (steps).

  Args:
    config: the config every mode starts from.
    workdir: runs go to `workdir/<mode>/seed_<s>`, the report to `workdir`.
    modes: names from MODES.
    seeds: how many seeds (the same ones for every mode, so runs are paired).
    command: the command line, recorded in the report.
    match_mode: the mode whose training cost `sgd_same_time` gets.
    match_cost: 'time' (robust training time: the median time of each kind
      of epoch) or 'flops' (XLA's FLOPs of the steps run, `flops.py`).
    target, target_drop: the time-to-accuracy target (see
      `report.write_report`).
    sgd_budgets: epochs (fractional ones allowed) at which SGD is trained
      too, mode `sgd@B`: SGD's accuracy-cost frontier, the report's
      iso-accuracy speed-up.

  Returns:
    One entry per mode, as in `comparison.json` (see `report.write_report`).
  """
  modes = parse_modes(modes)
  _check_args(modes, seeds, match_mode, match_cost)
  budgets = parse_budgets([str(b) for b in sgd_budgets])
  seed_list = [config.seed + i for i in range(seeds)]
  first = [(m, None) for m in modes if m != SAME_TIME] + [
      (budget_mode(b), b) for b in budgets]
  plan = [(seed, mode, mode_config(config, BASELINE if epochs else mode,
                                   seed, epochs=epochs))
          for seed in seed_list for mode, epochs in first]
  for _, mode, cfg in plan[:len(first)]:
    _check_supported(cfg, mode)
  # A folder holding another seed's run (sgd_same_time's too) is refused
  # before any training, never resumed or skipped as its folder's seed.
  names = [m for m, _ in first] + ([SAME_TIME] if SAME_TIME in modes else [])
  for seed in seed_list:
    for mode in names:
      _check_seed(run_dir(workdir, mode, seed), seed)
  # Before any training: a run trained under another config is refused
  # (never relabelled: resume_check.check_resume's one-line error), and a
  # finished run of this very config is skipped, not reloaded and rewritten.
  finished = {run_dir(workdir, mode, seed) for seed, mode, cfg in plan
              if workdir_lib.finished_run(run_dir(workdir, mode, seed), cfg)}
  if SAME_TIME in modes:
    _check_same_time_inputs(workdir, modes, seed_list, match_mode)
    plan += [(seed, SAME_TIME, None) for seed in seed_list]
  for i, (seed, mode, cfg) in enumerate(plan):
    path = run_dir(workdir, mode, seed)
    if cfg is None:
      cfg = mode_config(config, SAME_TIME, seed, epochs=_same_time_epochs(
          workdir, config.num_epochs, match_mode, match_cost))
      if workdir_lib.finished_run(path, cfg):
        finished.add(path)
    if path in finished:
      print(f'=== [{i + 1}/{len(plan)}] mode={mode} seed={seed}: finished '
            f'with this config in {path}, skipped', flush=True)
      continue
    print(f'=== [{i + 1}/{len(plan)}] mode={mode} seed={seed} -> {path}',
          flush=True)
    train_lib.train_and_evaluate(cfg, path)
  return report.write_report(
      workdir, command=command, device=jax.devices()[0].device_kind,
      target=target, target_drop=target_drop,
      writer=distributed.is_primary())


def _same_time_epochs(workdir: str, num_epochs: int, match_mode: str,
                      match_cost: str) -> float:
  """SGD epochs (fractional: matched to the step) whose cost matches
  `match_mode`'s runs; recorded in `workdir/sgd_same_time/match.json` (and
  reused, so reruns agree; records of older versions hold whole epochs)."""
  record_path = os.path.join(workdir, SAME_TIME, 'match.json')
  if os.path.exists(record_path):
    record = runs_lib.read_json(record_path)
    return record.get('epochs', record['num_epochs'])
  runs = runs_lib.load_runs(workdir, [BASELINE, match_mode])
  if BASELINE not in runs or match_mode not in runs:
    raise UserError(f'{SAME_TIME} needs finished {BASELINE} and '
                    f'{match_mode} runs in {workdir}')
  costs = {}
  for mode in (BASELINE, match_mode):
    if match_cost == 'flops':
      costs[mode] = run_stats.mean(
          [runs_lib.run_flops(r) for r in runs[mode].values()])
    else:
      costs[mode] = run_stats.mean(
          [runs_lib.robust_train_time(runs, r) for r in runs[mode].values()])
  ratio = costs[match_mode] / costs[BASELINE]
  steps_per_epoch = runs_lib.steps_per_epoch(
      next(iter(runs[BASELINE].values())))
  epochs = num_epochs * ratio
  if steps_per_epoch:  # to the step, at least one
    epochs = max(1, round(epochs * steps_per_epoch)) / steps_per_epoch
  epochs = round(epochs, 6)
  os.makedirs(os.path.dirname(record_path), exist_ok=True)
  metrics_lib.write_json(record_path, {
      'match_mode': match_mode, 'match_cost': match_cost,
      'cost_ratio': ratio, 'baseline_epochs': num_epochs, 'epochs': epochs,
      'steps': (round(epochs * steps_per_epoch) if steps_per_epoch
                else None),
      **modes_lib.length_fields(epochs)})
  print(f'{SAME_TIME}: {match_mode} cost {ratio:.3f}x of {BASELINE} '
        f'({match_cost}) -> {epochs:g} of {num_epochs} epochs', flush=True)
  return epochs
