"""A workdir holds one run: config checks on resume, forks, the run lock,
metrics rows by epoch, and one-line errors for unusable workdirs.

Runs use the digits quickstart cut to 10 training images per class (two
steps an epoch), so each takes a second or two.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from localsgd_jax import config_fields
from localsgd_jax import config_validation
from localsgd_jax import metrics as metrics_lib
from localsgd_jax import resume_check
from localsgd_jax import train_lib
from localsgd_jax import workdir as workdir_lib
from localsgd_jax import workdir_lock
from localsgd_jax.errors import UserError

from run_helpers import metrics_lines
from run_helpers import small_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIME_FIELDS = {'epoch_time_s', 'eval_time_s', 'compile_time_s',
               'images_per_s'}


def _config(**overrides):
  return small_config(**{
      'data.train_per_class': 10, 'batch_size': 48,
      # A constant, not following batch_size: the cases below change one
      # field.
      'optim.learning_rate': 0.05, 'num_epochs': 2, 'selection.mode': 'sgd',
      'log.check_finite_every': 1, **overrides})


def _json(path):
  with open(path) as f:
    return json.load(f)


def _strip(rows):
  return [{k: v for k, v in r.items() if k not in TIME_FIELDS} for r in rows]


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  """A finished 2-epoch run (keep every checkpoint); copy it to change it."""
  workdir = str(tmp_path_factory.mktemp('runs') / 'finished')
  train_lib.train_and_evaluate(_config(**{'checkpoint.keep': 5}), workdir)
  return workdir


def _one_line(err):
  message = str(err.value)
  assert '\n' not in message
  return message


# ------------------------------------------------- the config on resume


def test_same_config_and_neutral_changes_resume(run_copy, capsys):
  before = metrics_lines(run_copy)
  summary = train_lib.train_and_evaluate(_config(**{
      'checkpoint.keep': 5, 'eval_batch_size': 100, 'eval_every_epochs': 2,
      'log.check_finite_every': 3, 'checkpoint.every_epochs': 2,
      'compile_cache_dir': ''}), run_copy)
  assert 'Resuming from the checkpoint after epoch 2' in capsys.readouterr().out
  assert metrics_lines(run_copy) == before  # nothing trained again
  assert summary['final_eval_accuracy'] == before[-1]['eval_accuracy']


@pytest.mark.parametrize('overrides,listed', [
    ({'batch_size': 32}, 'batch_size 48 -> 32'),
    ({'selection.mode': 'static', 'batch_size': 32},
     "batch_size 48 -> 32, selection.mode 'sgd' -> 'static'"),
    ({'optim.learning_rate': 0.2}, 'optim.learning_rate 0.05 -> 0.2'),
    ({'dtype': 'bfloat16'}, "dtype 'float32' -> 'bfloat16'"),
])
def test_changed_config_is_refused_with_the_ways_on(run_copy, overrides,
                                                   listed):
  config_before = _json(os.path.join(run_copy, 'config.json'))
  rows_before = metrics_lines(run_copy)
  with pytest.raises(UserError) as err:
    train_lib.train_and_evaluate(_config(**overrides), run_copy)
  message = _one_line(err)
  assert f'holds a run of another config: {listed}.' in message
  assert 'new --workdir' in message
  fields = ','.join(sorted(k for k in overrides))
  assert f'--config.resume_allow={fields}' in message
  # Nothing was touched.
  assert _json(os.path.join(run_copy, 'config.json')) == config_before
  assert metrics_lines(run_copy) == rows_before
  assert not os.path.exists(os.path.join(run_copy, 'run.lock'))


@pytest.mark.parametrize('overrides,fixed', [
    ({'model.name': 'resnet20'}, 'model.name'),
    ({'data.train_per_class': 12}, 'data.train_per_class'),
    ({'optim.name': 'adamw'}, 'optim.name'),
    # Another seed's run is another sample, never this one continued.
    ({'seed': 3}, 'seed'),
])
def test_a_change_that_cannot_continue_needs_a_new_workdir(
    run_copy, overrides, fixed):
  # Even when resume_allow names it.
  overrides = dict(overrides, resume_allow=fixed)
  with pytest.raises(UserError) as err:
    train_lib.train_and_evaluate(_config(**overrides), run_copy)
  message = _one_line(err)
  cannot = message.split(' cannot change within a run')[0].rsplit('. ', 1)
  assert fixed in cannot[-1].split(', ')
  assert 'new --workdir' in message and 'resume_allow' not in message


def test_more_epochs_need_resume_allow_and_are_recorded(run_copy, capsys):
  with pytest.raises(UserError) as err:
    train_lib.train_and_evaluate(_config(num_epochs=3), run_copy)
  message = _one_line(err)
  assert 'num_epochs 2 -> 3' in message
  # The schedule is stated: cosine over 3 epochs is higher after epoch 2.
  assert 'the learning rate after epoch 2 goes from' in message
  assert os.path.exists(os.path.join(run_copy, 'summary.json'))

  summary = train_lib.train_and_evaluate(
      _config(num_epochs=3, resume_allow='num_epochs,selection.warmup_epochs',
              **{'checkpoint.keep': 5}), run_copy)
  assert 'with num_epochs 2 -> 3' in capsys.readouterr().out
  assert [r['epoch'] for r in metrics_lines(run_copy)] == [1, 2, 3]
  change = {'after_epoch': 2, 'changes': {'num_epochs': [2, 3]}}
  record = _json(os.path.join(run_copy, 'run.json'))
  got = record['resumed_with_changes'][0]
  assert {k: got[k] for k in change} == change
  assert summary['resumed_with_changes'][0]['changes'] == change['changes']
  assert _json(os.path.join(run_copy, 'config.json'))['num_epochs'] == 3
  # Now the saved config says 3 epochs: the same command resumes as is.
  train_lib.train_and_evaluate(_config(num_epochs=3), run_copy)


def test_fewer_epochs_than_the_checkpoint_are_refused(run_copy):
  with pytest.raises(UserError) as err:
    train_lib.train_and_evaluate(
        _config(num_epochs=1, resume_allow='num_epochs'), run_copy)
  message = _one_line(err)
  assert 'checkpoint after epoch 2, past config.num_epochs=1' in message
  assert f'--config.init_from={run_copy}:1' in message


def _stop_in_epoch(monkeypatch, n):
  """Makes the n-th epoch a run trains (from 1) stop with KeyboardInterrupt."""
  from localsgd_jax import loop as loop_lib  # pylint: disable=g-import-not-at-top
  run_epoch, calls = loop_lib.TrainLoop.run_epoch, []

  def stop(*args, **kwargs):
    calls.append(1)
    if len(calls) == n:
      raise KeyboardInterrupt
    return run_epoch(*args, **kwargs)
  monkeypatch.setattr(loop_lib.TrainLoop, 'run_epoch', stop)


def _files(workdir):
  return {name: open(os.path.join(workdir, name)).read()
          for name in ('config.json', 'run.json', 'summary.json',
                       'git_commit.txt', 'metrics.jsonl')
          if os.path.exists(os.path.join(workdir, name))}


def test_extended_run_is_unfinished_until_it_ends(run_copy, monkeypatch):
  # A run extended, checkpointed and then stopped must not count as
  # finished from the old summary.json.
  _stop_in_epoch(monkeypatch, 2)
  with pytest.raises(KeyboardInterrupt):
    train_lib.train_and_evaluate(
        _config(num_epochs=4, resume_allow='num_epochs'), run_copy)
  assert [r['epoch'] for r in metrics_lines(run_copy)] == [1, 2, 3]
  assert not os.path.exists(os.path.join(run_copy, 'summary.json'))
  assert not os.path.exists(os.path.join(run_copy, 'run.lock'))
  assert not workdir_lib.finished_run(run_copy, _config(num_epochs=4))
  assert _json(os.path.join(run_copy, 'config.json'))['num_epochs'] == 4


@pytest.mark.parametrize('how', ['nan', 'interrupted'])
def test_a_resume_that_stops_before_its_first_checkpoint_changes_nothing(
    run_copy, monkeypatch, how):
  # Its config.json, run.json and summary.json stay the original run's, so
  # the original command still resumes (as finished).
  before = _files(run_copy)
  if how == 'nan':
    overrides = {'num_epochs': 3, 'optim.learning_rate': 1e30,
                 'optim.schedule': 'constant',
                 'resume_allow': 'num_epochs,optim'}
    with pytest.raises(UserError, match='became'):
      train_lib.train_and_evaluate(_config(**overrides), run_copy)
  else:
    _stop_in_epoch(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
      train_lib.train_and_evaluate(
          _config(num_epochs=3, resume_allow='num_epochs'), run_copy)
  assert _files(run_copy) == before
  monkeypatch.undo()
  summary = train_lib.train_and_evaluate(_config(), run_copy)
  after = _files(run_copy)
  assert after.pop('summary.json') and summary['num_epochs'] == 2
  assert after == {k: v for k, v in before.items() if k != 'summary.json'}


def test_a_fork_that_fails_leaves_no_workdir(finished, tmp_path):
  fork = tmp_path / 'fork'
  with pytest.raises(UserError, match='became'):
    train_lib.train_and_evaluate(_config(**{
        'init_from': f'{finished}:1', 'optim.learning_rate': 1e30,
        'optim.schedule': 'constant'}), str(fork))
  assert not fork.exists()


def test_workdir_without_saved_config_resumes_with_a_warning(run_copy,
                                                            capsys):
  os.remove(os.path.join(run_copy, 'config.json'))
  os.remove(os.path.join(run_copy, 'run.json'))
  train_lib.train_and_evaluate(_config(num_epochs=3), run_copy)
  err = capsys.readouterr().err
  assert 'has no config.json' in err and 'resuming without checking' in err
  assert [r['epoch'] for r in metrics_lines(run_copy)] == [1, 2, 3]
  assert os.path.exists(os.path.join(run_copy, 'config.json'))


def test_config_changes_ignore_neutral_and_new_default_fields():
  saved = config_fields.as_dict(_config())
  new = config_fields.as_dict(_config(**{
      'eval_batch_size': 7, 'log.progress': True, 'checkpoint.keep': 9,
      'data.cache_dir': '/elsewhere', 'resume_allow': 'seed'}))
  assert resume_check.config_changes(saved, new) == []
  # Between plain-SGD runs the selection and local-rule fields do nothing.
  new['selection']['warmup_epochs'] = 5
  new['local']['rule'] = 'gha'
  assert resume_check.config_changes(saved, new) == []
  new['selection']['mode'] = 'static'
  assert [c.field for c in resume_check.config_changes(saved, new)] == [
      'local.rule', 'selection.mode', 'selection.warmup_epochs']
  new = config_fields.as_dict(_config())
  del saved['init_from']  # a run from before the field existed
  assert resume_check.config_changes(saved, new) == []
  new['init_from'] = 'x:1'
  assert [c.field for c in resume_check.config_changes(saved, new)] == [
      'init_from']


# ------------------------------------------------------ data location


def _write_folder(root, seed=0):
  rng = np.random.default_rng(seed)
  for split, per_class in (('train', 6), ('val', 2)):
    for label in ('cat', 'dog'):
      folder = root / split / label
      folder.mkdir(parents=True)
      for i in range(per_class):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
            folder / f'{i}.png')


def test_moved_data_folder_with_the_same_files_resumes(tmp_path):
  data_a, data_b = tmp_path / 'a', tmp_path / 'b'
  _write_folder(data_a)
  shutil.copytree(data_a, data_b)
  workdir = str(tmp_path / 'run')

  def config(folder, **kw):
    return _config(**{'data.name': 'image_folder', 'data.dir': str(folder),
                      'data.cache_dir': str(tmp_path / 'cache'),
                      'data.train_per_class': 0, 'batch_size': 4,
                      'num_epochs': 1, **kw})
  train_lib.train_and_evaluate(config(data_a), workdir)
  train_lib.train_and_evaluate(config(data_b), workdir)  # same files: passes
  # Other pixels in the new folder: the data changed.
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(
      data_b / 'train' / 'cat' / '0.png')
  with pytest.raises(UserError) as err:
    train_lib.train_and_evaluate(config(data_b), workdir)
  message = _one_line(err)
  assert 'another config: data contents (content differ)' in message
  assert 'cannot change within a run' in message
  # A resume with nothing to train records nothing: back in a passes.
  train_lib.train_and_evaluate(config(data_a), workdir)


# ---------------------------------------------------------------- forks


def test_fork_continues_the_parent_and_is_recorded(finished, tmp_path,
                                                   capsys):
  fork = str(tmp_path / 'fork')
  summary = train_lib.train_and_evaluate(
      _config(init_from=f'{finished}:1'), fork)
  out = capsys.readouterr().out
  assert f'Forking {finished} after epoch 1' in out
  record = _json(os.path.join(fork, 'run.json'))['fork']
  assert record['parent'] == os.path.abspath(finished)
  assert record['epoch'] == 1 and record['differs_from_parent'] == {}
  assert summary['fork']['epoch'] == 1
  # Epoch 1 is the parent's row; epoch 2, trained here from the parent's
  # checkpoint with the parent's config, is the parent's epoch 2 again.
  assert _strip(metrics_lines(fork)) == _strip(metrics_lines(finished))
  assert metrics_lines(fork)[0] == metrics_lines(finished)[0]
  # Its own checkpoints from now on: rerunning resumes the fork itself.
  train_lib.train_and_evaluate(_config(init_from=f'{finished}:1'), fork)
  assert 'Resuming from the checkpoint after epoch 2' in (
      capsys.readouterr().out)


def test_fork_records_what_differs_from_the_parent(finished, tmp_path):
  fork = str(tmp_path / 'fork_static')
  train_lib.train_and_evaluate(_config(**{
      'init_from': finished + ':1', 'selection.mode': 'static',
      'selection.table': '0:0,1:2', 'seed': 1}), fork)
  record = _json(os.path.join(fork, 'run.json'))['fork']
  # Another seed too: a fork may take one, a resume may not.
  assert record['differs_from_parent'] == {
      'seed': [0, 1], 'selection.mode': ['sgd', 'static'],
      'selection.table': ['', '0:0,1:2']}
  assert [r['transition'] for r in metrics_lines(fork)] == [0, 2]


@pytest.mark.parametrize('init_from,match', [
    ('{workdir}:1', "names this run's own workdir"),
    ('{tmp}/nowhere:1', 'is not the workdir of a run'),
    ('{finished}:7', r'no checkpoint after epoch 7 \(it has the ones after '
     r'epochs 1, 2\)'),
])
def test_fork_errors(finished, tmp_path, init_from, match):
  workdir = str(tmp_path / 'fork')
  init_from = init_from.format(workdir=workdir, tmp=tmp_path,
                               finished=finished)
  with pytest.raises(UserError, match=match) as err:
    train_lib.train_and_evaluate(_config(init_from=init_from), workdir)
  _one_line(err)


def test_fork_from_a_parent_without_a_config(finished, tmp_path, capsys):
  # An older version's run: its config cannot be compared, but its data
  # (run.json) still is, and nothing claims it "differs in: nothing".
  parent = str(tmp_path / 'old_parent')
  shutil.copytree(finished, parent)
  os.remove(os.path.join(parent, 'config.json'))
  fork = str(tmp_path / 'fork')
  train_lib.train_and_evaluate(_config(init_from=f'{parent}:1'), fork)
  captured = capsys.readouterr()
  assert (f"{parent!r} has no config.json" in captured.err
          and 'its data matches the one in its run.json' in captured.err)
  assert 'differs from it in: unknown: it has no config.json' in captured.out
  assert _json(os.path.join(fork, 'run.json'))['fork'][
      'differs_from_parent'] is None
  # Other data is refused by the fingerprint alone.
  other = str(tmp_path / 'fork_other_data')
  with pytest.raises(UserError, match='cannot fork .*data contents') as err:
    train_lib.train_and_evaluate(
        _config(**{'init_from': f'{parent}:1', 'data.image_size': 12}),
        other)
  _one_line(err)
  assert not os.path.exists(other)


def test_fork_keeps_model_and_data(finished, tmp_path):
  with pytest.raises(UserError, match=r"cannot fork .*model.name 'tiny' -> "
                     r"'resnet20'"):
    train_lib.train_and_evaluate(
        _config(**{'init_from': finished, 'model.name': 'resnet20'}),
        str(tmp_path / 'fork'))
  assert not os.path.exists(tmp_path / 'fork')


def test_init_from_syntax():
  assert config_fields.parse_init_from('runs/sgd/seed_{seed}:6', 2) == (
      'runs/sgd/seed_2', 6)
  assert config_fields.parse_init_from('runs/x', 0) == ('runs/x', None)
  assert config_fields.parse_init_from('', 0) is None
  with pytest.raises(UserError, match='only {seed} can be filled in'):
    config_fields.parse_init_from('runs/{mode}:3', 0)
  with pytest.raises(UserError, match='no config field.*did you mean '
                     'num_epochs'):
    config_validation.validate_config(_config(resume_allow='num_epoch'))


# ------------------------------------------------------------- the lock


def _sleeper():
  return subprocess.Popen([sys.executable, '-c', 'import time; '
                           'time.sleep(60)'])


def _write_lock(workdir, **info):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'run.lock'), 'w') as f:
    json.dump({'host': socket.gethostname(), 'started': 'then', **info}, f)


def test_a_second_run_on_a_workdir_is_refused(run_copy):
  other = _sleeper()  # a live process holds the lock
  try:
    _write_lock(run_copy, pid=other.pid)
    rows = metrics_lines(run_copy)
    with pytest.raises(UserError) as err:
      train_lib.train_and_evaluate(_config(), run_copy)
    message = _one_line(err)
    assert f'is in use by another run (host {socket.gethostname()}, PID ' \
        f'{other.pid}' in message
    assert 'delete' in message and 'run.lock' in message
    assert metrics_lines(run_copy) == rows
    assert _json(os.path.join(run_copy, 'run.lock'))['pid'] == other.pid
  finally:
    other.kill()
    other.wait()


def test_lock_of_a_dead_process_is_reported_and_replaced(run_copy, capsys):
  gone = subprocess.Popen([sys.executable, '-c', 'pass'])
  gone.wait()
  _write_lock(run_copy, pid=gone.pid)
  train_lib.train_and_evaluate(_config(), run_copy)
  assert f'process {gone.pid} on this host has exited' in (
      capsys.readouterr().err)
  assert not os.path.exists(os.path.join(run_copy, 'run.lock'))


def test_lock_from_another_host_goes_stale_by_age(tmp_path, capsys):
  workdir = str(tmp_path)
  _write_lock(workdir, host='elsewhere', pid=1)
  with pytest.raises(UserError, match='in use by another run'):
    workdir_lock.RunLock(workdir).acquire()
  old = time.time() - 2 * workdir_lock.STALE_AFTER_S
  os.utime(os.path.join(workdir, 'run.lock'), (old, old))
  lock = workdir_lock.RunLock(workdir)
  lock.acquire()
  assert 'not touched for 30 min' in capsys.readouterr().err
  held = _json(lock.path)
  assert held['pid'] == os.getpid() and held['host'] == socket.gethostname()
  assert held['started']
  lock.release()
  assert not os.path.exists(lock.path)


def test_stale_lock_taken_over_by_two_runs_at_once(tmp_path, monkeypatch):
  """Run B takes the stale lock over between run A's check and A's rename:
  A must put B's fresh lock back and stop, not take it."""
  workdir = str(tmp_path)
  _write_lock(workdir, host='elsewhere', pid=1)
  old = time.time() - 2 * workdir_lock.STALE_AFTER_S
  path = os.path.join(workdir, 'run.lock')
  os.utime(path, (old, old))
  rename = os.rename

  def other_run_first(src, dst):
    os.remove(path)  # B replaced the stale lock by its own
    _write_lock(workdir, host='b-host', pid=2)
    monkeypatch.setattr(os, 'rename', rename)
    rename(src, dst)

  monkeypatch.setattr(os, 'rename', other_run_first)
  with pytest.raises(UserError, match='in use by another run .host b-host'):
    workdir_lock.RunLock(workdir).acquire()
  assert _json(path)['host'] == 'b-host'
  assert os.listdir(workdir) == ['run.lock']  # nothing left aside


