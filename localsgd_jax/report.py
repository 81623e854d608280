"""The comparison harness: every mode with every seed, then a table and plots.

`run_comparison` trains each mode (LoCal+SGD and its peers) with the same
seeds under one config, each run in `workdir/<mode>/seed_<s>`, and then
`write_report` reads those run directories back and writes
`comparison.json`, `comparison.md` and three PNG plots into `workdir`.
`write_report` only reads files, so a report can be redrawn at any time
(`compare.py --report_only`), also while runs are missing or unfinished.
"""
import collections
import datetime
import json
import math
import os
import re
from typing import Any, Dict, List, Optional, Sequence

import jax
import ml_collections
import numpy as np

from localsgd_jax import metrics as metrics_lib
from localsgd_jax import selection
from localsgd_jax import train_lib
from localsgd_jax import workdir as workdir_lib
from localsgd_jax.errors import UserError

# A mode is a set of config overrides (dotted keys) applied on top of the
# comparison's config, so every peer runs under the same code, data, model and
# optimizer, and differs only in how units leave the backward pass.
MODES: Dict[str, Dict[str, Any]] = {
    # Plain SGD: the baseline every other mode is compared with.
    'sgd': {'selection.mode': 'sgd'},
    # LoCal+SGD, static scheduler, with the config's local rule.
    'static': {'selection.mode': 'static'},
    # LoCal+SGD, the transition index driven by the weight-update dynamics.
    'dynamic': {'selection.mode': 'dynamic'},
    # FreezeOut: units leave the backward pass on a cubic schedule; a frozen
    # unit is a local unit with learning rate 0.
    'freeze': {'selection.mode': 'static', 'selection.ramp': 'cubic',
               'local.rule': 'frozen'},
    # AutoFreeze / PipeTransformer: freeze a unit once its gradient norm
    # stops changing.
    'autofreeze': {'selection.mode': 'gradnorm', 'local.rule': 'frozen'},
    # Freezing on exactly the static schedule of LoCal+SGD: the same units
    # leave the backward pass at the same epochs with learning rate 0, so
    # any difference from 'static' is the local rule's doing.
    'static_frozen': {'selection.mode': 'static', 'local.rule': 'frozen'},
    # Plain SGD given the training time of another mode (`match_mode`): the
    # same schedule shape compressed into fewer epochs, which
    # `run_comparison` sets from the finished runs' costs. The baseline a
    # skeptic asks for first.
    'sgd_same_time': {'selection.mode': 'sgd'},
}
SAME_TIME = 'sgd_same_time'
MATCH_COSTS = ('time', 'flops')
# Two-sided 95% quantiles of Student's t by degrees of freedom (n - 1).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447,
        7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228, 15: 2.131, 20: 2.086,
        30: 2.042}
BASELINE = 'sgd'
PLOTS = {
    'accuracy_vs_epoch': 'accuracy_vs_epoch.png',
    'accuracy_vs_time': 'accuracy_vs_time.png',
    'transition_vs_epoch': 'transition_vs_epoch.png',
}
_SEED_DIR = re.compile(r'^seed_(\d+)$')


def parse_modes(modes: Sequence[str]) -> List[str]:
  """Checks mode names against MODES; drops repeats, keeps the order.

  Raises:
    UserError: for an empty list or an unknown name (the message lists the
      valid ones).
  """
  names = list(dict.fromkeys(m.strip() for m in modes if m.strip()))
  unknown = [m for m in names if m not in MODES]
  if unknown or not names:
    what = (f'unknown mode(s) {", ".join(map(repr, unknown))}' if unknown
            else 'no modes given')
    raise UserError(f'{what} in --modes; valid modes: {", ".join(MODES)} '
                    '(e.g. --modes=sgd,static,freeze)')
  return names


def mode_config(config: ml_collections.ConfigDict, mode: str,
                seed: int) -> ml_collections.ConfigDict:
  """A copy of `config` with `mode`'s overrides and `seed` applied."""
  cfg = config.copy_and_resolve_references()
  for key, value in MODES[mode].items():
    *path, leaf = key.split('.')
    node = cfg
    for part in path:
      node = node.get(part) if isinstance(node, ml_collections.ConfigDict) \
          else None
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
      # Modes set fields of configs/default.py; a config that does not
      # derive from it cannot express the mode.
      raise UserError(f'mode {mode!r} sets config.{key}, which this config '
                      'does not have; derive the config from '
                      'configs/default.py')
    node[leaf] = value
  cfg.seed = seed
  return cfg


