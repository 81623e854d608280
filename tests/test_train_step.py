"""The LoCal+SGD step: partitions, gradient isolation, k = 0 == SGD, XLA counts."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from localsgd_jax import models
from localsgd_jax import optim
from localsgd_jax import partition
from localsgd_jax import step_cache
from localsgd_jax import train_step as ts
from localsgd_jax.configs import default
from localsgd_jax.models import base as models_base

SHAPE = (16, 16, 1)


def _config(**local):
  config = default.get_config()
  config.optim.learning_rate = 0.05
  config.optim.schedule = 'constant'
  config.local.learning_rate = 0.01
  # The full Hebbian GEMM at every step unless a test says otherwise.
  config.local.hebbian_fraction = 1.0
  config.local.hebbian_every = 1
  config.local.update(local)
  return config


def _setup(config, name='tiny', shape=SHAPE, batch=8):
  model = models.create_model(name, 10, dtype=jnp.float32)
  tx = optim.direction(config.optim)
  state = ts.create_train_state(model, tx, jax.random.key(0), shape)
  rng = np.random.default_rng(0)
  batch = {'image': jnp.asarray(rng.normal(size=(batch, *shape)), jnp.float32),
           'label': jnp.asarray(rng.integers(0, 10, batch), jnp.int32),
           'mask': jnp.ones((batch,), jnp.float32)}
  # The configs' constant schedule: the peak rate at every step.
  step = functools.partial(ts.make_train_step(model, tx, config),
                           rates=ts.step_rates(config))
  return model, tx, state, batch, step


def _run(step, state, batch, k):
  return jax.jit(step, static_argnums=2)(state, batch, k)


@pytest.mark.parametrize('name', ['tiny', 'resnet20', 'mobilenet_v2'])
def test_partition_covers_every_parameter_once(name):
  model = models.create_model(name, 10)
  params = jax.eval_shape(functools.partial(model.init, train=False),
                          jax.random.key(0),
                          jnp.zeros((1, 32, 32, 3)))['params']
  leaves = {jax.tree_util.keystr(p) for p, _ in
            jax.tree_util.tree_leaves_with_path(params)}
  for k in range(model.num_units):
    local, sgd = partition.split(dict(params), k)
    got = [jax.tree_util.keystr(p) for t in (local, sgd) for p, _ in
           jax.tree_util.tree_leaves_with_path(t)]
    assert sorted(got) == sorted(leaves)  # every leaf exactly once
    assert all(models_base.unit_index(n) < k for n in local)
    assert all(models_base.unit_index(n) >= k for n in sgd)
    assert partition.merge(local, sgd).keys() == params.keys()


def test_k0_is_the_plain_sgd_step():
  """k = 0 equals an optax SGD(momentum, nesterov) + weight decay step."""
  config = _config()
  model, _, state, batch, step = _setup(config)
  new, metrics = _run(step, state, batch, 0)

  variables = {'params': state.params, 'batch_stats': state.batch_stats}

  def loss_fn(params):
    logits, upd = model.apply({**variables, 'params': params}, batch['image'],
                              train=True, mutable=['batch_stats'])
    loss = optax.softmax_cross_entropy_with_integer_labels(
        logits, batch['label']).mean()
    return loss, upd
  (loss, upd), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  ref_tx = optax.chain(optax.add_decayed_weights(5e-4),
                       optax.sgd(0.05, momentum=0.9, nesterov=True))
  updates, _ = ref_tx.update(grads, ref_tx.init(state.params), state.params)
  want = optax.apply_updates(state.params, updates)
  np.testing.assert_allclose(metrics['loss'], loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-7),
               new.params, want)
  jax.tree.map(np.testing.assert_array_equal, new.batch_stats,
               upd['batch_stats'])


def test_local_units_get_no_gradient_and_sgd_units_no_hebbian():
  k = 2
  _, _, state, batch, step_frozen = _setup(_config(rule='frozen'))
  _, _, _, _, step_gha = _setup(_config(rule='gha'))
  frozen, _ = _run(step_frozen, state, batch, k)
  gha, m = _run(step_gha, state, batch, k)
  local0, sgd0 = partition.split(state.params, k)
  local_f, sgd_f = partition.split(frozen.params, k)
  local_g, sgd_g = partition.split(gha.params, k)
  # Frozen: local parameters untouched, so no gradient reached them.
  jax.tree.map(np.testing.assert_array_equal, local_f, local0)
  # The local rule changes local kernels only; BN scale/bias stay.
  for name in local0:
    assert not np.allclose(local_g[name]['conv']['kernel'],
                           local0[name]['conv']['kernel'])
    for leaf in ('scale', 'bias'):
      np.testing.assert_array_equal(local_g[name]['bn'][leaf],
                                    local0[name]['bn'][leaf])
  # SGD units see the same forward either way: identical updates.
  jax.tree.map(np.testing.assert_array_equal, sgd_g, sgd_f)
  # Optimizer state of local units is untouched; its structure is fixed.
  assert (jax.tree.structure(gha.opt_state)
          == jax.tree.structure(state.opt_state))
  for name in local0:
    jax.tree.map(np.testing.assert_array_equal, gha.opt_state[name],
                 state.opt_state[name])
  assert float(m['local_lr']) > 0


def test_local_batchnorm_statistics_keep_updating():
  _, _, state, batch, step = _setup(_config(rule='frozen'))
  new, _ = _run(step, state, batch, 2)
  before = state.batch_stats['units_0']['bn']['mean']
  after = new.batch_stats['units_0']['bn']['mean']
  assert not np.allclose(before, after)


def _traced(step, state, batch, k):
  return jax.jit(step, static_argnums=2).trace(state, batch, k)


def _flops(traced):
  return step_cache.xla_costs(traced.lower().compile(), traced)['flops']


def test_local_unit_costs_forward_plus_one_gemm():
  """XLA's FLOPs: a local unit adds at most one GEMM over its forward pass."""
  _, _, state, batch, step_h = _setup(_config(rule='hebb'), batch=16)
  model, _, _, _, step_f = _setup(_config(rule='frozen'), batch=16)
  fwd = jax.jit(lambda v, x: model.apply(v, x, train=True, start=0, stop=1,
                                         mutable=['batch_stats'])[0])
  fwd_flops = _flops(fwd.trace({'params': state.params,
                                'batch_stats': state.batch_stats},
                               batch['image']))
  hebb = _flops(_traced(step_h, state, batch, 1))
  frozen = _flops(_traced(step_f, state, batch, 1))
  sgd = _flops(_traced(step_h, state, batch, 0))
  # The Hebbian GEMM has the forward conv's size; the rest is elementwise.
  assert hebb - frozen <= 1.25 * fwd_flops
  assert hebb - frozen >= 0.8 * fwd_flops * 0.5
  # Unit 0 at k = 0 already skips its input gradient; SGD adds its weight
  # gradient (one GEMM) where the local step adds the Hebbian one.
  assert hebb <= sgd * 1.02