def test_lock_heartbeat_keeps_it_fresh(tmp_path):
  lock = workdir_lock.RunLock(str(tmp_path), heartbeat_s=0.05)
  lock.acquire()
  old = time.time() - 1000
  os.utime(lock.path, (old, old))
  time.sleep(0.3)
  assert time.time() - os.stat(lock.path).st_mtime < 10
  lock.release()


def test_lock_is_released_after_an_error(tmp_path):
  workdir = str(tmp_path / 'nan')
  with pytest.raises(UserError, match='became'):
    train_lib.train_and_evaluate(_config(**{
        'optim.learning_rate': 1e30, 'optim.warmup_epochs': 0,
        'optim.schedule': 'constant'}), workdir)
  assert not os.path.exists(os.path.join(workdir, 'run.lock'))


# ------------------------------------------------- metrics rows by epoch


def test_metrics_rows_are_keyed_by_epoch(tmp_path, capsys):
  path = str(tmp_path / 'metrics.jsonl')
  with open(path, 'w') as f:
    for epoch, tag in [(1, 'a'), (2, 'a'), (1, 'b'), (3, 'b'), (2, 'b')]:
      f.write(json.dumps({'epoch': epoch, 'tag': tag}) + '\n')
    f.write('{"epoch": 4, "ta')  # torn last line
  rows = metrics_lib.read_rows(path)
  assert [(r['epoch'], r['tag']) for r in rows] == [(1, 'b'), (2, 'b'),
                                                   (3, 'b')]
  assert 'dropped the torn last line (line 6)' in capsys.readouterr().err
  writer = metrics_lib.MetricsWriter(str(tmp_path), tensorboard=False)
  writer.truncate(2)
  assert [r['epoch'] for r in metrics_lines(tmp_path)] == [1, 2]
  with open(path, 'a') as f:
    f.write('not json\n{"epoch": 3}\n')
  with pytest.raises(UserError, match='line 3 is not a metrics row'):
    metrics_lib.read_rows(path)