def _check_supported(cfg: ml_collections.ConfigDict, mode: str) -> None:
  # Catches a mode this version cannot train before hours of other runs,
  # not at the moment its turn comes.
  train_lib.validate_config(cfg)
  known = getattr(selection, 'MODES', None)
  if known is not None and cfg.selection.mode not in known:
    raise UserError(
        f'mode {mode!r} needs config.selection.mode={cfg.selection.mode!r}, '
        f'which this version of localsgd_jax does not have (it has '
        f'{", ".join(known)}); leave {mode!r} out of --modes')


def run_dir(workdir: str, mode: str, seed: int) -> str:
  """Where the run of `mode` with `seed` lives."""
  return os.path.join(workdir, mode, f'seed_{seed}')


def run_comparison(config: ml_collections.ConfigDict, workdir: str,
                   modes: Sequence[str], seeds: int,
                   command: Optional[str] = None, match_mode: str = 'static',
                   match_cost: str = 'time', target: Optional[float] = None,
                   target_drop: float = 0.005) -> List[Dict[str, Any]]:
  """Trains every mode with seeds config.seed .. config.seed + seeds - 1.

  Seeds are the outer loop, so if the comparison stops early the finished
  runs still form complete pairs across modes. Each run resumes from its own
  checkpoint, so running the same comparison again continues where it
  stopped (and skips finished runs). `sgd_same_time` runs last: its epoch
  count is `config.num_epochs` scaled by the training cost of `match_mode`
  over sgd's, measured on the finished runs.

  Args:
    config: the config every mode starts from.
    workdir: runs go to `workdir/<mode>/seed_<s>`, the report to `workdir`.
    modes: names from MODES.
    seeds: how many seeds (the same ones for every mode, so runs are paired).
    command: the command line, recorded in the report.
    match_mode: the mode whose training cost `sgd_same_time` gets.
    match_cost: 'time' (robust training time: the median time of each kind
      of epoch) or 'flops' (XLA's compiled FLOPs of the steps run).
    target, target_drop: the time-to-accuracy target (see `write_report`).

  Returns:
    One entry per mode, as in `comparison.json` (see `write_report`).
  """
  modes = parse_modes(modes)
  if seeds < 1:
    raise UserError(f'--seeds={seeds}: need at least 1 seed')
  if match_cost not in MATCH_COSTS:
    raise UserError(f'--match_cost={match_cost!r}: choose one of '
                    f'{", ".join(MATCH_COSTS)}')
  same_time = SAME_TIME in modes
  if same_time and (BASELINE not in modes or match_mode not in modes
                    or match_mode in (BASELINE, SAME_TIME)):
    raise UserError(f'{SAME_TIME} gets the training time of --match_mode='
                    f'{match_mode!r}: list both {BASELINE} and that mode in '
                    f'--modes (e.g. --modes=sgd,static,{SAME_TIME})')
  seed_list = [config.seed + i for i in range(seeds)]
  first = [m for m in modes if m != SAME_TIME]
  plan = [(seed, mode, mode_config(config, mode, seed))
          for seed in seed_list for mode in first]
  for _, mode, cfg in plan[:len(first)]:
    _check_supported(cfg, mode)
  # Before any training: a run trained under another config is refused
  # (never relabelled: workdir.check_resume's one-line error), and a
  # finished run of this very config is skipped, not reloaded and rewritten.
  finished = {run_dir(workdir, mode, seed) for seed, mode, cfg in plan
              if workdir_lib.finished_run(run_dir(workdir, mode, seed), cfg)}
  if same_time:
    plan += [(seed, SAME_TIME, None) for seed in seed_list]
  for i, (seed, mode, cfg) in enumerate(plan):
    path = run_dir(workdir, mode, seed)
    if cfg is None:
      cfg = mode_config(config, SAME_TIME, seed)
      cfg.num_epochs = _same_time_epochs(workdir, config.num_epochs,
                                         match_mode, match_cost)
      if workdir_lib.finished_run(path, cfg):
        finished.add(path)
    if path in finished:
      print(f'=== [{i + 1}/{len(plan)}] mode={mode} seed={seed}: finished '
            f'with this config in {path}, skipped', flush=True)
      continue
    print(f'=== [{i + 1}/{len(plan)}] mode={mode} seed={seed} -> {path}',
          flush=True)
    train_lib.train_and_evaluate(cfg, path)
  return write_report(workdir, command=command,
                      device=jax.devices()[0].device_kind, target=target,
                      target_drop=target_drop)


