"""The SGD optimizer: the triangular schedule and the weight-decay mask."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from localsgd_jax import checkpointing
from localsgd_jax import config_validation
from localsgd_jax import models
from localsgd_jax import optim
from localsgd_jax import train_step as ts
from localsgd_jax.configs import default
from localsgd_jax.errors import UserError

SHAPE = (16, 16, 1)


def _triangular(**optim_fields):
  config = default.get_config()
  config.optim.schedule = 'triangular'
  config.optim.learning_rate = 0.2
  config.optim.update(optim_fields)
  return config


def test_triangular_matches_hand_computed_values():
  """10 steps x 10 epochs, peak 0.2 at 20% (step 20), from 0.2 x peak."""
  lr = optim.learning_rate_schedule(_triangular().optim, 10, 10)
  want = {0: 0.04,                      # 0.2 x 0.2
          10: 0.2 * (0.2 + 0.8 * 0.5),  # halfway up: 0.12
          20: 0.2,                      # the peak
          60: 0.2 * (1 - 40 / 80),      # halfway down: 0.1
          99: 0.2 / 80,                 # the last step still trains
          100: 0.0}
  for step, value in want.items():
    np.testing.assert_allclose(float(lr(step)), value, rtol=1e-6, atol=1e-9)


def test_triangular_is_the_recipes_interpolation_and_compresses():
  """The recipe's np.interp(step, [0, int(0.2 T), T], [0.2, 1, 0]) x peak,
  defined in steps: 5 epochs peak at step 10, 10 epochs at 20."""
  for epochs, steps_per_epoch in ((10, 10), (5, 10), (26, 98)):
    total = epochs * steps_per_epoch
    lr = optim.learning_rate_schedule(_triangular().optim, steps_per_epoch,
                                      epochs)
    steps = np.arange(total + 1)
    want = 0.2 * np.interp(steps, [0, int(0.2 * total), total], [0.2, 1, 0])
    got = np.array([float(lr(s)) for s in steps])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8)
    assert int(np.argmax(got)) == int(0.2 * total)


def test_triangular_start_end_and_peak_are_configurable():
  """airbench94's shape: from 0.2, peak at 23%, down to 0.07 of the peak."""
  cfg = _triangular(peak_fraction=0.23, triangular_start=0.2,
                    triangular_end=0.07).optim
  lr = optim.learning_rate_schedule(cfg, 10, 10)
  np.testing.assert_allclose(
      [float(lr(s)) for s in (0, 23, 100)], [0.04, 0.2, 0.014], rtol=1e-6)


@pytest.mark.parametrize('fields,field', [
    ({'warmup_epochs': 1}, 'optim.warmup_epochs'),
    ({'peak_fraction': 1.5}, 'optim.peak_fraction'),
    ({'triangular_end': -0.1}, 'optim.triangular_start/end'),
])
def test_triangular_bad_fields_are_one_line_errors(fields, field):
  with pytest.raises(UserError, match=f'config.{field}=') as e:
    config_validation.validate_config(_triangular(**fields))
  assert '\n' not in str(e.value)


def _zero_gradient_step(decay_norm_and_bias: bool, k: int = 0):
  """One train step whose loss is masked out (all batch['mask'] 0): zero
  gradients, so the parameters move by weight decay alone."""
  config = default.get_config()
  config.optim.learning_rate = 0.05
  config.optim.schedule = 'constant'
  config.optim.momentum = 0.0  # the step is then exactly lr x wd x w
  config.optim.nesterov = False
  config.optim.weight_decay = 0.1
  config.optim.decay_norm_and_bias = decay_norm_and_bias
  config.local.rule = 'frozen'
  model = models.create_model('tiny', 10, dtype=jnp.float32)
  tx = optim.direction(config.optim)
  state = ts.create_train_state(model, tx, jax.random.key(0), SHAPE)
  batch = {'image': jnp.ones((4, *SHAPE), jnp.float32),
           'label': jnp.zeros((4,), jnp.int32),
           'mask': jnp.zeros((4,), jnp.float32)}
  step = ts.make_train_step(model, tx, config)
  new, _ = jax.jit(step, static_argnums=2)(state, batch, k,
                                           rates=ts.step_rates(config))
  return state, new


def _leaves(params):
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in
          jax.tree_util.tree_leaves_with_path(params)}


def test_no_decay_on_norm_and_bias_moves_only_kernels():
  state, new = _zero_gradient_step(decay_norm_and_bias=False)
  before, after = _leaves(state.params), _leaves(new.params)
  kernels = [p for p in before if p.endswith("['kernel']")]
  others = [p for p in before if p not in kernels]
  assert kernels and any("['scale']" in p for p in others)
  for p in kernels:  # w - lr * wd * w
    np.testing.assert_allclose(after[p], before[p] - 0.05 * 0.1 * before[p],
                               rtol=1e-6)
  for p in others:  # BatchNorm scale/bias, layer biases: untouched
    np.testing.assert_array_equal(after[p], before[p])


def test_decay_norm_and_bias_true_decays_everything():
  """Today's behaviour, the default: the BatchNorm scales move too."""
  state, new = _zero_gradient_step(decay_norm_and_bias=True)
  before, after = _leaves(state.params), _leaves(new.params)
  for p in before:
    np.testing.assert_allclose(after[p], before[p] * (1 - 0.05 * 0.1),
                               rtol=1e-6)
  assert any("['scale']" in p and not np.array_equal(after[p], before[p])
             for p in before)


def test_kernels_mask_per_unit_and_state_structure_fixed_in_k():
  """The optimizer state is one per unit: the mask selects by leaf name in
  any subtree, and the state's structure is the same at every k."""
  state, new0 = _zero_gradient_step(False, k=0)
  _, new2 = _zero_gradient_step(False, k=2)
  unit = state.params['units_0']
  mask = optim.kernels_mask(unit)
  assert {jax.tree_util.keystr(p): m for p, m in
          jax.tree_util.tree_leaves_with_path(mask)} == {
              p: p.endswith("['kernel']") for p in _leaves(unit)}
  assert (jax.tree.structure(new0.opt_state)
          == jax.tree.structure(new2.opt_state)
          == jax.tree.structure(state.opt_state))
  # k = 2: units 0-1 are frozen, so decay leaves their kernels alone.
  np.testing.assert_array_equal(new2.params['units_0']['conv']['kernel'],
                                state.params['units_0']['conv']['kernel'])


def test_state_is_the_same_tree_with_or_without_decay_on_norm_and_bias(
    tmp_path):
  """A checkpoint of either setting restores into the other (a resume with
  resume_allow, or a fork), so the masked decay keeps the plain state."""
  model = models.create_model('tiny', 10, dtype=jnp.float32)
  states = []
  for flag in (True, False):
    config = default.get_config()
    config.optim.decay_norm_and_bias = flag
    states.append(ts.create_train_state(
        model, optim.direction(config.optim), jax.random.key(0), SHAPE))
  assert (jax.tree.structure(states[0].opt_state)
          == jax.tree.structure(states[1].opt_state))
  saver = checkpointing.Checkpointer(str(tmp_path), 1, 1)
  saver.maybe_save(1, states[0], {'elapsed_s': 0.0}, force=True)
  saver.close()
  restorer = checkpointing.Checkpointer(str(tmp_path), 1, 1)
  epoch, restored, _ = restorer.restore_latest(states[1])
  restorer.close()
  assert epoch == 1
  jax.tree.map(np.testing.assert_array_equal, restored.params,
               states[0].params)