def test_resume_without_the_metrics_history_says_so(run_copy, capsys):
  os.remove(os.path.join(run_copy, 'metrics.jsonl'))
  summary = train_lib.train_and_evaluate(
      _config(num_epochs=3, resume_allow='num_epochs'), run_copy)
  warnings = [line for line in capsys.readouterr().err.splitlines()
              if line.startswith('warning:')]
  assert len(warnings) == 1
  assert 'metrics.jsonl lacks the rows of 2 of the 2 epochs' in warnings[0]
  assert '(epochs 1-2:' in warnings[0]
  assert summary['history_missing_epochs'] == [1, 2]
  assert [r['epoch'] for r in metrics_lines(run_copy)] == [3]


def test_resume_drops_a_torn_metrics_line(run_copy, capsys):
  with open(os.path.join(run_copy, 'metrics.jsonl'), 'a') as f:
    f.write('{"epoch": 3, "train_lo')
  summary = train_lib.train_and_evaluate(_config(), run_copy)
  assert 'dropped the torn last line' in capsys.readouterr().err
  rows = metrics_lines(run_copy)
  assert [r['epoch'] for r in rows] == [1, 2]
  assert summary['final_eval_accuracy'] == rows[-1]['eval_accuracy']


# ------------------------------------------------------ unusable workdirs