@pytest.mark.slow  # compiles the step for every k (5-10 s each)
@pytest.mark.parametrize('rule', ['oja', 'frozen'])
def test_flops_and_temp_memory_fall_as_k_grows(rule):
  # (gha adds a C_out x C_out product per layer: on the tiny model moving its
  # last conv to local costs more than the head's input gradient it saves.)
  config = _config(rule=rule)
  model, _, state, batch, step = _setup(config, 'tiny', (32, 32, 1), 32)
  flops, temp = [], []
  for k in range(model.num_units):
    traced = _traced(step, state, batch, k)
    costs = step_cache.xla_costs(traced.lower().compile(), traced)
    flops.append(costs['flops'])
    temp.append(costs['temp_bytes'])
  assert all(b <= a * 1.01 for a, b in zip(flops, flops[1:])), flops
  assert all(b <= a * 1.05 for a, b in zip(temp, temp[1:])), temp
  assert flops[-1] < 0.75 * flops[0]
  assert temp[-1] < 0.5 * temp[0]


def test_step_cache_compiles_once_per_k():
  _, _, state, batch, step = _setup(_config())
  cache = step_cache.StepCache(step, donate=False)
  for k in (0, 1, 0, 1, 2):
    state, _ = cache(state, batch, k)
  assert sorted(cache.compile_time_s) == [(0, False), (1, True), (2, True)]
  assert int(state.step) == 5


