"""Runs of a fractional number of epochs (config.last_epoch_fraction)."""
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from localsgd_jax import config_validation
from localsgd_jax import loop
from localsgd_jax import optim
from localsgd_jax import train_lib
from localsgd_jax.errors import UserError

from run_helpers import metrics_lines
from run_helpers import small_config

TIME_FIELDS = {'epoch_time_s', 'eval_time_s', 'compile_time_s',
               'images_per_s'}


def _config(**overrides):
  return small_config(**{'selection.mode': 'sgd', 'num_epochs': 3,
                         'last_epoch_fraction': 0.5,  # 2.5 epochs
                         **overrides})


def test_steps_are_rounded_to_the_nearest_step():
  config = _config()
  assert loop.num_train_steps(config, 22) == 55        # 2.5 x 22
  config.last_epoch_fraction = 0.6
  assert loop.num_train_steps(config, 22) == 57        # 2 x 22 + 13.2
  config.last_epoch_fraction = 0.01
  assert loop.num_train_steps(config, 22) == 45        # at least one step
  config.last_epoch_fraction = 1.0
  assert loop.num_train_steps(config, 22) == 66


def test_schedule_ends_at_the_last_step_of_a_fractional_run():
  config = _config()
  steps = loop.num_train_steps(config, 22)
  schedule = optim.learning_rate_schedule(config.optim, 22, steps / 22)
  assert float(schedule(steps)) == 0.0   # after the 55th step: done
  assert float(schedule(steps - 1)) > 0.0
  # The same shape compressed: a third of the way is a third of the run.
  whole = optim.learning_rate_schedule(config.optim, 22, 3)
  assert float(whole(66)) == 0.0 and float(whole(55)) > 0.0


def test_fraction_is_validated():
  with pytest.raises(UserError, match='last_epoch_fraction'):
    config_validation.validate_config(_config(last_epoch_fraction=0.0))
  with pytest.raises(UserError, match='last_epoch_fraction'):
    config_validation.validate_config(_config(last_epoch_fraction=1.5))


def _final_state(workdir):
  mngr = ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'),
                               item_names=('state', 'host'))
  return mngr.restore(mngr.latest_step(), args=ocp.args.Composite(
      state=ocp.args.StandardRestore()))['state']


@pytest.mark.slow  # a 2.5-epoch run and its last epoch again
def test_fractional_run_trains_its_steps_and_resumes_bit_identical(tmp_path):
  ref = str(tmp_path / 'ref')
  summary = train_lib.train_and_evaluate(_config(), ref)
  rows = metrics_lines(ref)
  spe = rows[0]['step']
  assert [r['step'] for r in rows] == [spe, 2 * spe, round(2.5 * spe)]
  assert summary['num_steps'] == round(2.5 * spe)
  assert summary['train_epochs'] == pytest.approx(2.5)
  assert summary['num_epochs'] == 3 and 'eval_accuracy' in rows[-1]
  # The partial epoch's period ends at its own last step: one decision, one
  # k span, its means over the steps it ran.
  assert rows[-1]['selection'] == 'schedule'
  assert rows[-1]['transitions'] == [[2 * spe, 0]]
  assert int(_final_state(ref)['step']) == round(2.5 * spe)
  for key in ('compile_cache_requests', 'compile_cache_hits'):
    assert isinstance(summary[key], int)
  # Resumed from the checkpoint after epoch 2: the same partial epoch.
  resumed = str(tmp_path / 'resumed')
  shutil.copytree(ref, resumed)
  shutil.rmtree(os.path.join(resumed, 'checkpoints', '3'))
  os.remove(os.path.join(resumed, 'summary.json'))
  train_lib.train_and_evaluate(_config(), resumed)

  def strip(rows):
    return [{k: v for k, v in r.items() if k not in TIME_FIELDS}
            for r in rows]
  assert strip(metrics_lines(resumed)) == strip(rows)
  jax.tree.map(np.testing.assert_array_equal, _final_state(resumed),
               _final_state(ref))
  # The same command again: finished, nothing to train.
  assert train_lib.train_and_evaluate(_config(), ref)['num_steps'] == \
      summary['num_steps']
  # Going on past the partial epoch (more epochs, or a fork from it) would
  # start epoch 4 mid-way: refused in one line, the run left as it was.
  with pytest.raises(UserError, match='partial epoch 3'):
    train_lib.train_and_evaluate(
        _config(num_epochs=4, last_epoch_fraction=1.0,
                resume_allow='num_epochs,last_epoch_fraction'), ref)
  with pytest.raises(UserError, match='config.init_from names a checkpoint '
                     'after a partial epoch'):
    train_lib.train_and_evaluate(
        _config(num_epochs=4, init_from=f'{ref}:3'), str(tmp_path / 'f'))
  assert int(_final_state(ref)['step']) == round(2.5 * spe)