def test_workdir_that_is_a_file_or_under_one(tmp_path):
  target = tmp_path / 'file'
  target.write_text('x')
  for workdir, match in ((target, 'is a file, not a directory'),
                         (target / 'run', 'would sit under .* which is a '
                          'file')):
    with pytest.raises(UserError, match=match) as err:
      train_lib.train_and_evaluate(_config(), str(workdir))
    _one_line(err)


def test_read_only_workdir(tmp_path, monkeypatch):
  # Tests run as root, which chmod cannot stop: fake the answer.
  monkeypatch.setattr(workdir_lib.os, 'access', lambda *args: False)
  with pytest.raises(UserError, match='cannot write to create the workdir '
                     'in .*read-only or no permission') as err:
    train_lib.train_and_evaluate(_config(), str(tmp_path / 'run'))
  _one_line(err)
  assert not os.path.exists(tmp_path / 'run')


def test_bad_config_creates_no_workdir(tmp_path):
  workdir = tmp_path / 'run'
  for overrides in ({'selection.ramp': 'bogus'}, {'model.name': 'resnet7'},
                    {'data.name': 'mnist'}, {'selection.k_max': 9}):
    with pytest.raises(UserError):
      train_lib.train_and_evaluate(_config(**overrides), str(workdir))
    assert not workdir.exists(), overrides