def test_hebbian_every_m_steps():
  """hebbian=False runs local units forward only; the Hebbian step's local
  learning rate is scaled by hebbian_every."""
  k = 2
  _, _, state, batch, step_f = _setup(_config(rule='frozen'))
  _, _, _, _, step_1 = _setup(_config(rule='oja'))
  _, _, _, _, step_3 = _setup(_config(rule='oja', hebbian_every=3))
  frozen, _ = _run(step_f, state, batch, k)
  skipped, _ = jax.jit(step_3, static_argnums=(2, 3))(state, batch, k, False)
  jax.tree.map(np.testing.assert_array_equal, skipped.params, frozen.params)
  once, m1 = _run(step_1, state, batch, k)
  thrice, m3 = _run(step_3, state, batch, k)
  np.testing.assert_allclose(m3['local_lr'], 3 * m1['local_lr'], rtol=1e-6)
  local0 = partition.split(state.params, k)[0]
  for name in local0:
    d1 = once.params[name]['conv']['kernel'] - local0[name]['conv']['kernel']
    d3 = thrice.params[name]['conv']['kernel'] - local0[name]['conv']['kernel']
    assert float(jnp.linalg.norm(d3)) > 2 * float(jnp.linalg.norm(d1))


# --- test-time augmentation at evaluation ----------------------------------

def test_diagonal_shifts_move_the_content_one_pixel_with_reflection():
  x = jnp.arange(9.0).reshape(1, 3, 3, 1)  # rows [0 1 2], [3 4 5], [6 7 8]
  down, up = ts.diagonal_shifts(x)
  # Down-right: reflect-padded row/column -1 is row/column 1.
  np.testing.assert_array_equal(down[0, :, :, 0],
                                [[4, 3, 4], [1, 0, 1], [4, 3, 4]])
  np.testing.assert_array_equal(up[0, :, :, 0],
                                [[4, 5, 4], [7, 8, 7], [4, 5, 4]])
  np.testing.assert_array_equal(ts.mirror(x)[0, :, :, 0],
                                [[2, 1, 0], [5, 4, 3], [8, 7, 6]])


def test_tta_logits_by_hand():
  """Logits = the image's first row (3 'classes'): plain [0 1 2], mirror
  [2 1 0]; the shifts' first rows [4 3 4] and [4 5 4] are symmetric."""
  x = jnp.arange(9.0).reshape(1, 3, 3, 1)
  logits_of = lambda v: v[:, 0, :, 0] + 0.1 * v[:, 1, :, 0]  # (B, 3)
  plain = logits_of(x)
  flip = ts.tta_logits(logits_of, x, 'flip', plain)
  np.testing.assert_allclose(flip, [[1.4, 1.4, 1.4]], rtol=1e-6)
  # 0.5 x flip + 0.25 x (mirror pair of down + mirror pair of up):
  # down rows 0-1 [4 3 4] + 0.1 [1 0 1]; up [4 5 4] + 0.1 [7 8 7].
  down = np.array([4.1, 3.0, 4.1])  # symmetric: its own mirror
  up = np.array([4.7, 5.8, 4.7])
  want = 0.5 * 1.4 + 0.25 * (down + up)
  np.testing.assert_allclose(ts.tta_logits(logits_of, x, 'flip_shift', plain),
                             want[None], rtol=1e-6)


def _eval_setup(batch=12):
  model = models.create_model('tiny', 10, dtype=jnp.float32)
  config = _config()
  tx = optim.direction(config.optim)
  state = ts.create_train_state(model, tx, jax.random.key(1), SHAPE)
  rng = np.random.default_rng(3)
  x = rng.normal(size=(batch, *SHAPE)).astype(np.float32)
  batch = {'image': jnp.asarray(x),
           'label': jnp.asarray(rng.integers(0, 10, batch), jnp.int32),
           # the last 2 rows are padding
           'mask': jnp.asarray([1.0] * (batch - 2) + [0.0, 0.0])}
  return model, state, x, batch


@pytest.mark.parametrize('tta', ['flip', 'flip_shift'])
def test_eval_step_tta_matches_explicit_views(tta):
  """One pass: the plain sums are those of the eval step without TTA, bit
  for bit; the TTA sums are those of the logits averaged over the views
  built in NumPy and evaluated one by one."""
  model, state, x, batch = _eval_setup()
  plain = jax.jit(ts.make_eval_step(model))(state.params, state.batch_stats,
                                            batch)
  both = jax.jit(ts.make_eval_step(model, tta))(state.params,
                                                state.batch_stats, batch)
  assert set(plain) == {'loss_sum', 'correct', 'count'}
  for key in plain:
    np.testing.assert_array_equal(both[key], plain[key])

  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  logits = lambda v: np.asarray(model.apply(variables, jnp.asarray(v),
                                            train=False))
  pair = lambda v: 0.5 * logits(v) + 0.5 * logits(v[:, :, ::-1])
  want = pair(x)
  if tta == 'flip_shift':
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode='reflect')
    h, w = x.shape[1:3]
    want = 0.5 * want + 0.25 * (pair(padded[:, :h, :w])
                                + pair(padded[:, 2:, 2:]))
  labels, mask = np.asarray(batch['label']), np.asarray(batch['mask'])
  log_p = want - np.log(np.sum(np.exp(want - want.max(-1, keepdims=True)),
                               -1, keepdims=True)) - want.max(-1, keepdims=True)
  loss = -np.sum(log_p[np.arange(len(x)), labels] * mask)
  np.testing.assert_allclose(both['tta_loss_sum'], loss, rtol=1e-5)
  assert int(both['tta_correct']) == int(
      np.sum((want.argmax(-1) == labels) * mask))