def _same_time_epochs(workdir: str, num_epochs: int, match_mode: str,
                      match_cost: str) -> int:
  """SGD epochs whose cost matches `match_mode`'s runs; recorded in
  `workdir/sgd_same_time/match.json` (and reused, so reruns agree)."""
  record_path = os.path.join(workdir, SAME_TIME, 'match.json')
  if os.path.exists(record_path):
    return _read_json(record_path)['num_epochs']
  runs = _load_runs(workdir, [BASELINE, match_mode])
  if BASELINE not in runs or match_mode not in runs:
    raise UserError(f'{SAME_TIME} needs finished {BASELINE} and '
                    f'{match_mode} runs in {workdir}')
  costs = {}
  for mode in (BASELINE, match_mode):
    if match_cost == 'flops':
      costs[mode] = _mean([_run_flops(r) for r in runs[mode].values()])
    else:
      median = _median_epoch_times(runs, 'epoch_time_s')
      costs[mode] = _mean([sum(median[_epoch_kind(r, row)]
                               for row in r['rows'])
                           for r in runs[mode].values()])
  ratio = costs[match_mode] / costs[BASELINE]
  epochs = max(1, int(round(num_epochs * ratio)))
  os.makedirs(os.path.dirname(record_path), exist_ok=True)
  metrics_lib.write_json(record_path, {
      'match_mode': match_mode, 'match_cost': match_cost,
      'cost_ratio': ratio, 'baseline_epochs': num_epochs,
      'num_epochs': epochs})
  print(f'{SAME_TIME}: {match_mode} cost {ratio:.3f}x of {BASELINE} '
        f'({match_cost}) -> {epochs} of {num_epochs} epochs', flush=True)
  return epochs


def _run_flops(run: Dict[str, Any]) -> float:
  """XLA's FLOPs of all the steps a run took."""
  total, last_step = 0.0, 0
  for row in run['rows']:
    total += row.get('step_flops', 0.0) * (row['step'] - last_step)
    last_step = row['step']
  return total


# ----------------------------------------------------------------- reading


def _read_json(path: str) -> Any:
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise UserError(f'{path} is not valid JSON ({e}); delete it and run the '
                    'comparison again') from None


def _read_rows(path: str) -> List[Dict[str, Any]]:
  if not os.path.exists(path):
    return []
  rows = []
  with open(path) as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise UserError(f'{path} line {n} is not valid JSON ({e}); delete '
                        'the run directory and run the comparison again'
                        ) from None
  return sorted(rows, key=lambda r: r['epoch'])


def _find_runs(workdir: str):
  """{mode: {seed: run dir}} for finished runs, and a list of unfinished."""
  finished, unfinished = {}, []
  for mode in sorted(os.listdir(workdir)):
    mode_dir = os.path.join(workdir, mode)
    if not os.path.isdir(mode_dir):
      continue
    for name in os.listdir(mode_dir):
      match = _SEED_DIR.match(name)
      path = os.path.join(mode_dir, name)
      if not match or not os.path.isdir(path):
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
  return {m: dict(sorted(finished[m].items())) for m in order}, sorted(
      unfinished)


def _load_runs(workdir: str, modes: Optional[Sequence[str]] = None
               ) -> Dict[str, Dict[int, Dict[str, Any]]]:
  """{mode: {seed: run}} of the finished runs (of `modes`, if given)."""
  found, _ = _find_runs(workdir)
  runs_by_mode = {}
  for mode, by_seed in found.items():
    if modes is not None and mode not in modes:
      continue
    runs_by_mode[mode] = {}
    for seed, path in by_seed.items():
      run = {'summary': _read_json(os.path.join(path, 'summary.json')),
             'rows': _read_rows(os.path.join(path, 'metrics.jsonl'))}
      run['epoch_number'] = [r['epoch'] for r in run['rows']]  # from 1
      run['cumulative_time_s'] = _cumulative_time(run['rows'])
      runs_by_mode[mode][seed] = run
  return runs_by_mode


def _cumulative_time(rows: List[Dict[str, Any]]) -> List[float]:
  # Wall time a user waits for each epoch's test accuracy: training,
  # compilation and evaluation alike.
  return np.cumsum([r.get('epoch_time_s', 0.0) + r.get('compile_time_s', 0.0)
                    + r.get('eval_time_s', 0.0) for r in rows]).tolist()


