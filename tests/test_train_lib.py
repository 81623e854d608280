"""End-to-end runs of the trainer on the real (bundled) digits data."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from localsgd_jax import train_lib
from localsgd_jax import train_step as ts
from localsgd_jax.errors import UserError

from run_helpers import metrics_lines
from run_helpers import small_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIME_FIELDS = {'epoch_time_s', 'eval_time_s', 'compile_time_s',
               'images_per_s'}


def _config(**overrides):
  return small_config(**{
      'selection.mode': 'sgd',  # the quickstart's static k where asked
      'num_epochs': 3, 'log.tensorboard': True, 'log.check_finite_every': 5,
      **overrides})


def test_run_writes_all_outputs(tmp_path):
  summary = train_lib.train_and_evaluate(_config(), str(tmp_path))
  rows = metrics_lines(tmp_path)
  assert [r['epoch'] for r in rows] == [1, 2, 3]  # completed epochs
  for field in ('epoch', 'step', 'train_loss', 'train_accuracy',
                'eval_accuracy', 'eval_loss', 'epoch_time_s',
                'compile_time_s', 'images_per_s', 'transition'):
    assert field in rows[0]
  assert rows[0]['eval_split'] == 'test'
  assert rows[0]['compile_time_s'] > 0 and rows[1]['compile_time_s'] == 0
  assert rows[-1]['eval_accuracy'] > 0.8  # digits: a real network learns
  with open(tmp_path / 'summary.json') as f:
    on_disk = json.load(f)
  for field in ('final_eval_accuracy', 'best_eval_accuracy', 'eval_split',
                'total_time_s', 'compile_time_s', 'config'):
    assert on_disk[field] == summary[field]
  assert on_disk['config']['model']['name'] == 'tiny'
  assert on_disk['device_kind'] == jax.devices()[0].device_kind  # e.g. 'cpu'
  assert os.listdir(tmp_path / 'tb')[0].startswith('events.out.tfevents')
  assert (tmp_path / 'config.json').exists()
  assert (tmp_path / 'git_commit.txt').read_text().strip()


def test_fixed_transition_still_learns(tmp_path):
  config = _config(**{'selection.mode': 'static', 'selection.table': '0:2',
                      'local.rule': 'gha'})
  train_lib.train_and_evaluate(config, str(tmp_path))
  rows = metrics_lines(tmp_path)
  assert [r['transition'] for r in rows] == [2, 2, 2]
  assert all(r['local_lr'] > 0 for r in rows)
  assert rows[-1]['eval_accuracy'] > 0.6


def test_eval_every_n_epochs_and_always_the_last(tmp_path):
  train_lib.train_and_evaluate(_config(**{'num_epochs': 3,
                                          'eval_every_epochs': 2}),
                               str(tmp_path))
  rows = metrics_lines(tmp_path)
  assert ['eval_accuracy' in r for r in rows] == [False, True, True]
  with open(tmp_path / 'summary.json') as f:
    assert json.load(f)['final_eval_accuracy'] == rows[-1]['eval_accuracy']


def _train_seeing_costs(config, workdir):
  """Trains `config`; returns the last epoch's program counts and the XLA
  costs of each program, as `TrainLoop.weighted_costs` saw them."""
  from localsgd_jax import loop as loop_lib  # pylint: disable=g-import-not-at-top
  seen = {}
  original = loop_lib.TrainLoop.weighted_costs

  def spy(self, result, state):
    seen['counts'] = dict(result.program_counts)
    seen['costs'] = {key: self.step_costs(key, state)
                     for key in result.program_counts}
    return original(self, result, state)

  loop_lib.TrainLoop.weighted_costs = spy
  try:
    train_lib.train_and_evaluate(config, str(workdir))
  finally:
    loop_lib.TrainLoop.weighted_costs = original
  return seen


def test_step_costs_weight_hebbian_and_plain_steps(tmp_path):
  # k = 2 from the start, the Hebbian GEMM every 3rd step: the epoch's
  # counts are the step-weighted mean of the two compiled programs.
  config = _config(**{'num_epochs': 1, 'selection.mode': 'static',
                      'selection.table': '0:2', 'local.hebbian_every': 3})
  seen = _train_seeing_costs(config, tmp_path)
  row, = metrics_lines(tmp_path)
  counts = seen['counts']
  steps = row['step']
  assert counts == {(2, True): -(-steps // 3), (2, False): steps - -(-steps // 3)}
  heb, plain = seen['costs'][(2, True)], seen['costs'][(2, False)]
  assert heb['step_flops'] > plain['step_flops']  # the Hebbian GEMMs
  want = sum(seen['costs'][key]['step_flops'] * n
             for key, n in counts.items()) / steps
  assert row['step_flops'] == pytest.approx(want)
  assert 0 < plain['local_flop_fraction'] < heb['local_flop_fraction']


def test_frozen_units_compile_one_program_per_k(tmp_path, capsys):
  """The frozen rule has no Hebbian step: every step at k uses one program
  (not a 'Hebbian' one every m-th step that would do the same)."""
  config = _config(**{'num_epochs': 1, 'selection.mode': 'static',
                      'selection.table': '0:2', 'local.rule': 'frozen'})
  seen = _train_seeing_costs(config, tmp_path)
  row, = metrics_lines(tmp_path)
  assert seen['counts'] == {(2, False): row['step']}
  out = capsys.readouterr().out
  assert 'Compiling the step for k=2 (units 0..1 frozen: forward only)' in out
  assert 'Hebbian' not in out


def test_steady_state_steps_transfer_nothing_implicitly(tmp_path):
  """Per step the loop uploads and fetches nothing but the deliberate
  finite checks (explicit `device_get`s), so the device never waits on it."""
  from localsgd_jax import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  config = _config(**{'selection.mode': 'static', 'selection.table': '0:0,1:2',
                      'local.hebbian_every': 2})
  parts = train_lib.build(config)
  state, steps = parts.state, parts.steps_per_epoch

  def run(epoch):
    progress = metrics_lib.Progress(epoch, 3, steps, False)
    return parts.loop.run_epoch(state, epoch, parts.selector, progress,
                                lambda *a: AssertionError(a))

  state, _ = run(0)
  state, _ = run(1)  # compiles k = 2 with and without the Hebbian GEMM
  with jax.transfer_guard('disallow'):
    state, result = run(2)
  assert result.compile_time_s == 0
  assert result.program_counts == {(2, True): steps - steps // 2,
                                   (2, False): steps // 2}
  assert np.all(np.isfinite(result.metrics['loss']))


def test_nan_parameters_stop_the_run(tmp_path):
  # A huge local learning rate makes the local kernels inf while the loss
  # can stay finite for a while: the check looks at the parameters too.
  config = _config(**{'selection.mode': 'static', 'selection.table': '0:2',
                      'local.learning_rate': 1e38, 'local.normalize': False,
                      'local.weak_supervision': 'none'})
  with pytest.raises(UserError, match=r'(NaN or inf|loss became)'):
    train_lib.train_and_evaluate(config, str(tmp_path))
  assert not (tmp_path / 'checkpoints' / '1').exists()


def test_nan_parameters_keep_the_last_good_checkpoint(tmp_path):
  # Epoch 1 is SGD and checkpointed; in epoch 2 the first Hebbian step
  # makes the local kernels inf while that step's loss (computed before the
  # update) is finite. The check after that step stops the run: the bad
  # state reaches neither a checkpoint nor metrics.jsonl.
  config = _config(**{'num_epochs': 2, 'selection.mode': 'static',
                      'selection.table': '0:0,1:2',
                      'local.learning_rate': 1e38, 'local.normalize': False,
                      'local.weak_supervision': 'none',
                      'log.check_finite_every': 1})
  with pytest.raises(UserError, match=r'a parameter became NaN or inf by '
                     r'step \d+ \(the loss was still finite\) \(epoch 2\); '
                     r'.*checkpoint after epoch 1 is kept'):
    train_lib.train_and_evaluate(config, str(tmp_path))
  assert os.listdir(tmp_path / 'checkpoints') == ['1']
  assert [r['epoch'] for r in metrics_lines(tmp_path)] == [1]
  assert np.isfinite(metrics_lines(tmp_path)[0]['train_loss'])
  params, batch_stats = _final_params(tmp_path)
  assert all(np.all(np.isfinite(leaf)) for leaf in
             jax.tree.leaves((params, batch_stats)))
  assert not (tmp_path / 'run.lock').exists()


@pytest.mark.slow  # two runs, the first compiling into a fresh cache
def test_compilation_cache_serves_a_second_run(tmp_path):
  cache = tmp_path / 'xla'
  config = _config(**{'num_epochs': 1, 'compile_cache_dir': str(cache)})
  first = train_lib.train_and_evaluate(config, str(tmp_path / 'a'))
  assert any(cache.iterdir())
  second = train_lib.train_and_evaluate(config, str(tmp_path / 'b'))
  # Every program the second run asks for is loaded, none compiled again
  # (the time it saves is benchmarks/loop_bench's to measure, not a test's).
  assert first['compile_cache_requests'] > 0 == first['compile_cache_hits']
  # (Fewer requests: programs this process holds compiled are not asked for.)
  assert second['compile_cache_hits'] == second['compile_cache_requests'] > 0
  assert second['final_eval_accuracy'] == first['final_eval_accuracy']


@pytest.mark.slow  # three short runs
def test_one_train_step_program_serves_every_schedule(tmp_path):
  """The learning rates are data of the step, not constants of its program:
  runs that differ in peak rate, schedule and length share one compiled
  step (one `jit_loop_step` in the compilation cache), and each run's
  rates follow its own schedule."""
  from localsgd_jax import optim  # pylint: disable=g-import-not-at-top
  cache = tmp_path / 'xla'
  base = {'selection.mode': 'sgd', 'compile_cache_dir': str(cache)}
  runs = [{'num_epochs': 1},
          {'num_epochs': 2, 'optim.learning_rate': 0.3,
           'optim.schedule': 'triangular', 'optim.warmup_epochs': 0.0},
          {'num_epochs': 2, 'last_epoch_fraction': 0.5,
           'optim.schedule': 'constant'}]
  for i, overrides in enumerate(runs):
    config = _config(**base, **overrides)
    summary = train_lib.train_and_evaluate(config, str(tmp_path / str(i)))
    steps_per_epoch = metrics_lines(tmp_path / str(i))[0]['step']
    schedule = optim.learning_rate_schedule(
        config.optim, steps_per_epoch,
        summary['num_steps'] / steps_per_epoch)
    for row in metrics_lines(tmp_path / str(i)):  # the epoch's last step
      assert row['learning_rate'] == pytest.approx(
          float(schedule(row['step'] - 1)), rel=1e-6)
  assert len(list(cache.glob('jit_loop_step*'))) == 1


def test_dynamic_mode_decides_every_n_steps(tmp_path):
  # Every unit counts as settled (settle_fraction 1): the boundary advances
  # one unit per 5-step period up to k_max, inside the first epoch.
  config = _config(**{
      'num_epochs': 2, 'selection.mode': 'dynamic',
      'selection.every_steps': 5, 'selection.warmup_epochs': 0,
      'selection.settle_fraction': 1.0, 'selection.max_advance': 1,
      'selection.min_hold_epochs': 0.0, 'selection.retreat': False,
      'selection.k_max': 2})
  train_lib.train_and_evaluate(config, str(tmp_path))
  first, second = metrics_lines(tmp_path)
  steps = first['step']
  assert first['transition'] == 0 and second['transition'] == 2
  assert first['transitions'] == [[0, 0], [5, 1], [10, 2]]
  assert second['transitions'] == [[steps, 2]]
  periods = -(-steps // 5)  # the last period is the epoch's remainder
  assert first['selection'].split(', ') == (
      ['advance', 'advance'] + ['hold'] * (periods - 2))
  # Step costs are the step-weighted mean over the k's the epoch used.
  assert 0 < first['local_flop_fraction'] < second['local_flop_fraction']
  assert first['step_flops'] > second['step_flops']
  # The transition unit's update statistic is measured (unit 2 learns by SGD).
  assert second['transition_update'] > 0


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path):
  config = _config(**{'optim.learning_rate': 1e30, 'optim.warmup_epochs': 0,
                      'optim.schedule': 'constant'})
  with pytest.raises(UserError, match=r'training loss became (nan|inf) at '
                     r'step \d+ \(epoch 1\).*no checkpoint'):
    train_lib.train_and_evaluate(config, str(tmp_path))


@pytest.mark.parametrize('key,value,match', [
    ('num_epochs', 0, 'config.num_epochs=0 is out of range'),
    ('local.hebbian_fraction', 0.3, r'1/m for an integer'),
    ('local.rule', 'magic', 'hebb, oja, gha, frozen'),
    ('model.name', 'resnet7', 'Valid models: .*resnet20'),
    ('data.name', 'mnist', 'cifar10, cifar100, digits'),
    ('optim.ema_decay', 1.0, r'optim.ema_decay=1.0 is out of range.*0: no'),
])
def test_bad_config_is_a_clear_error(tmp_path, key, value, match):
  with pytest.raises(UserError, match=match):
    train_lib.train_and_evaluate(_config(**{key: value}), str(tmp_path))


def _train_cmd(workdir, *flags):
  return [sys.executable, os.path.join(ROOT, 'train.py'),
          f'--workdir={workdir}', '--config.data.image_size=16',
          '--config.num_epochs=3', '--config.log.progress=false', *flags]


def test_cli_error_has_no_traceback(tmp_path):
  out = subprocess.run(_train_cmd(tmp_path, '--config.model.name=resnet7'),
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert out.returncode == 2
  assert 'Valid models' in out.stderr and 'Traceback' not in out.stderr


def _final_params(workdir):
  mngr = ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'),
                               item_names=('state', 'host'))
  state = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(
      state=ocp.args.StandardRestore()))['state']
  return state['params'], state['batch_stats']


@pytest.mark.slow  # three training subprocesses
def test_sigkill_then_resume_is_bit_identical(tmp_path):
  flags = ('--config.selection.mode=static', '--config.local.rule=gha')
  ref, crashed = tmp_path / 'ref', tmp_path / 'crashed'
  subprocess.run(_train_cmd(ref, *flags), check=True, cwd=ROOT, timeout=600,
                 capture_output=True)
  proc = subprocess.Popen(_train_cmd(crashed, *flags), cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  first = crashed / 'checkpoints' / '1'
  while not first.exists() and proc.poll() is None:
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)  # mid-epoch 2, after the first checkpoint
  proc.wait()
  assert len(metrics_lines(crashed)) < 3  # it really died before finishing
  out = subprocess.run(_train_cmd(crashed, *flags), check=True, cwd=ROOT,
                       timeout=600, capture_output=True, text=True)
  assert 'Resuming from the checkpoint after epoch' in out.stdout

  def strip(rows):
    return [{k: v for k, v in r.items() if k not in TIME_FIELDS}
            for r in rows]
  assert strip(metrics_lines(crashed)) == strip(metrics_lines(ref))
  jax.tree.map(np.testing.assert_array_equal, _final_params(crashed),
               _final_params(ref))


_LOCAL_FROM_EPOCH_2 = {'selection.mode': 'static', 'selection.table': '0:0,1:2',
                       'checkpoint.keep': 3}


@pytest.mark.slow  # two runs: 3 epochs, then 1 resumed
def test_local_filter_change_is_logged_and_survives_resume(tmp_path):
  """Each local unit's filter angle and change since its local phase began
  (epoch 2 on) in the rows, TensorBoard and summary.json; resumed from the
  checkpoint after epoch 2 (inside the phase), epoch 3 measures from the
  same start kernels, restored from the checkpoint: the same rows."""
  from test_metrics import read_events  # pylint: disable=g-import-not-at-top
  overrides = dict(_LOCAL_FROM_EPOCH_2, **{'local.rule': 'oja'})
  ref = tmp_path / 'ref'
  summary = train_lib.train_and_evaluate(_config(**overrides), str(ref))
  rows = metrics_lines(ref)
  assert rows[0]['local_filter_angle'] == [None] * 4  # all SGD
  assert rows[0]['local_rule_steps'] == 0
  for row in rows[1:]:
    assert row['local_filter_angle'][2:] == [None, None]
    assert all(0 < a < 0.1 for a in row['local_filter_angle'][:2])
    assert all(0 < c < 0.1 for c in row['local_filter_change'][:2])
    assert row['local_rule_steps'] > 0
    assert 0 <= row['ws_below_1_fraction'] <= 1
  for field in ('local_filter_angle', 'local_filter_change'):
    assert summary[field] == rows[-1][field]
  assert summary['local_rule_steps'] == sum(r['local_rule_steps']
                                            for r in rows)
  scalars, _ = read_events(ref / 'tb')
  assert [s for s, _ in scalars['local/filter_angle/unit_1']] == [
      r['step'] for r in rows[1:]]
  assert 'local/filter_angle/unit_2' not in scalars
  assert os.path.isdir(ref / 'checkpoints' / '2' / 'local_start')
  resumed = tmp_path / 'resumed'
  shutil.copytree(ref, resumed)
  shutil.rmtree(resumed / 'checkpoints' / '3')
  again = train_lib.train_and_evaluate(_config(**overrides), str(resumed))

  def strip(rows):
    return [{k: v for k, v in r.items() if k not in TIME_FIELDS}
            for r in rows]
  assert strip(metrics_lines(resumed)) == strip(rows)
  assert again['local_filter_angle'] == summary['local_filter_angle']


def test_frozen_units_measure_exactly_zero_change(tmp_path):
  overrides = dict(_LOCAL_FROM_EPOCH_2, **{'local.rule': 'frozen',
                                           'num_epochs': 2})
  summary = train_lib.train_and_evaluate(_config(**overrides), str(tmp_path))
  assert summary['local_filter_angle'] == [0.0, 0.0, None, None]
  assert summary['local_filter_change'] == [0.0, 0.0, None, None]
  # No step applies a rule: no weak-supervision statistics.
  assert summary['ws_factor_local'] is None
  assert summary['local_rule_steps'] == 0


@pytest.mark.slow  # two short runs and a third that is refused
def test_weight_moving_average_is_what_is_evaluated_and_resumes(tmp_path,
                                                                capsys):
  """optim.ema_decay: the eval row is the averaged weights' (evaluating the
  checkpoint's average again gives it; its trained weights give another
  loss), a resume restores the average bit-exactly, and the decay cannot
  change within a run."""
  overrides = {'optim.ema_decay': 0.9, 'checkpoint.keep': 3,
               'eval_every_epochs': 1}
  ref = tmp_path / 'ref'
  train_lib.train_and_evaluate(_config(**overrides), str(ref))
  assert 'Evaluation: a moving average of the weights' in capsys.readouterr(
      ).out
  rows = metrics_lines(ref)
  mngr = ocp.CheckpointManager(os.path.join(ref, 'checkpoints'),
                               item_names=('state', 'host'))
  saved = mngr.restore(3, args=ocp.args.Composite(
      state=ocp.args.StandardRestore()))['state']
  parts = train_lib.build(_config(**overrides))
  state = parts.state.replace(params=saved['params'],
                              batch_stats=saved['batch_stats'],
                              ema=saved['ema'])
  eval_step = jax.jit(ts.make_eval_step(parts.model))
  again = train_lib.evaluate(eval_step, state, parts.dataset, 256, None)
  trained = train_lib.evaluate(eval_step, state.replace(ema=None),
                               parts.dataset, 256, None)
  assert again['eval_loss'] == pytest.approx(rows[-1]['eval_loss'], rel=1e-6)
  assert again['eval_accuracy'] == rows[-1]['eval_accuracy']
  assert abs(trained['eval_loss'] - again['eval_loss']) > 1e-4

  resumed = tmp_path / 'resumed'
  shutil.copytree(ref, resumed)
  shutil.rmtree(resumed / 'checkpoints' / '3')
  train_lib.train_and_evaluate(_config(**overrides), str(resumed))

  def strip(rows):
    return [{k: v for k, v in r.items() if k not in TIME_FIELDS}
            for r in rows]
  assert strip(metrics_lines(resumed)) == strip(rows)
  ema = [mngr.restore(3, args=ocp.args.Composite(
      state=ocp.args.StandardRestore()))['state']['ema']
         for mngr in [ocp.CheckpointManager(
             os.path.join(d, 'checkpoints'), item_names=('state', 'host'))
                      for d in (ref, resumed)]]
  jax.tree.map(np.testing.assert_array_equal, *ema)
  with pytest.raises(UserError, match='optim.ema_decay cannot change'):
    train_lib.train_and_evaluate(
        _config(**{**overrides, 'optim.ema_decay': 0.99,
                   'resume_allow': 'optim.ema_decay'}), str(resumed))


def test_the_commit_is_the_imported_code_s(monkeypatch):
  """git_commit names the checkout as this process imported it: a commit
  made while it runs does not change it; uncommitted changes to tracked
  files mark it -dirty."""
  status = {'text': ''}

  def run(args, **kwargs):
    out = {'rev-parse': 'abc123\n', 'status': status['text']}[args[1]]
    return subprocess.CompletedProcess(args, 0, out, '')

  imported = train_lib.git_commit()
  monkeypatch.setattr(train_lib.subprocess, 'run', run)
  assert train_lib.git_commit() == imported  # read once, at import
  assert train_lib._checkout_commit() == 'abc123'  # pylint: disable=protected-access
  status['text'] = ' M localsgd_jax/loop.py\n'
  assert train_lib._checkout_commit() == 'abc123-dirty'  # pylint: disable=protected-access