def test_weak_supervision_factor_compares_with_the_previous_average():
  """The step's factor is min(1, average of the earlier losses / loss), and
  the average then takes this loss in."""
  _, _, state, batch, step = _setup(_config(rule='oja'))
  first, m0 = _run(step, state, batch, 2)  # no earlier loss: factor 1
  loss = float(m0['loss'])
  assert float(m0['ws_factor']) == 1.0
  assert float(first.loss_ema) == loss
  for prev, want in ((loss / 2, 0.5), (2 * loss, 1.0)):
    new, m = _run(step, state.replace(loss_ema=jnp.float32(prev)), batch, 2)
    np.testing.assert_allclose(m['ws_factor'], want, rtol=1e-5)
    np.testing.assert_allclose(new.loss_ema, 0.98 * prev + 0.02 * loss,
                               rtol=1e-5)
    np.testing.assert_allclose(
        m['local_lr'], 0.01 * want, rtol=1e-5)  # constant schedule


@pytest.mark.parametrize('rule', ['frozen', 'oja'])
def test_local_phase_measures_the_steps_of_the_rule(rule):
  """Over a few local steps: frozen kernels have angle and change exactly 0;
  oja's rotate them (norm kept: the change is ~ the angle)."""
  from localsgd_jax import local_phase
  k = 2
  _, _, state, batch, step = _setup(_config(rule=rule))
  phase = local_phase.LocalPhase()
  phase.begin(k, state.params)
  jitted = jax.jit(step, static_argnums=2, donate_argnums=0)
  for _ in range(3):
    state, _ = jitted(state, batch, k)
  got = phase.measure(state.params, 4)
  assert got['local_filter_angle'][k:] == [None, None]
  if rule == 'frozen':
    assert got['local_filter_angle'][:k] == [0.0, 0.0]
    assert got['local_filter_change'][:k] == [0.0, 0.0]
  else:
    for angle, change in zip(got['local_filter_angle'][:k],
                             got['local_filter_change'][:k]):
      assert 1e-4 < angle < 0.5
      assert change == pytest.approx(angle, rel=0.3)


@pytest.mark.parametrize('k', [0, 2])
def test_weight_moving_average_by_hand(k):
  """With optim.ema_decay the state keeps a moving average of the weights
  and BatchNorm statistics, with the warmed-up decay min(d, (1+t)/(10+t)),
  and the trained weights are bit-identical to a run without it."""
  config = _config()
  config.optim.ema_decay = 0.9
  model, tx, _, batch, step = _setup(config)
  state = ts.create_train_state(model, tx, jax.random.key(0), SHAPE, ema=True)
  plain_state = ts.create_train_state(model, tx, jax.random.key(0), SHAPE)
  plain_step = jax.jit(_setup(_config())[4], static_argnums=2)
  assert plain_state.ema is None
  assert plain_state.eval_variables() == (plain_state.params,
                                          plain_state.batch_stats)
  want = jax.device_get({'params': state.params,
                         'batch_stats': state.batch_stats})
  jstep = jax.jit(step, static_argnums=2)
  for t in range(12):  # the warm-up gives d = 0.9 from t = 80 on
    state, _ = jstep(state, batch, k)
    plain_state, _ = plain_step(plain_state, batch, k)
    d = min(0.9, (1 + t) / (10 + t))
    new = jax.device_get({'params': state.params,
                          'batch_stats': state.batch_stats})
    want = jax.tree.map(lambda a, x: d * a + (1 - d) * x, want, new)
  jax.tree.map(np.testing.assert_array_equal, state.params,
               plain_state.params)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5,
                                 atol=1e-6), jax.device_get(state.ema), want)
  params, stats = state.eval_variables()
  assert params is state.ema['params'] and stats is state.ema['batch_stats']
  # The average lags the weights: it is not a copy of them.
  gap = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
      jax.tree.leaves(state.params), jax.tree.leaves(state.ema['params'])))
  assert gap > 1e-4