# ------------------------------------------------------------- aggregation


def _mean(values: Sequence[float]) -> Optional[float]:
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


def _epoch_kind(run: Dict[str, Any], row: Dict[str, Any]) -> tuple:
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


def _median_epoch_times(runs_by_mode, field: str) -> Dict[tuple, float]:
  """Median of `field` (summed fields if a tuple) per kind of epoch, pooled
  over every run of the comparison."""
  fields = (field,) if isinstance(field, str) else field
  pooled = collections.defaultdict(list)
  for by_seed in runs_by_mode.values():
    for run in by_seed.values():
      for r in run['rows']:
        pooled[_epoch_kind(run, r)].append(
            sum(r.get(f, 0.0) for f in fields))
  return {kind: float(np.median(t)) for kind, t in pooled.items()}


def _time_to_target(run: Dict[str, Any], median_train: Dict[tuple, float],
                    target: float) -> Optional[float]:
  """Robust training time until the run's eval accuracy first reaches
  `target`, or None if it never does."""
  elapsed = 0.0
  for r in run['rows']:
    elapsed += median_train[_epoch_kind(run, r)]
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


def aggregate(runs_by_mode: Dict[str, Dict[int, Dict[str, Any]]],
              target: Optional[float] = None, target_drop: float = 0.005
              ) -> List[Dict[str, Any]]:
  """Per-mode statistics from loaded runs.

  Args:
    runs_by_mode: {mode: {seed: {'summary': summary.json, 'rows':
      metrics.jsonl rows}}}.
    target: the accuracy for time-to-accuracy; None: sgd's mean final
      accuracy minus `target_drop`.
    target_drop: see `target`.

  Returns:
    One entry per mode, in the order of `runs_by_mode` (see `write_report`).
  """
  base = runs_by_mode.get(BASELINE, {})

  def final_acc(run):
    return run['summary']['final_eval_accuracy']

  def train_time(run):
    return sum(r.get('epoch_time_s', 0.0) for r in run['rows'])

  # A shared machine can slow a whole run down for minutes (2.5x has been
  # seen on a 2-core VM). The robust time gives every epoch the median
  # training + eval time of all the comparison's epochs of its kind.
  # Compile time is left out: with the persistent compilation cache the
  # first run of a comparison pays for the programs the others load.
  median = _median_epoch_times(runs_by_mode, ('epoch_time_s', 'eval_time_s'))
  median_train = _median_epoch_times(runs_by_mode, 'epoch_time_s')

  def robust_time(run):
    return sum(median[_epoch_kind(run, r)] for r in run['rows'])

  if target is None and base:
    target = _mean([final_acc(r) for r in base.values()]) - target_drop
  tta_base = None
  if target is not None and base:
    times = [_time_to_target(r, median_train, target) for r in base.values()]
    tta_base = _mean(times) if None not in times else None
  base_time = _mean([r['summary']['total_time_s'] for r in base.values()])
  base_train = _mean([train_time(r) for r in base.values()])
  base_robust = _mean([robust_time(r) for r in base.values()])
  entries = []
  for mode, by_seed in runs_by_mode.items():
    runs = list(by_seed.values())
    accs = [final_acc(r) for r in runs]
    times = [r['summary']['total_time_s'] for r in runs]
    train_times = [train_time(r) for r in runs]
    robust_times = [robust_time(r) for r in runs]
    # Paired by seed: the same seed gives the same init and data order, so
    # the per-seed difference cancels most of the seed-to-seed spread.
    paired = sorted(set(by_seed) & set(base))
    diffs = [final_acc(by_seed[s]) - final_acc(base[s]) for s in paired]
    temp = _field(runs, 'step_temp_bytes')
    entry = {
        'mode': mode,
        'overrides': MODES.get(mode),
        'seeds': list(by_seed),
        'num_runs': len(runs),
        'num_epochs': max(r['summary'].get('num_epochs', len(r['rows']))
                          for r in runs),
        'num_units': runs[0]['summary'].get('num_units'),
        'eval_accuracy_mean': _mean(accs),
        'eval_accuracy_std': _std(accs),
        'eval_accuracy_per_seed': dict(zip(map(str, by_seed), accs)),
        'best_eval_accuracy_mean': _mean(
            [r['summary']['best_eval_accuracy'] for r in runs]),
        'accuracy_diff_vs_sgd_mean': _mean(diffs) if base else None,
        'accuracy_diff_vs_sgd_std': _std(diffs) if base else None,
        'paired_seeds': paired if base else [],
        'total_time_s_mean': _mean(times),
        'total_time_s_std': _std(times),
        'speedup_vs_sgd': _ratio(base_time, _mean(times)),
        'train_time_s_mean': _mean(train_times),
        'train_speedup_vs_sgd': _ratio(base_train, _mean(train_times)),
        'robust_time_s_mean': _mean(robust_times),
        'robust_speedup_vs_sgd': _ratio(base_robust, _mean(robust_times)),
        'compile_time_s_mean': _mean(
            [r['summary'].get('compile_time_s', 0.0) for r in runs]),
        'local_flop_fraction_mean': _mean(_field(runs, 'local_flop_fraction')),
        'peak_temp_bytes': max(temp) if temp else None,
        'mean_transition': _mean(_field(runs, 'transition')),
        'target_accuracy': target,
        **_tta_fields(runs, median_train, target, tta_base),
        'accuracy_diff_vs_sgd_ci95': _ci95(diffs) if base else None,
    }
    entries.append(entry)
  return entries


