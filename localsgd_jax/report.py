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
import os
import re
from typing import Any, Dict, List, Optional, Sequence

import jax
import ml_collections
import numpy as np

from localsgd_jax import metrics as metrics_lib
from localsgd_jax import selection
from localsgd_jax import train_lib
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
}
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
                   command: Optional[str] = None) -> List[Dict[str, Any]]:
  """Trains every mode with seeds config.seed .. config.seed + seeds - 1.

  Seeds are the outer loop, so if the comparison stops early the finished
  runs still form complete pairs across modes. Each run resumes from its own
  checkpoint, so running the same comparison again continues where it
  stopped (and skips finished runs).

  Args:
    config: the config every mode starts from.
    workdir: runs go to `workdir/<mode>/seed_<s>`, the report to `workdir`.
    modes: names from MODES.
    seeds: how many seeds (the same ones for every mode, so runs are paired).
    command: the command line, recorded in the report.

  Returns:
    One entry per mode, as in `comparison.json` (see `write_report`).
  """
  modes = parse_modes(modes)
  if seeds < 1:
    raise UserError(f'--seeds={seeds}: need at least 1 seed')
  seed_list = [config.seed + i for i in range(seeds)]
  plan = [(seed, mode, mode_config(config, mode, seed))
          for seed in seed_list for mode in modes]
  for _, mode, cfg in plan[:len(modes)]:
    _check_supported(cfg, mode)
  for i, (seed, mode, cfg) in enumerate(plan):
    path = run_dir(workdir, mode, seed)
    print(f'=== [{i + 1}/{len(plan)}] mode={mode} seed={seed} -> {path}',
          flush=True)
    train_lib.train_and_evaluate(cfg, path)
  return write_report(workdir, command=command,
                      device=jax.devices()[0].device_kind)


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
  if not len(values):
    return None
  return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


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


def aggregate(runs_by_mode: Dict[str, Dict[int, Dict[str, Any]]]
              ) -> List[Dict[str, Any]]:
  """Per-mode statistics from loaded runs.

  Args:
    runs_by_mode: {mode: {seed: {'summary': summary.json, 'rows':
      metrics.jsonl rows}}}.

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
  # training + eval time of all the comparison's epochs of its kind, plus
  # the run's own compile time.
  pooled = collections.defaultdict(list)
  for by_seed in runs_by_mode.values():
    for run in by_seed.values():
      for r in run['rows']:
        pooled[_epoch_kind(run, r)].append(
            r.get('epoch_time_s', 0.0) + r.get('eval_time_s', 0.0))
  median = {kind: float(np.median(t)) for kind, t in pooled.items()}

  def robust_time(run):
    return run['summary'].get('compile_time_s', 0.0) + sum(
        median[_epoch_kind(run, r)] for r in run['rows'])

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
    }
    entries.append(entry)
  return entries


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


def _pm(mean: Optional[float], std: Optional[float], spec: str) -> str:
  if mean is None:
    return 'n/a'
  return f'{mean:{spec}} ± {std:.4f}'


def _markdown(meta: Dict[str, Any], entries: List[Dict[str, Any]]) -> str:
  header = ['mode', 'runs', 'eval acc (mean ± std)', 'Δ acc vs sgd (paired)',
            'best acc', 'wall time (s)', 'speedup', 'train time (s)',
            'train speedup', 'robust speedup', 'local FLOP frac', 'peak temp',
            'mean k']
  lines = [
      '# LoCal+SGD comparison', '',
      f'- command: `{meta["command"] or "n/a"}`',
      f'- date: {meta["date"]}',
      f'- device: {meta["device"]}',
      f'- git commit: {meta["git_commit"]}', '',
      '| ' + ' | '.join(header) + ' |',
      '|' + '---|' * len(header),
  ]
  for e in entries:
    peak = e['peak_temp_bytes']
    cells = [
        e['mode'], str(e['num_runs']),
        _pm(e['eval_accuracy_mean'], e['eval_accuracy_std'], '.4f'),
        _pm(e['accuracy_diff_vs_sgd_mean'], e['accuracy_diff_vs_sgd_std'],
            '+.4f'),
        _fmt(e['best_eval_accuracy_mean'], '.4f'),
        _fmt(e['total_time_s_mean'], '.1f'),
        _fmt(e['speedup_vs_sgd'], '.2f', 'x'),
        _fmt(e['train_time_s_mean'], '.1f'),
        _fmt(e['train_speedup_vs_sgd'], '.2f', 'x'),
        _fmt(e['robust_speedup_vs_sgd'], '.2f', 'x'),
        _fmt(e['local_flop_fraction_mean'], '.3f'),
        _fmt(None if peak is None else peak / 2**20, '.1f', ' MiB'),
        _fmt(e['mean_transition'], '.2f',
             f' / {e["num_units"]}' if e['num_units'] else ''),
    ]
    lines.append('| ' + ' | '.join(cells) + ' |')
  lines += [
      '',
      'Eval accuracy (on the eval split of the runs\' data: val/ or test/) is the final epoch\'s. The Δ vs sgd pairs runs by seed '
      '(same init and data order) and averages the per-seed differences. '
      'Wall time is the whole run, compilation and evaluation included; '
      'train time sums the epochs\' training steps only (short runs are '
      'dominated by compilation, one per distinct k, and the first run of a '
      'process also pays start-up costs). Speedups are sgd\'s mean time over '
      'the mode\'s. The robust speedup rebuilds each run\'s time from the '
      'median training + eval time of all epochs of the same kind (k and '
      'local rule) across the comparison, plus its compile time: it is '
      'what the speedup would be without the machine\'s transient '
      'slowdowns. Local FLOP fraction and mean k average '
      'over epochs and seeds; peak temp is the largest XLA temporary memory '
      'of a step. Std is over seeds (ddof=1).',
  ]
  if meta['unfinished_runs']:
    lines += ['', 'Not counted (no summary.json yet: crashed or still '
              'running; run the comparison again to finish them): '
              + ', '.join(f'`{p}`' for p in meta['unfinished_runs'])]
  lines += ['', '## Plots', '']
  lines += [f'![{name}]({file})' for name, file in PLOTS.items()]
  return '\n'.join(lines) + '\n'


def write_report(workdir: str, command: Optional[str] = None,
                 device: Optional[str] = None) -> List[Dict[str, Any]]:
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
  runs_by_mode = {}
  for mode, by_seed in found.items():
    runs_by_mode[mode] = {}
    for seed, path in by_seed.items():
      run = {'summary': _read_json(os.path.join(path, 'summary.json')),
             'rows': _read_rows(os.path.join(path, 'metrics.jsonl'))}
      # Epochs count from 1 in the plots, as in the training log.
      run['epoch_number'] = [r['epoch'] for r in run['rows']]  # from 1
      run['cumulative_time_s'] = _cumulative_time(run['rows'])
      runs_by_mode[mode][seed] = run
  entries = aggregate(runs_by_mode)

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
