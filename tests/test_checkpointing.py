"""A damaged latest checkpoint: the newest good one restores, the damaged
ones are moved aside (never deleted), and a one-line error when none is
good."""
import glob
import json
import os
import shutil

import pytest

from configs import quickstart
from localsgd_jax import checkpointing
from localsgd_jax import train_lib
from localsgd_jax.errors import UserError


def _config(**overrides):
  config = quickstart.get_config()
  config.data.image_size = 16
  config.data.train_per_class = 10
  config.batch_size = 48
  config.num_epochs = 3
  config.selection.mode = 'sgd'
  config.checkpoint.keep = 3
  config.log.progress = False
  config.log.tensorboard = False
  config.update_from_flattened_dict(overrides)  # {'optim.lr': ...}
  return config


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
}


def _rows(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


@pytest.mark.parametrize('damage', list(DAMAGE))
def test_damaged_latest_falls_back_and_moves_it_aside(run_copy, damage,
                                                      capsys):
  checkpoints = os.path.join(run_copy, 'checkpoints')
  DAMAGE[damage](os.path.join(checkpoints, '3'))
  rows = _rows(run_copy)
  summary = train_lib.train_and_evaluate(_config(), run_copy)
  err = capsys.readouterr().err
  moved = os.path.join(run_copy, 'checkpoints_damaged', '3')
  warning = [line for line in err.splitlines() if 'cannot be restored' in line]
  assert len(warning) == 1
  assert f'the checkpoint after epoch 3 in {checkpoints}' in warning[0]
  assert f'moved to {moved}; resuming from the one after epoch 2' in (
      warning[0])
  assert os.path.isdir(moved)  # kept, not deleted
  # Epoch 3 was trained again from epoch 2 and saved anew: the same result.
  assert checkpointing.step_folders(checkpoints) == [1, 2, 3]
  assert [r['epoch'] for r in _rows(run_copy)] == [1, 2, 3]
  assert _rows(run_copy)[-1]['train_loss'] == rows[-1]['train_loss']
  assert summary['final_eval_accuracy'] == rows[-1]['eval_accuracy']


def test_left_over_newer_step_folder_is_moved_aside(run_copy, capsys):
  # An empty folder no run wrote completely: skipped, and no obstacle to
  # saving that epoch later.
  os.mkdir(os.path.join(run_copy, 'checkpoints', '4'))
  train_lib.train_and_evaluate(
      _config(num_epochs=4, resume_allow='num_epochs,selection'), run_copy)
  assert 'the checkpoint after epoch 4' in capsys.readouterr().err
  assert os.path.isdir(os.path.join(run_copy, 'checkpoints_damaged', '4'))
  assert [r['epoch'] for r in _rows(run_copy)] == [1, 2, 3, 4]


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
  assert [r['epoch'] for r in _rows(run_copy)] == [1, 2, 3]
