"""A damaged latest checkpoint: the newest good one restores, the damaged
ones are moved aside (never deleted), and a one-line error when none is
good."""
import gc
import glob
import json
import os
import shutil

import jax
import jax.numpy as jnp
import pytest

from localsgd_jax import checkpointing
from localsgd_jax import train_lib
from localsgd_jax.errors import UserError

from run_helpers import metrics_lines
from run_helpers import small_config


def _config(**overrides):
  return small_config(**{'data.train_per_class': 10, 'batch_size': 48,
                         'num_epochs': 3, 'selection.mode': 'sgd',
                         'checkpoint.keep': 3, **overrides})


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  """A finished 3-epoch run with the checkpoints after epochs 1, 2, 3."""
  workdir = str(tmp_path_factory.mktemp('runs') / 'finished')
  train_lib.train_and_evaluate(_config(), workdir)
  assert checkpointing.step_folders(
      os.path.join(workdir, 'checkpoints')) == [1, 2, 3]
  return workdir


def _truncate_arrays(step):
  for path in glob.glob(os.path.join(step, 'state', 'ocdbt.process_0', 'd',
                                     '*')):
    with open(path, 'r+b') as f:
      f.truncate(os.path.getsize(path) // 2)


def _garble(path):
  with open(path, 'w') as f:
    f.write('{not json')


def _empty(step):
  shutil.rmtree(step)
  os.mkdir(step)


DAMAGE = {
    'truncated arrays': _truncate_arrays,
    'deleted manifest': lambda step: os.remove(
        os.path.join(step, 'state', 'manifest.ocdbt')),
    'garbled state metadata': lambda step: _garble(
        os.path.join(step, 'state', '_METADATA')),
    'garbled host state': lambda step: _garble(
        os.path.join(step, 'host', 'metadata')),
    'empty step folder': _empty,
    'emptied array files': lambda step: [
        open(path, 'w').close() for path in glob.glob(
            os.path.join(step, 'state', 'ocdbt.process_0', 'd', '*'))],
}


def _json(path):
  with open(path) as f:
    return json.load(f)


@pytest.mark.parametrize('damage', list(DAMAGE))
def test_damaged_latest_falls_back_and_moves_it_aside(run_copy, damage,
                                                      capsys):
  checkpoints = os.path.join(run_copy, 'checkpoints')
  DAMAGE[damage](os.path.join(checkpoints, '3'))
  rows = metrics_lines(run_copy)
  summary = train_lib.train_and_evaluate(_config(), run_copy)
  gc.collect()  # Orbax's abandoned reads would print as they are collected
  err = capsys.readouterr().err
  assert 'Traceback' not in err and 'Event loop is closed' not in err
  moved = os.path.join(run_copy, 'checkpoints_damaged', '3')
  warning = [line for line in err.splitlines() if 'cannot be restored' in line]
  assert len(warning) == 1
  assert f'the checkpoint after epoch 3 in {checkpoints}' in warning[0]
  assert f'moved to {moved}; resuming from the one after epoch 2' in (
      warning[0])
  assert os.path.isdir(moved)  # kept, not deleted
  # Epoch 3 was trained again from epoch 2 and saved anew: the same result.
  assert checkpointing.step_folders(checkpoints) == [1, 2, 3]
  assert [r['epoch'] for r in metrics_lines(run_copy)] == [1, 2, 3]
  assert metrics_lines(run_copy)[-1]['train_loss'] == rows[-1]['train_loss']
  assert summary['final_eval_accuracy'] == rows[-1]['eval_accuracy']


def test_left_over_newer_step_folder_is_moved_aside(run_copy, capsys):
  # An empty folder no run wrote completely: skipped, and no obstacle to
  # saving that epoch later.
  os.mkdir(os.path.join(run_copy, 'checkpoints', '4'))
  train_lib.train_and_evaluate(
      _config(num_epochs=4, resume_allow='num_epochs,selection'), run_copy)
  assert 'the checkpoint after epoch 4' in capsys.readouterr().err
  assert os.path.isdir(os.path.join(run_copy, 'checkpoints_damaged', '4'))
  assert [r['epoch'] for r in metrics_lines(run_copy)] == [1, 2, 3, 4]


def test_no_good_checkpoint_is_a_one_line_error(run_copy):
  checkpoints = os.path.join(run_copy, 'checkpoints')
  for step in (1, 2, 3):
    _empty(os.path.join(checkpoints, str(step)))
  with pytest.raises(UserError) as err:
    train_lib.train_and_evaluate(_config(), run_copy)
  message = str(err.value)
  assert '\n' not in message
  assert f'no checkpoint in {checkpoints} can be restored' in message
  assert f'mv {checkpoints} ' in message and 'new --workdir' in message
  # Nothing moved, nothing lost.
  assert checkpointing.step_folders(checkpoints) == [1, 2, 3]
  assert not os.path.exists(os.path.join(run_copy, 'checkpoints_damaged'))
  assert [r['epoch'] for r in metrics_lines(run_copy)] == [1, 2, 3]


def _save_non_finite(monkeypatch, epoch):
  """Makes the run save the checkpoint after `epoch` with NaN in its
  optimizer state, as bit flips inside an array file restore."""
  save = checkpointing.Checkpointer.maybe_save

  def damaged(self, e, state, *args, **kwargs):
    if e == epoch:
      state = state.replace(opt_state=jax.tree.map(
          lambda x: x * jnp.nan if jnp.issubdtype(x.dtype, jnp.floating)
          else x, state.opt_state))
    return save(self, e, state, *args, **kwargs)
  monkeypatch.setattr(checkpointing.Checkpointer, 'maybe_save', damaged)


def test_a_checkpoint_with_nan_arrays_is_damaged(run_copy, tmp_path,
                                                 monkeypatch, capsys):
  # Not the "last good" one to lower the learning rate from: moved aside
  # like any damaged checkpoint, and the run resumes from the one before.
  rows = metrics_lines(run_copy)
  checkpoints = os.path.join(run_copy, 'checkpoints')
  shutil.rmtree(os.path.join(checkpoints, '3'))
  _save_non_finite(monkeypatch, 3)
  train_lib.train_and_evaluate(_config(), run_copy)
  monkeypatch.undo()
  # A fork from it is refused.
  with pytest.raises(UserError, match=r'epoch 3 .* cannot be restored \(its '
                     r'arrays hold NaN/inf .*state\.opt_state') as err:
    train_lib.train_and_evaluate(_config(init_from=f'{run_copy}:3'),
                                 str(tmp_path / 'fork'))
  assert '\n' not in str(err.value)
  capsys.readouterr()
  summary = train_lib.train_and_evaluate(_config(), run_copy)
  warning = [line for line in capsys.readouterr().err.splitlines()
             if 'cannot be restored' in line]
  assert len(warning) == 1 and 'its arrays hold NaN/inf' in warning[0]
  assert 'resuming from the one after epoch 2' in warning[0]
  assert os.path.isdir(os.path.join(run_copy, 'checkpoints_damaged', '3'))
  assert metrics_lines(run_copy)[-1]['train_loss'] == rows[-1]['train_loss']
  assert summary['final_eval_accuracy'] == rows[-1]['eval_accuracy']


def test_a_full_disk_at_a_save_is_one_line(run_copy, monkeypatch):
  # Orbax raises TensorStore's out-of-space error as a ValueError.
  rows = metrics_lines(run_copy)
  checkpoints = os.path.join(run_copy, 'checkpoints')

  def full(self, *args, **kwargs):
    raise ValueError('RESOURCE_EXHAUSTED: Error writing local file '
                     '"/x/d/abc": No space left on device '
                     "[os_error_code='28']")
  monkeypatch.setattr(checkpointing.ocp.CheckpointManager, 'save', full)
  with pytest.raises(UserError) as err:
    train_lib.train_and_evaluate(
        _config(num_epochs=5, resume_allow='num_epochs'), run_copy)
  message = str(err.value)
  assert '\n' not in message
  assert message.startswith('cannot write the checkpoint after epoch 4 to '
                            f'{checkpoints}: No space left on device (')
  assert ' free there; the last checkpoint takes ' in message
  assert 'resumes from the checkpoint after epoch 3, kept intact' in message
  # The save failed after epoch 4: no epoch 5 was trained.
  assert [r['epoch'] for r in metrics_lines(run_copy)][-1] == 4
  assert checkpointing.step_folders(checkpoints) == [1, 2, 3]
  assert metrics_lines(run_copy)[:3] == rows
  # The workdir's record is still the 3-epoch run's: its command resumes.
  assert _json(os.path.join(run_copy, 'config.json'))['num_epochs'] == 3
  assert os.path.exists(os.path.join(run_copy, 'summary.json'))


def test_a_checkpoint_from_before_the_weight_average_restores(tmp_path):
  """Checkpoints written before TrainState had its `ema` field (the state
  saved as the dataclass of its five fields) restore into today's state,
  and a state without a weight average is saved in that same layout."""
  import flax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from localsgd_jax import train_step as ts  # pylint: disable=g-import-not-at-top

  @flax.struct.dataclass
  class OldTrainState:
    step: jax.Array
    params: dict
    batch_stats: dict
    opt_state: dict
    loss_ema: jax.Array

  template = ts.TrainState(
      step=jnp.zeros((), jnp.int32), params={'w': jnp.zeros(3)},
      batch_stats={'m': jnp.zeros(2)}, opt_state={'w': jnp.zeros(3)},
      loss_ema=jnp.zeros(()))
  old = OldTrainState(step=jnp.array(7, jnp.int32),
                      params={'w': jnp.arange(3.0)},
                      batch_stats={'m': jnp.ones(2)},
                      opt_state={'w': jnp.full(3, 2.0)},
                      loss_ema=jnp.array(0.5))
  with ocp.CheckpointManager(str(tmp_path / 'old' / 'checkpoints'),
                             item_names=('state', 'host')) as mngr:
    mngr.save(1, args=ocp.args.Composite(
        state=ocp.args.StandardSave(old),
        host=ocp.args.JsonSave({'local_start_units': []})))
  epoch, state, _ = checkpointing.restore_from(str(tmp_path / 'old'), 1,
                                               template)
  assert epoch == 1 and isinstance(state, ts.TrainState)
  assert state.ema is None and int(state.step) == 7
  assert state.params['w'].tolist() == [0.0, 1.0, 2.0]
  with checkpointing.Checkpointer(str(tmp_path / 'new'), 1, 1) as saver:
    saver.maybe_save(1, state, {})
  saved = ocp.CheckpointManager(
      str(tmp_path / 'new' / 'checkpoints'),
      item_names=('state', 'host')).restore(1, args=ocp.args.Composite(
          state=ocp.args.StandardRestore()))['state']
  assert set(saved) == {'step', 'params', 'batch_stats', 'opt_state',
                           'loss_ema'}