# ------------------------------------------------------------- signals


@pytest.mark.slow
def test_sigterm_says_what_was_saved_and_the_run_resumes(tmp_path):
  workdir = tmp_path / 'run'
  command = [sys.executable, os.path.join(ROOT, 'train.py'),
             '--config=configs/quickstart.py', f'--workdir={workdir}',
             '--config.num_epochs=25', '--config.data.image_size=16',
             '--config.data.train_per_class=10', '--config.batch_size=48',
             '--config.log.progress=False', '--config.log.tensorboard=False']
  process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
  first = workdir / 'checkpoints' / '1'
  deadline = time.time() + 300
  while not first.exists() and process.poll() is None:
    assert time.time() < deadline, 'no checkpoint after 300 s'
    time.sleep(0.05)
  process.send_signal(signal.SIGTERM)
  _, err = process.communicate(timeout=120)
  assert process.returncode == 128 + signal.SIGTERM, err
  assert 'Traceback' not in err
  last = err.strip().splitlines()[-1]
  assert last.startswith('error: SIGTERM received: training stopped; the '
                         'checkpoint after epoch '), err
  saved = int(last.split('checkpoint after epoch ')[1].split()[0])
  assert saved < 25 and f'is kept in {workdir}/checkpoints' in last
  assert not (workdir / 'run.lock').exists()
  again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
  assert again.returncode == 0, again.stderr
  assert f'Resuming from the checkpoint after epoch {saved}' in again.stdout
  assert [r['epoch'] for r in metrics_lines(str(workdir))] == list(range(1, 26))