def _tta_fields(runs, median_train, target, tta_base) -> Dict[str, Any]:
  """Time-to-accuracy of a mode's runs and its iso-accuracy speedup."""
  if target is None:
    return {'time_to_target_s': None, 'time_to_target_s_mean': None,
            'time_to_target_s_std': None, 'target_reached': None,
            'iso_accuracy_speedup': None}
  times = [_time_to_target(r, median_train, target) for r in runs]
  reached = [t for t in times if t is not None]
  all_reached = len(reached) == len(times)
  mean = _mean(reached) if all_reached else None
  return {
      'time_to_target_s': times,
      'time_to_target_s_mean': mean,
      'time_to_target_s_std': _std(reached) if all_reached else None,
      'target_reached': f'{len(reached)}/{len(times)}',
      # Only when every seed got there: a mean over the lucky seeds would
      # flatter the mode.
      'iso_accuracy_speedup': _ratio(tta_base, mean),
  }


# ----------------------------------------------------------------- writing


def _curves(runs: List[Dict[str, Any]], x_key: str, y_field: str):
  """Mean x, mean y and std y over seeds, epoch by epoch.

  Args:
    runs: loaded runs; `run[x_key]` is a per-epoch list.
    x_key: 'epoch_number' or 'cumulative_time_s'.
    y_field: a metrics.jsonl field.
  """
  # Runs of one mode normally have the same epochs; if one is longer (a
  # later --config.num_epochs), only the epochs all runs have are averaged.
  num = min(len(r['rows']) for r in runs)
  xs = np.array([r[x_key][:num] for r in runs], dtype=float)
  ys = np.array([[row.get(y_field, np.nan) for row in r['rows'][:num]]
                 for r in runs], dtype=float)
  std = ys.std(axis=0, ddof=1) if len(runs) > 1 else np.zeros(num)
  return xs.mean(axis=0), ys.mean(axis=0), std


