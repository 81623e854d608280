"""The comparison harness: aggregation, report files and the compare.py CLI."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from localsgd_jax import aggregate
from localsgd_jax import comparison
from localsgd_jax import config_fields
from localsgd_jax import modes
from localsgd_jax import plots
from localsgd_jax import report
from localsgd_jax import report_md
from localsgd_jax import runs
from localsgd_jax.configs import quickstart
from localsgd_jax.errors import UserError

from run_helpers import small_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIRED = ('mode', 'eval_accuracy_mean', 'eval_accuracy_std',
            'total_time_s_mean', 'speedup_vs_sgd')
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def _load(workdir):
  with open(os.path.join(workdir, 'comparison.json')) as f:
    return json.load(f)


def _assert_pngs(workdir):
  for name in plots.PLOTS.values():
    path = os.path.join(workdir, name)
    with open(path, 'rb') as f:
      head = f.read(8)
    assert head == PNG_MAGIC and os.path.getsize(path) > 1000, name


# ------------------------------------------------- synthetic run directories


def _write_run(workdir, mode, seed, acc, total_time, rows, finished=True):
  path = os.path.join(workdir, mode, f'seed_{seed}')
  os.makedirs(path)
  with open(os.path.join(path, 'metrics.jsonl'), 'w') as f:
    for epoch, row in enumerate(rows):
      f.write(json.dumps({'epoch': epoch, 'eval_accuracy': acc, **row}) + '\n')
  if finished:
    with open(os.path.join(path, 'summary.json'), 'w') as f:
      json.dump({'final_eval_accuracy': acc, 'best_eval_accuracy': acc + 0.01,
                 'total_time_s': total_time, 'compile_time_s': 1.0,
                 'num_epochs': len(rows), 'num_units': 4}, f)


def _times(epoch_time):
  return {'epoch_time_s': epoch_time, 'compile_time_s': 0.5,
          'eval_time_s': 0.25}


@pytest.fixture
def synthetic(tmp_path):
  """sgd on seeds 0-1, freeze on seeds 0-2 (+ an unfinished seed 3)."""
  workdir = str(tmp_path)
  for seed, acc, t in [(0, 0.80, 10.0), (1, 0.90, 12.0)]:
    _write_run(workdir, 'sgd', seed, acc, t,
               [{'transition': 0, **_times(4.0)}] * 2)
  freeze_rows = [
      {'transition': 0, 'local_flop_fraction': 0.0, 'step_temp_bytes': 100,
       **_times(3.0)},
      {'transition': 3, 'local_flop_fraction': 0.5, 'step_temp_bytes': 60,
       **_times(1.0)},
  ]
  for seed, acc in [(0, 0.78), (1, 0.86), (2, 0.99)]:
    _write_run(workdir, 'freeze', seed, acc, 8.0, freeze_rows)
  _write_run(workdir, 'freeze', 3, 0.5, 8.0, freeze_rows[:1], finished=False)
  os.makedirs(os.path.join(workdir, 'notes'))  # not a mode: ignored
  return workdir


def test_aggregation_numbers_are_exact(synthetic):
  entries = report.write_report(synthetic, command='python compare.py x',
                                device='TPU v9')
  assert [e['mode'] for e in entries] == ['sgd', 'freeze']
  sgd, freeze = entries
  assert sgd['seeds'] == [0, 1] and sgd['num_runs'] == 2
  assert sgd['eval_accuracy_mean'] == pytest.approx(0.85)
  assert sgd['eval_accuracy_std'] == pytest.approx(np.std([0.8, 0.9], ddof=1))
  assert sgd['accuracy_diff_vs_sgd_mean'] == 0.0
  assert sgd['speedup_vs_sgd'] == 1.0
  assert sgd['local_flop_fraction_mean'] is None  # field never recorded
  assert sgd['peak_temp_bytes'] is None and sgd['mean_transition'] == 0.0

  assert freeze['seeds'] == [0, 1, 2] and freeze['num_runs'] == 3
  assert freeze['eval_accuracy_mean'] == pytest.approx((0.78 + 0.86 + .99) / 3)
  # Only seeds 0 and 1 have an sgd partner: diffs -0.02 and -0.04.
  assert freeze['paired_seeds'] == [0, 1]
  assert freeze['accuracy_diff_vs_sgd_mean'] == pytest.approx(-0.03)
  assert freeze['accuracy_diff_vs_sgd_std'] == pytest.approx(
      np.std([-0.02, -0.04], ddof=1))
  assert freeze['best_eval_accuracy_mean'] == pytest.approx(
      freeze['eval_accuracy_mean'] + 0.01)
  assert freeze['total_time_s_mean'] == 8.0
  assert freeze['speedup_vs_sgd'] == pytest.approx(11.0 / 8.0)
  assert freeze['train_time_s_mean'] == 4.0
  assert freeze['train_speedup_vs_sgd'] == pytest.approx(8.0 / 4.0)
  # Robust time: each epoch costs the median (train + eval) time of its kind
  # over all runs, k = 0: median(4 x 4.25, 3 x 3.25) = 4.25; k = 3: 1.25.
  assert sgd['robust_time_s_mean'] == pytest.approx(2 * 4.25)
  assert freeze['robust_time_s_mean'] == pytest.approx(4.25 + 1.25)
  assert freeze['robust_speedup_vs_sgd'] == pytest.approx(8.5 / 5.5)
  assert freeze['local_flop_fraction_mean'] == pytest.approx(0.25)
  assert freeze['peak_temp_bytes'] == 100
  assert freeze['mean_transition'] == pytest.approx(1.5)

  on_disk = _load(synthetic)
  assert on_disk['entries'] == json.loads(json.dumps(entries))
  assert on_disk['unfinished_runs'] == [os.path.join('freeze', 'seed_3')]
  assert on_disk['device'] == 'TPU v9'
  assert on_disk['git_commit'] == 'unknown'  # the runs recorded none
  _assert_pngs(synthetic)
  md = open(os.path.join(synthetic, 'comparison.md')).read()
  assert '| freeze | 3 | 2 | 87.67 ± 10.60 | ' in md
  assert '| freeze | 0.8867 | 8.0 | 1.38x |' in md  # details: wall speedup
  assert '`python compare.py x`' in md and 'freeze/seed_3' in md

  # A redraw keeps the recorded command line and device.
  report.write_report(synthetic)
  assert _load(synthetic)['command'] == 'python compare.py x'
  assert _load(synthetic)['device'] == 'TPU v9'


def _holds_seed(workdir, mode, folder_seed, seed, config=None):
  """Makes the run in `mode`'s folder of `folder_seed` one of `seed`: its
  config.json (`config`, or just the seed) and a checkpoint folder."""
  path = runs.run_dir(workdir, mode, folder_seed)
  os.makedirs(os.path.join(path, 'checkpoints', '1'), exist_ok=True)
  with open(os.path.join(path, 'config.json'), 'w') as f:
    json.dump(config_fields.as_dict(modes.mode_config(
        config, mode, seed)) if config else {'seed': seed}, f)
  return path


def test_report_leaves_out_another_seeds_run(synthetic, capsys):
  # sgd/seed_1 holds seed 2's run: paired with freeze seed 1 it would
  # compare two seeds' samples as one.
  path = _holds_seed(synthetic, 'sgd', 1, 2)
  entries = report.write_report(synthetic)
  sgd, freeze = entries
  assert sgd['seeds'] == [0] and freeze['paired_seeds'] == [0]
  warnings = capsys.readouterr().err.splitlines()
  assert warnings[0] == (
      f'warning: {path} holds the run of seed 2, not seed 1 (its '
      f'config.json): left out of the report; move it aside (mv {path} '
      f'{path}.seed_2) and run compare.py again to train the folder\'s own '
      'seed')
  # Moved aside, the folder is no run of the comparison.
  os.rename(path, path + '.seed_2')
  assert report.write_report(synthetic)[0]['seeds'] == [0]
  assert 'seed_2' not in capsys.readouterr().err


def test_no_baseline_gives_none(tmp_path):
  _write_run(str(tmp_path), 'freeze', 0, 0.7, 5.0,
             [{'transition': 1, **_times(1.0)}])
  (entry,) = report.write_report(str(tmp_path))
  assert entry['accuracy_diff_vs_sgd_mean'] is None
  assert entry['speedup_vs_sgd'] is None
  assert entry['eval_accuracy_std'] is None  # one seed: no spread
  assert entry['tta_speedup'] is None
  assert entry['iso_accuracy_speedup'] is None  # no budget runs
  md = open(os.path.join(tmp_path, 'comparison.md')).read()
  assert '| freeze | 1 | 1 | 70.00 ± n/a |' in md


def test_time_to_accuracy_and_tta_speedup(tmp_path):
  """Exact numbers: per-epoch accuracies reach the target at known epochs."""
  workdir = str(tmp_path)

  def write(mode, seed, accs, k_local):
    rows = [{'transition': 0 if e < 2 else k_local, 'eval_accuracy': a,
             'step': 10 * (e + 1), 'step_flops': 1.0,
             **_times(4.0 if e < 2 or not k_local else 2.0)}
            for e, a in enumerate(accs)]
    _write_run(workdir, mode, seed, accs[-1], 10.0, rows)
    # _write_run gives every row the final accuracy: put the curve back.
    path = os.path.join(workdir, mode, f'seed_{seed}', 'metrics.jsonl')
    with open(path, 'w') as f:
      for e, row in enumerate(rows):
        f.write(json.dumps({'epoch': e + 1, **row}) + '\n')

  # sgd ends at 0.80 on both seeds: target 0.795, reached at epoch 4 (16 s).
  for seed in (0, 1):
    write('sgd', seed, [0.5, 0.7, 0.78, 0.80], 0)
  # static: epochs 3-4 are local (2 s each); reaches 0.795 at epoch 3 on
  # seed 0 (8 + 2 = 10 s), at epoch 4 on seed 1 (12 s).
  write('static', 0, [0.5, 0.7, 0.796, 0.79], 3)
  write('static', 1, [0.5, 0.7, 0.78, 0.80], 3)
  # freeze never reaches it on seed 1.
  write('freeze', 0, [0.5, 0.7, 0.80, 0.80], 3)
  write('freeze', 1, [0.5, 0.7, 0.78, 0.79], 3)
  by_mode = {e['mode']: e for e in report.write_report(workdir)}
  assert by_mode['sgd']['target_accuracy'] == pytest.approx(0.795)
  assert by_mode['sgd']['time_to_target_s'] == [16.0, 16.0]
  static = by_mode['static']
  assert static['time_to_target_s'] == [10.0, 12.0]
  assert static['time_to_target_s_mean'] == 11.0
  assert static['tta_speedup'] == pytest.approx(16.0 / 11.0)
  freeze = by_mode['freeze']
  assert freeze['time_to_target_s'] == [10.0, None]
  assert freeze['target_reached'] == '1/2'
  assert freeze['tta_speedup'] is None
  # Paired Δ: (-0.01, 0.0): mean -0.005, 95% CI half-width 12.706 x std/√2.
  assert static['accuracy_diff_vs_sgd_ci95'] == pytest.approx(
      12.706 * np.std([-0.01, 0.0], ddof=1) / np.sqrt(2))
  md = open(os.path.join(workdir, 'comparison.md')).read()
  assert '| 11.0 ± 1.41 | 1.45x |' in md
  assert 'not reached (1/2)' in md
  # An explicit target.
  by_mode = {e['mode']: e for e in report.write_report(workdir, target=0.7)}
  assert by_mode['static']['time_to_target_s'] == [8.0, 8.0]


def test_time_to_accuracy_targets_are_paired_by_seed(tmp_path):
  """Each seed's target is its own sgd run's final accuracy minus 0.5
  points: with sgd ending at 0.80 and 0.70, a target of their mean minus
  0.5 (0.745) would be one sgd never reaches on seed 1."""
  workdir = str(tmp_path)
  curves = {('sgd', 0): [0.6, 0.8], ('sgd', 1): [0.6, 0.7],
            ('static', 0): [0.796, 0.79], ('static', 1): [0.6, 0.69]}
  for (mode, seed), accs in curves.items():
    rows = [{'epoch': e + 1, 'transition': 0 if mode == 'sgd' else 1,
             'eval_accuracy': a, 'step': 10 * (e + 1), 'step_flops': 1.0,
             **_times(4.0 if mode == 'sgd' else 2.0)}
            for e, a in enumerate(accs)]
    _write_run(workdir, mode, seed, accs[-1], 10.0, rows)
    with open(os.path.join(workdir, mode, f'seed_{seed}', 'metrics.jsonl'),
              'w') as f:
      f.writelines(json.dumps(row) + '\n' for row in rows)
  by_mode = {e['mode']: e for e in report.write_report(workdir)}
  sgd, static = by_mode['sgd'], by_mode['static']
  assert sgd['target_accuracy_per_seed'] == pytest.approx(
      {'0': 0.795, '1': 0.695})
  assert sgd['target_accuracy'] == pytest.approx(0.745)
  assert sgd['time_to_target_s'] == [8.0, 8.0]
  # static: 0.796 >= 0.795 after its first epoch (2 s) on seed 0; 0.69 <
  # 0.695 on seed 1: not reached there.
  assert static['time_to_target_s'] == [2.0, None]
  assert static['tta_speedup'] is None


# ------------------------------------------------- SGD's budget frontier


def test_frontier_interpolation_and_its_range():
  costs, accs = [10.0, 20.0, 30.0], [0.90, 0.92, 0.93]
  assert aggregate.frontier_cost(costs, accs, 0.92) == (20.0, None)
  assert aggregate.frontier_cost(costs, accs, 0.91) == pytest.approx(
      (15.0, None))
  # Never extrapolated: the bound and the range's end.
  assert aggregate.frontier_cost(costs, accs, 0.95) == (30.0, '>')
  assert aggregate.frontier_cost(costs, accs, 0.85) == (10.0, '<')
  assert aggregate.frontier_accuracy(costs, accs, 25.0)[0] == pytest.approx(
      0.925)
  assert aggregate.frontier_accuracy(costs, accs, 5.0) == (None, '<')
  assert aggregate.frontier_accuracy(costs, accs, 31.0) == (None, '>')
  # Monotone: a budget below a cheaper one's accuracy is lifted to it
  # (cumulative maximum), in any input order.
  c, a = aggregate.monotone_frontier([30.0, 10.0, 20.0], [0.93, 0.90, 0.89])
  assert list(c) == [10.0, 20.0, 30.0] and list(a) == [0.90, 0.90, 0.93]
  assert aggregate.frontier_cost([10.0, 20.0, 30.0], [0.90, 0.89, 0.93],
                                 0.90) == (10.0, None)


def _run(accuracy, epoch_times, transition=0, steps=10, flops=1.0,
         compile_s=2.0):
  """A loaded run (runs.load_runs' form): one row per epoch."""
  rows = [{'epoch': e + 1, 'step': steps * (e + 1), 'transition': transition,
           'eval_accuracy': accuracy, 'epoch_time_s': t, 'eval_time_s': 0.5,
           'compile_time_s': compile_s if e == 0 else 0.0,
           'step_flops': flops}
          for e, t in enumerate(epoch_times)]
  return {'rows': rows, 'summary': {
      'final_eval_accuracy': accuracy, 'best_eval_accuracy': accuracy,
      'total_time_s': sum(epoch_times), 'compile_time_s': compile_s,
      'num_epochs': len(rows), 'train_epochs': float(len(rows)),
      'num_steps': steps * len(rows), 'num_units': 4,
      'compile_cache_requests': 3, 'compile_cache_hits': 2}}


def _frontier_runs():
  """SGD at 1, 2, 3 epochs of 1 s (costs 1, 2, 3 s), accuracies 0.90,
  0.92, 0.93 (seeds 0.01 apart), and four modes of other kinds of epoch."""
  budgets = {'sgd@1': 0.90, 'sgd@2': 0.92, 'sgd@3': 0.93}
  runs = {mode: {seed: _run(acc + (seed - 0.5) * 0.01, [1.0] * int(mode[-1]))
                 for seed in (0, 1)} for mode, acc in budgets.items()}

  def mode(acc, epoch_time, transition):
    return {seed: _run(acc + (seed - 0.5) * 0.01, [epoch_time] * 2,
                       transition, flops=0.5) for seed in (0, 1)}
  runs['on_frontier'] = mode(0.92, 1.0, 1)  # sgd@2's accuracy and cost
  runs['half_cost'] = mode(0.92, 0.5, 2)    # sgd@2's accuracy, half the cost
  runs['above'] = mode(0.95, 0.5, 3)        # beyond sgd@3's accuracy
  runs['below'] = mode(0.85, 0.5, 4)        # under sgd@1's accuracy
  return runs


def test_iso_accuracy_speedup_against_the_frontier():
  entries, points = aggregate.analyze(_frontier_runs(), resamples=200)
  assert [p['label'] for p in points] == ['sgd@1', 'sgd@2', 'sgd@3']
  assert [p['time_s_mean'] for p in points] == pytest.approx([1.0, 2.0, 3.0])
  assert [p['accuracy_mean'] for p in points] == pytest.approx(
      [0.90, 0.92, 0.93])
  assert [p['flops_mean'] for p in points] == pytest.approx([10, 20, 30])
  assert points[0]['accuracy_std'] == pytest.approx(np.std([.895, .905],
                                                           ddof=1))
  # Compile time apart from the cost; end-to-end adds it and the evals.
  assert points[1]['compile_time_s_mean'] == 2.0
  assert points[1]['end_to_end_time_s_mean'] == pytest.approx(2 + 1 + 2)
  by_mode = {e['mode']: e for e in entries}
  assert list(by_mode) == ['on_frontier', 'half_cost', 'above', 'below']
  on, half = by_mode['on_frontier'], by_mode['half_cost']
  assert on['iso_accuracy_speedup'] == pytest.approx(1.0)
  assert on['vs_frontier']['time']['bound'] is None
  assert on['vs_frontier']['time']['accuracy_diff'] == pytest.approx(0.0)
  # Half the cost (1 s) for sgd@2's accuracy: sgd needs 2 s, 2x.
  assert half['robust_train_time_s_mean'] == pytest.approx(1.0)
  assert half['iso_accuracy_speedup'] == pytest.approx(2.0)
  # At 1 s sgd's frontier is at 0.90: the mode is 2 points above it.
  assert half['vs_frontier']['time']['sgd_accuracy'] == pytest.approx(0.90)
  assert half['vs_frontier']['time']['accuracy_diff'] == pytest.approx(0.02)
  # FLOPs: 20 steps x 0.5 = 10 against sgd@2's 20.
  assert half['vs_frontier']['flops']['speedup'] == pytest.approx(2.0)
  # Seeds paired across modes and budgets: the seeds' offsets cancel, so
  # every resample gives the same ratio.
  assert half['vs_frontier']['time']['speedup_ci95'] == pytest.approx(
      [2.0, 2.0])
  # Out of range: bounds, never extrapolated.
  above = by_mode['above']['vs_frontier']['time']
  assert above['bound'] == '>' and above['speedup'] == pytest.approx(3.0)
  assert above['speedup_ci95_bounds'] == ['>', '>']
  below = by_mode['below']['vs_frontier']['time']
  assert below['bound'] == '<' and below['speedup'] == pytest.approx(1.0)
  assert by_mode['below']['compile_cache_hits'] == 4  # summed over seeds


def test_bootstrap_interval_holds_the_estimate():
  runs = _frontier_runs()
  # Three seeds whose accuracy spread does not follow the budgets'.
  runs['noisy'] = {seed: _run(acc, [0.5] * 2, 2, flops=0.5)
                   for seed, acc in enumerate([0.905, 0.925, 0.915])}
  for mode in ('sgd@1', 'sgd@2', 'sgd@3'):
    runs[mode][2] = _run(runs[mode][0]['summary']['final_eval_accuracy'],
                         [1.0] * int(mode[-1]))
  entries, _ = aggregate.analyze(runs, resamples=500)
  v = {e['mode']: e for e in entries}['noisy']['vs_frontier']['time']
  lo, hi = v['speedup_ci95']
  assert lo < v['speedup'] < hi and v['resamples'] == 500
  lo, hi = v['accuracy_diff_ci95']
  assert lo < v['accuracy_diff'] < hi
  again, _ = aggregate.analyze(runs, resamples=500)  # a fixed RNG seed
  assert {e['mode']: e for e in again}['noisy']['vs_frontier']['time'] == v


def test_a_seed_without_every_budget_is_left_out_of_the_pairing():
  """A seed with the mode's run but not every budget's (a time limit cut
  its runs short) would pair its own accuracy with the other seeds'
  frontier: it is left out, and the estimate is the complete seeds'."""
  runs = _frontier_runs()
  complete = aggregate.analyze(runs, resamples=50)[0]
  runs['half_cost'][2] = _run(0.5, [0.5] * 2, 2, flops=0.5)  # a bad seed
  runs['sgd@3'][2] = _run(0.6, [1.0] * 3)    # ... with one budget of three
  cut = aggregate.analyze(runs, resamples=50)[0]
  want = {e['mode']: e for e in complete}['half_cost']['vs_frontier']['time']
  got = {e['mode']: e for e in cut}['half_cost']['vs_frontier']['time']
  assert got['seeds'] == [0, 1] and got['seeds_left_out'] == [2]
  assert got['paired'] and got['speedup'] == pytest.approx(want['speedup'])
  assert got['accuracy_diff'] == pytest.approx(0.02)
  # The report says how few seeds the interval stands on, and which not.
  cell = report_md._speedup_cell(got)  # pylint: disable=protected-access
  assert cell.endswith("(n=2: the seeds' spread, not a 95% interval) "
                       '(seed 2 left out: not every budget)')
  five = dict(got, seeds=list(range(5)), seeds_left_out=[])
  assert report_md._speedup_cell(five).endswith(']')  # pylint: disable=protected-access
  # No seed with every budget: every seed, unpaired, and said so.
  for seed in (0, 1):
    del runs['sgd@3'][seed]
  got = {e['mode']: e for e in aggregate.analyze(runs, resamples=50)[0]
         }['half_cost']['vs_frontier']['time']
  assert not got['paired'] and got['seeds'] == [0, 1, 2]


def _write_runs(workdir, runs_by_mode):
  """Loaded runs back on disk, as the report reads them."""
  for mode, by_seed in runs_by_mode.items():
    for seed, run in by_seed.items():
      path = runs.run_dir(workdir, mode, seed)
      os.makedirs(path)
      with open(os.path.join(path, 'metrics.jsonl'), 'w') as f:
        f.writelines(json.dumps(r) + '\n' for r in run['rows'])
      with open(os.path.join(path, 'summary.json'), 'w') as f:
        json.dump(run['summary'], f)


def test_report_with_budgets_and_without(tmp_path):
  workdir = str(tmp_path)
  _write_runs(workdir, _frontier_runs())
  entries = report.write_report(workdir)
  on_disk = _load(workdir)
  assert [p['label'] for p in on_disk['frontier']] == [
      'sgd@1', 'sgd@2', 'sgd@3']
  assert 'runs' not in on_disk['frontier'][0]
  md = open(os.path.join(workdir, 'comparison.md')).read()
  assert '**2.00x** [2.00, 2.00]' in md
  assert "> 3.00x** [> 3.00, > 3.00] (accuracy above the largest" in md
  assert 'paired bootstrap over the seeds' in md and '### SGD\'s frontier' in md
  assert '| sgd@2 | 2 | 2 | 92.00 ± 0.71 |' in md
  _assert_pngs(workdir)
  assert report_md.headline_table(entries).startswith(
      '| mode | seeds | epochs | accuracy % (mean ± std) | cost')
  # Without budget runs: today's report (time to target), no frontier.
  for mode in ('sgd@1', 'sgd@2', 'sgd@3'):
    shutil.rmtree(os.path.join(workdir, mode))
  entries = report.write_report(workdir)
  assert _load(workdir)['frontier'] is None
  assert all(e['vs_frontier'] is None for e in entries)
  assert 'speedup to target' in report_md.headline_table(entries)


def _with_configs(runs, dtype='bfloat16'):
  """The runs' configs: their dtype, and oja every 4th step where k > 0."""
  for by_seed in runs.values():
    for run in by_seed.values():
      run['summary']['config'] = {'dtype': dtype, 'local': {
          'rule': 'oja', 'hebbian_every': 4, 'hebbian_fraction': 0.25}}
  return runs


def test_model_flop_utilization_of_each_kind_of_step():
  """MFU per kind of epoch: the rows' counted FLOPs per step over the
  median time per step of the kind, over the card's peak in the runs'
  dtype; none on a CPU or where the runs mix dtypes."""
  runs = _with_configs(_frontier_runs())
  util = aggregate.step_utilization(runs, 'NVIDIA H200')
  assert [u['kind'] for u in util] == ['k=0 (SGD)'] + [
      f'k={k}, oja, Hebbian every 4 steps' for k in (1, 2, 3, 4)]
  sgd, half = util[0], util[2]
  # SGD: 1 s epochs of 10 steps, 1 FLOP a step; 2 x (1 + 2 + 3) epochs.
  assert sgd['epochs'] == 12 and sgd['step_time_s'] == pytest.approx(0.1)
  assert sgd['mfu'] == pytest.approx(1.0 / 0.1 / 989e12)
  # k = 2: 0.5 s epochs, 0.5 FLOP a step.
  assert half['step_time_s'] == pytest.approx(0.05)
  assert half['mfu'] == pytest.approx(0.5 / 0.05 / 989e12)
  assert half['flops_per_s'] == pytest.approx(10.0)
  assert aggregate.step_utilization(runs, 'cpu') == []
  runs['sgd@1'][0]['summary']['config']['dtype'] = 'float32'
  assert aggregate.step_utilization(runs, 'NVIDIA H200') == []


def test_report_shows_utilization_on_a_known_card(tmp_path):
  workdir = str(tmp_path)
  _write_runs(workdir, _with_configs(_frontier_runs()))
  report.write_report(workdir, device='NVIDIA H200')
  md = open(os.path.join(workdir, 'comparison.md')).read()
  assert '### Model-FLOP utilization of each kind of step' in md
  assert '| k=0 (SGD) | 12 | 0.0 | 100.00 | 0 | 0.0% |' in md
  assert len(_load(workdir)['step_utilization']) == 5
  report.write_report(workdir, device='cpu')
  assert 'utilization' not in open(os.path.join(workdir,
                                                'comparison.md')).read()
  assert _load(workdir)['step_utilization'] == []


def test_budgets_parse_to_fractional_run_lengths():
  assert modes.parse_budgets(['13', '8', '12.6', '8']) == [8, 12.6, 13]
  with pytest.raises(UserError, match='--sgd_budgets'):
    modes.parse_budgets(['0'])
  cfg = modes.mode_config(quickstart.get_config(), 'sgd', 0,
                               epochs=12.6)
  assert (cfg.num_epochs, cfg.last_epoch_fraction) == (13, 0.6)
  # Fields derived from num_epochs follow the run's length.
  assert cfg.selection.warmup_epochs == 13 * 3 // 5
  assert modes.budget_mode(12.6) == 'sgd@12.6'
  assert modes.budget_mode(8.0) == 'sgd@8'


def test_unknown_mode_lists_valid_ones(tmp_path):
  with pytest.raises(UserError, match=r"'bogus'.*valid modes: sgd, static, "
                     r'dynamic, freeze, autofreeze'):
    comparison.run_comparison(quickstart.get_config(), str(tmp_path),
                              ['sgd', 'bogus'], 1)
  assert not os.listdir(tmp_path)  # rejected before any training


def test_modes_apply_their_overrides():
  cfg = modes.mode_config(quickstart.get_config(), 'freeze', seed=7)
  assert (cfg.selection.mode, cfg.selection.ramp, cfg.local.rule,
          cfg.seed) == ('static', 'cubic', 'frozen', 7)


# ------------------------------------------------------ real training runs


@pytest.fixture(scope='module')
def compared(tmp_path_factory):
  """sgd and freeze, two seeds each, on digits: real runs, a few seconds."""
  workdir = str(tmp_path_factory.mktemp('compare'))
  config = quickstart.get_config()
  config.data.image_size = 16
  config.num_epochs = 2
  config.log.progress = False
  config.log.tensorboard = False
  entries = comparison.run_comparison(config, workdir, ['sgd', 'freeze'], 2,
                                      command='python compare.py --seeds=2')
  return workdir, entries


@pytest.mark.slow  # 4 training runs (the fixture)
def test_comparison_of_real_runs(compared):
  workdir, entries = compared
  by_mode = {e['mode']: e for e in _load(workdir)['entries']}
  assert list(by_mode) == ['sgd', 'freeze']
  for e in by_mode.values():
    assert all(e[key] is not None for key in REQUIRED)
    assert e['num_runs'] == 2 and e['seeds'] == [0, 1]
  sgd, freeze = by_mode['sgd'], by_mode['freeze']
  assert sgd['speedup_vs_sgd'] == 1.0
  assert sgd['accuracy_diff_vs_sgd_mean'] == 0.0
  # The overrides reached training: freeze moved units out of the backward
  # pass (k = k_max in the last epoch), sgd never did.
  assert sgd['mean_transition'] == 0 and freeze['mean_transition'] > 0

  summaries = {}
  for mode in ('sgd', 'freeze'):
    for seed in (0, 1):
      with open(os.path.join(runs.run_dir(workdir, mode, seed),
                             'summary.json')) as f:
        summaries[mode, seed] = json.load(f)
      assert summaries[mode, seed]['config']['seed'] == seed
  assert summaries['freeze', 0]['config']['local']['rule'] == 'frozen'
  diffs = [summaries['freeze', s]['final_eval_accuracy']
           - summaries['sgd', s]['final_eval_accuracy'] for s in (0, 1)]
  assert freeze['accuracy_diff_vs_sgd_mean'] == pytest.approx(np.mean(diffs))
  assert freeze['speedup_vs_sgd'] == pytest.approx(
      np.mean([summaries['sgd', s]['total_time_s'] for s in (0, 1)])
      / np.mean([summaries['freeze', s]['total_time_s'] for s in (0, 1)]))

  _assert_pngs(workdir)
  md = open(os.path.join(workdir, 'comparison.md')).read()
  for mode in ('sgd', 'freeze'):
    assert f'| {mode} | 2 | ' in md
  for name in plots.PLOTS.values():
    assert f']({name})' in md


@pytest.mark.slow  # 3 training runs
def test_sgd_same_time_gets_the_matched_modes_cost(tmp_path):
  config = quickstart.get_config()
  config.data.image_size = 16
  config.num_epochs = 4
  config.selection.warmup_epochs = 2
  config.log.progress = False
  config.log.tensorboard = False
  workdir = str(tmp_path)
  with pytest.raises(UserError, match='list static in --modes'):
    comparison.run_comparison(config, workdir, ['sgd', 'sgd_same_time'], 1)
  assert not os.path.exists(os.path.join(workdir, 'sgd'))  # nothing trained
  comparison.run_comparison(config, workdir, ['sgd', 'static'], 1)
  # Alone: the sgd and static runs it matches are finished in the workdir.
  entries = comparison.run_comparison(
      config, workdir, ['sgd_same_time'], 1, match_mode='static',
      match_cost='flops')
  with open(os.path.join(workdir, 'sgd_same_time', 'match.json')) as f:
    match = json.load(f)
  flops = {}
  for mode in ('sgd', 'static'):
    rows = [json.loads(line) for line in open(os.path.join(
        runs.run_dir(workdir, mode, 0), 'metrics.jsonl'))]
    steps = rows[0]['step']
    flops[mode] = sum(r['step_flops'] * steps for r in rows)
  assert match['cost_ratio'] == pytest.approx(flops['static'] / flops['sgd'])
  assert 0.5 < match['cost_ratio'] < 1
  # Matched to the step, not to whole epochs.
  assert match['steps'] == round(4 * match['cost_ratio'] * steps)
  assert match['epochs'] == pytest.approx(match['steps'] / steps)
  assert match['num_epochs'] == int(np.ceil(match['epochs']))
  same = {e['mode']: e for e in entries}['sgd_same_time']
  assert same['num_epochs'] == match['num_epochs'] and same['match'] == match
  assert same['train_epochs'] == pytest.approx(match['epochs'])
  rows = [json.loads(line) for line in open(os.path.join(
      runs.run_dir(workdir, 'sgd_same_time', 0), 'metrics.jsonl'))]
  assert rows[-1]['step'] == match['steps']
  assert same['mean_transition'] == 0


@pytest.mark.slow  # 4 training runs
def test_comparison_with_sgd_budgets(tmp_path):
  config = quickstart.get_config()
  config.data.image_size = 16
  config.num_epochs = 2
  config.log.progress = False
  config.log.tensorboard = False
  workdir = str(tmp_path)
  entries = comparison.run_comparison(config, workdir, ['sgd', 'freeze'], 1,
                                      sgd_budgets=['1.5', '1'])
  frontier = _load(workdir)['frontier']
  # sgd (2 epochs) is a point of the frontier too.
  assert [(p['label'], p['epochs']) for p in frontier] == [
      ('sgd@1', 1.0), ('sgd@1.5', 1.5), ('sgd', 2.0)]
  rows = [json.loads(line) for line in open(os.path.join(
      runs.run_dir(workdir, 'sgd@1.5', 0), 'metrics.jsonl'))]
  assert rows[-1]['step'] == round(1.5 * rows[0]['step'])
  assert [p['flops_mean'] for p in frontier] == pytest.approx(
      [frontier[2]['flops_mean'] * f for f in (0.5, 0.75, 1.0)])
  by_mode = {e['mode']: e for e in entries}
  assert list(by_mode) == ['sgd', 'freeze']  # budgets: the frontier's
  sgd = by_mode['sgd']['vs_frontier']['time']
  assert sgd['speedup'] <= 1.0 + 1e-9  # sgd cannot beat its own frontier
  freeze = by_mode['freeze']['vs_frontier']['time']
  assert freeze['speedup'] > 0 and len(freeze['speedup_ci95']) == 2
  md = open(os.path.join(workdir, 'comparison.md')).read()
  assert '| sgd@1.5 | 1.5 | 1 |' in md
  _assert_pngs(workdir)


def _compare_cli(*args):
  return subprocess.run([sys.executable, os.path.join(ROOT, 'compare.py'),
                         *args], capture_output=True, text=True, cwd=ROOT,
                        timeout=120)


@pytest.mark.slow  # the fixture's runs, then a subprocess
def test_report_only_cli_redraws(compared):
  workdir, entries = compared
  for name in (*plots.PLOTS.values(), 'comparison.md'):
    os.remove(os.path.join(workdir, name))
  out = _compare_cli(f'--workdir={workdir}', '--report_only')
  assert out.returncode == 0, out.stderr
  _assert_pngs(workdir)
  redrawn = _load(workdir)
  assert redrawn['command'] == 'python compare.py --seeds=2'
  assert redrawn['entries'] == json.loads(json.dumps(entries))
  assert os.path.exists(os.path.join(workdir, 'comparison.md'))


def test_report_only_warns_of_unfinished_runs(synthetic):
  # comparison.md lists freeze/seed_3 as not counted; the console says so.
  out = _compare_cli(f'--workdir={synthetic}', '--report_only')
  assert out.returncode == 0, out.stderr
  assert out.stderr.splitlines() == [
      'warning: 1 run is unfinished (no summary.json yet: freeze/seed_3): '
      'the report covers the finished ones; run compare.py with its mode '
      'and seed, without --report_only, to finish it']
  assert 'freeze/seed_3' in open(os.path.join(synthetic,
                                              'comparison.md')).read()


def test_report_only_on_empty_dir_is_a_clear_error(tmp_path):
  out = _compare_cli(f'--workdir={tmp_path}', '--report_only')
  assert out.returncode == 2
  assert 'holds no finished run' in out.stderr
  assert 'without --report_only first' in out.stderr
  assert 'Traceback' not in out.stderr


# ------------------------------------- reruns: skipped, refused, validated


def _small_config(**overrides):
  return small_config(**{'data.train_per_class': 10, 'batch_size': 48,
                         'num_epochs': 1, **overrides})


def test_rerun_skips_finished_runs_and_refuses_changed_ones(tmp_path,
                                                            monkeypatch):
  workdir = str(tmp_path)
  comparison.run_comparison(_small_config(), workdir, ['sgd'], 1)
  summary = os.path.join(runs.run_dir(workdir, 'sgd', 0),
                         'summary.json')
  stamp = os.stat(summary).st_mtime_ns
  trained = []
  real = comparison.train_lib.train_and_evaluate
  monkeypatch.setattr(comparison.train_lib, 'train_and_evaluate',
                      lambda cfg, path: trained.append(path) or real(cfg,
                                                                     path))
  # The same comparison again: the finished run is neither reloaded nor
  # rewritten.
  comparison.run_comparison(_small_config(), workdir, ['sgd'], 1)
  assert trained == [] and os.stat(summary).st_mtime_ns == stamp
  # Another epoch count: refused before any run trains (the new freeze
  # run included), never relabelled.
  with pytest.raises(UserError) as err:
    comparison.run_comparison(_small_config(num_epochs=2), workdir,
                              ['freeze', 'sgd'], 1)
  message = str(err.value)
  assert '\n' not in message
  assert 'holds a run of another config: num_epochs 1 -> 2' in message
  assert trained == [] and os.stat(summary).st_mtime_ns == stamp
  assert not os.path.exists(os.path.join(workdir, 'freeze'))


def test_folder_of_another_seeds_run_is_refused(tmp_path):
  # sgd/seed_0 holds a finished run of seed 1. resume_allow=seed would make
  # it stand for seed 0 in every pair: refused before anything trains.
  workdir = str(tmp_path)
  _write_run(workdir, 'sgd', 0, 0.9, 10.0, [{'transition': 0, **_times(4)}])
  path = _holds_seed(workdir, 'sgd', 0, 1, config=_small_config())

  def refused(record):
    with pytest.raises(UserError) as err:
      comparison.run_comparison(_small_config(), workdir, ['sgd', 'freeze'],
                                1)
    assert str(err.value) == (
        f'{path} holds the run of seed 1, not seed 0 (its {record}): move it '
        f'aside (mv {path} {path}.seed_1) or use another --workdir; '
        'resume_allow cannot make one seed\'s run stand for another')
    assert not os.path.exists(os.path.join(workdir, 'freeze'))

  refused('config.json')
  # An older version's resume_allow=seed rewrote config.json to the new
  # seed; run.json still records the seed the run started with.
  _holds_seed(workdir, 'sgd', 0, 0, config=_small_config())
  with open(os.path.join(path, 'run.json'), 'w') as f:
    json.dump({'resumed_with_changes': [
        {'after_epoch': 1, 'changes': {'seed': [1, 0]}}]}, f)
  refused('run.json')


def test_compare_cli_refuses_another_seeds_folder_in_one_line(tmp_path):
  path = _holds_seed(str(tmp_path), 'sgd', 0, 1)
  out = _compare_cli(f'--workdir={tmp_path}', '--modes=sgd', '--seeds=1')
  assert out.returncode == 2 and 'Traceback' not in out.stderr
  assert out.stderr.strip().splitlines() == [
      f'error: {path} holds the run of seed 1, not seed 0 (its config.json): '
      f'move it aside (mv {path} {path}.seed_1) or use another --workdir; '
      'resume_allow cannot make one seed\'s run stand for another']


def test_bad_selection_field_is_refused_before_sgd_trains(tmp_path):
  config = _small_config(**{'selection.ramp': 'bogus'})
  with pytest.raises(UserError, match=r"config.selection.ramp='bogus' is "
                     'out of range'):
    comparison.run_comparison(config, str(tmp_path), ['sgd', 'static'], 1)
  assert not os.listdir(tmp_path)


def test_forks_share_the_sgd_warm_up(tmp_path):
  # What benchmarks/cifar_subset_comparison.sh does: the static runs start
  # from their seed's sgd run after its warm-up epoch, recorded as forks.
  workdir = str(tmp_path)
  config = _small_config(num_epochs=2, **{'selection.warmup_epochs': 1})
  comparison.run_comparison(config, workdir, ['sgd'], 2)
  config.init_from = os.path.join(workdir, 'sgd', 'seed_{seed}') + ':1'
  comparison.run_comparison(config, workdir, ['static'], 2)
  for seed in (0, 1):
    sgd = runs.run_dir(workdir, 'sgd', seed)
    static = runs.run_dir(workdir, 'static', seed)
    with open(os.path.join(static, 'summary.json')) as f:
      fork = json.load(f)['fork']
    assert fork['parent'] == os.path.abspath(sgd) and fork['epoch'] == 1
    assert fork['differs_from_parent']['selection.mode'] == ['sgd', 'static']
    rows = [json.loads(line) for line in open(os.path.join(
        static, 'metrics.jsonl'))]
    first = json.loads(open(os.path.join(sgd, 'metrics.jsonl')).readline())
    assert rows[0] == first and [r['transition'] for r in rows] == [0, 2]
  # Rerun: every run is finished with its config and skipped.
  comparison.run_comparison(config, workdir, ['static'], 2)


def test_the_schedule_furthest_above_the_frontier_by_time_else_flops():
  """aggregate.furthest_above_frontier ranks by time where a mode's time
  lies within the budgets', else by FLOPs (a CPU too noisy for tiny runs'
  times); None when neither ranks any."""
  def vs(diff):
    return {'accuracy_diff': diff, 'speedup': 1.0 + diff}

  out_of_range = {'accuracy_diff': None, 'speedup': None}
  entries = [
      {'mode': 'sgd', 'vs_frontier': {'time': vs(0.0), 'flops': vs(0.0)}},
      {'mode': 'a', 'vs_frontier': {'time': out_of_range,
                                    'flops': vs(0.01)}},
      {'mode': 'b', 'vs_frontier': {'time': out_of_range,
                                    'flops': vs(0.02)}},
      {'mode': 'c', 'vs_frontier': None}]  # no budget runs
  best = aggregate.furthest_above_frontier(entries, ['a', 'b', 'c'])
  assert (best['mode'], best['cost']) == ('b', 'flops')
  assert best['ranked'] == [(0.02, 'b'), (0.01, 'a')]
  entries[1]['vs_frontier']['time'] = vs(-0.05)  # a's time is in range
  best = aggregate.furthest_above_frontier(entries, ['a', 'b'])
  assert (best['mode'], best['cost'], best['iso_accuracy_speedup']) == (
      'a', 'time', 0.95)
  # In range on neither axis: none ranked (sgd's entry is not asked about).
  for e in entries[1:3]:
    e['vs_frontier'] = {'time': out_of_range, 'flops': out_of_range}
  assert aggregate.furthest_above_frontier(entries, ['a', 'b', 'c']) is None