def _plot(path: str, runs_by_mode, x_key: str, y_field: str, xlabel: str,
          ylabel: str, title: str, steps: bool = False) -> None:
  """One line per mode (mean over seeds) with a ±std band.

  Args:
    path: the PNG to write.
    runs_by_mode: as for `aggregate`.
    x_key: per-epoch x values of a run, see `_curves`.
    y_field: the metrics.jsonl field to plot.
    xlabel: x axis label.
    ylabel: y axis label.
    title: plot title.
    steps: draw a step per epoch: k is constant within an epoch, a sloped
      line between epochs would suggest values it never took.
  """
  # The object API with the Agg canvas, not pyplot: it leaves the global
  # backend alone (a notebook's inline plots keep working) and needs no
  # display.
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  from matplotlib.ticker import MaxNLocator  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(6.4, 4.2), layout='constrained')
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  for mode, by_seed in runs_by_mode.items():
    runs = [r for r in by_seed.values() if r['rows']]
    if not runs:
      continue
    x, y, std = _curves(runs, x_key, y_field)
    line, = ax.plot(x, y, marker='o', markersize=3,
                    drawstyle='steps-mid' if steps else 'default',
                    label=f'{mode} (n={len(runs)})')
    if len(runs) > 1:
      ax.fill_between(x, y - std, y + std, color=line.get_color(), alpha=0.2,
                      linewidth=0, step='mid' if steps else None)
  if x_key == 'epoch_number':
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  if steps:
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  if ax.lines:
    ax.legend()
  fig.savefig(path, dpi=110)


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
      f'- target accuracy: {_fmt(target, ".4f")}', '',
      headline_table(entries), '',
      '**Iso-accuracy speedup** (the headline): sgd\'s training time to '
      'first reach the target accuracy (sgd\'s mean final accuracy minus '
      '0.5 points unless --target says otherwise) over the mode\'s, with '
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
  details = []
  for e in entries:
    peak = e['peak_temp_bytes']
    details.append([
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
  lines += ['', '## Details', ''] + _table(
      ['mode', 'best acc', 'wall time (s)', 'wall speedup', 'train time (s)',
       'train speedup', 'compile (s)', 'local FLOP frac', 'peak temp',
       'mean k'], details)
  lines += [
      '',
      'Wall time is the whole run as measured, compilation and evaluation '
      'included (noisy on shared machines); train time sums the epochs\' '
      'training steps as measured. Local FLOP fraction and mean k average '
      'over epochs and seeds; peak temp is the largest XLA temporary memory '
      'of a step. Std is over seeds (ddof=1), n/a for one seed.',
  ]
  if meta['unfinished_runs']:
    lines += ['', 'Not counted (no summary.json yet: crashed or still '
              'running; run the comparison again to finish them): '
              + ', '.join(f'`{p}`' for p in meta['unfinished_runs'])]
  lines += ['', '## Plots', '']
  lines += [f'![{name}]({file})' for name, file in PLOTS.items()]
  return '\n'.join(lines) + '\n'


def write_report(workdir: str, command: Optional[str] = None,
                 device: Optional[str] = None, target: Optional[float] = None,
                 target_drop: float = 0.005) -> List[Dict[str, Any]]:
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
      report (a redraw may happen on another machine), else this machine's.
    target: the accuracy for time-to-accuracy; None: sgd's mean final
      accuracy minus `target_drop`.
    target_drop: see `target` (0.005 = half a point).

  Returns:
    The entries.

  Raises:
    UserError: when `workdir` holds no finished run.
  """
  if not os.path.isdir(workdir):
    raise UserError(f'{workdir} does not exist; run compare.py without '
                    '--report_only first to train the runs')
  found, unfinished = _find_runs(workdir)
  if not found:
    raise UserError(
        f'{workdir} holds no finished run (expected <mode>/seed_<n>/'
        'summary.json); run compare.py without --report_only first')
  runs_by_mode = _load_runs(workdir)
  entries = aggregate(runs_by_mode, target=target, target_drop=target_drop)
  match_path = os.path.join(workdir, SAME_TIME, 'match.json')
  for e in entries:
    if e['mode'] == SAME_TIME and os.path.exists(match_path):
      e['match'] = _read_json(match_path)

  json_path = os.path.join(workdir, 'comparison.json')
  previous = _read_json(json_path) if os.path.exists(json_path) else {}
  meta = {
      'command': command if command is not None else previous.get('command'),
      'date': datetime.datetime.now().astimezone().isoformat(
          timespec='seconds'),
      'device': device or previous.get('device') or
                jax.devices()[0].device_kind,
      # The runs' commits (several if the runs span commits).
      'git_commit': ', '.join(sorted(
          {run['summary'].get('git_commit') or 'unknown'
           for by_seed in runs_by_mode.values()
           for run in by_seed.values()})),
      'unfinished_runs': unfinished,
  }
  if jax.process_index() != 0:
    return entries  # One writer: every host sees the same files.
  metrics_lib.write_json(json_path, {**meta, 'entries': entries})
  with open(os.path.join(workdir, 'comparison.md'), 'w') as f:
    f.write(_markdown(meta, entries))
  _plot(os.path.join(workdir, PLOTS['accuracy_vs_epoch']), runs_by_mode,
        'epoch_number', 'eval_accuracy', 'epoch', 'eval accuracy',
        'Eval accuracy by epoch (mean ± std over seeds)')
  _plot(os.path.join(workdir, PLOTS['accuracy_vs_time']), runs_by_mode,
        'cumulative_time_s', 'eval_accuracy',
        'wall time (s, compile and eval included)', 'eval accuracy',
        'Eval accuracy by wall time (mean ± std over seeds)')
  _plot(os.path.join(workdir, PLOTS['transition_vs_epoch']), runs_by_mode,
        'epoch_number', 'transition', 'epoch', 'transition index k',
        'Units trained locally (k) by epoch', steps=True)
  return entries
