"""Local rules against a NumPy reference, through the real interceptor."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from localsgd_jax import local_phase
from localsgd_jax import local_rules
from localsgd_jax import train_step


def _local_cfg(rule, activity='bn', fraction=1.0):
  return ml_collections.ConfigDict({
      'rule': rule, 'activity': activity, 'hebbian_fraction': fraction})


def _np_activity(y, kind):
  y = y.astype(np.float64)
  if kind == 'conv':
    return y
  axes = tuple(range(y.ndim - 1))
  a = (y - y.mean(axes)) / np.sqrt(y.var(axes) + 1e-5)
  return np.maximum(a, 0) if kind == 'bn_relu' else a


def _np_conv_corr(x, a, kh, kw):
  """sum_{b,i,j} xpad[b, i+u, j+v, c] a[b, i, j, o] / n, SAME, stride 1."""
  b, h, w, c = x.shape
  xp = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
  corr = np.zeros((kh, kw, c, a.shape[-1]))
  for u in range(kh):
    for v in range(kw):
      patch = xp[:, u:u + h, v:v + w, :].reshape(-1, c)
      corr[u, v] = patch.T @ a.reshape(-1, a.shape[-1])
  return corr / (b * h * w)


def _np_rule(rule, w, corr, a):
  flat = a.reshape(-1, a.shape[-1])
  n = flat.shape[0]
  if rule == 'hebb':
    return corr
  if rule == 'oja':
    return corr - w * (flat ** 2).mean(0)
  cov = flat.T @ flat / n
  return corr - (w.reshape(-1, w.shape[-1]) @ np.triu(cov)).reshape(w.shape)


def _hebbian(module, x, cfg):
  variables = module.init(jax.random.key(0), x)
  with nn.intercept_methods(train_step.hebbian_interceptor(cfg)):
    y, new = module.apply(variables, x, mutable=['hebbian'])
  return (np.asarray(variables['params']['kernel'], np.float64),
          np.asarray(y, np.float64), np.asarray(new['hebbian']['kernel']))


@pytest.mark.parametrize('rule', local_rules.RULES)
@pytest.mark.parametrize('activity', local_rules.ACTIVITIES)
def test_conv_rule_matches_numpy(rule, activity):
  x = jax.random.normal(jax.random.key(1), (3, 6, 5, 4))
  w, y, got = _hebbian(nn.Conv(5, (3, 3), use_bias=False), x,
                       _local_cfg(rule, activity))
  a = _np_activity(y, activity)
  want = _np_rule(rule, w, _np_conv_corr(np.asarray(x, np.float64), a, 3, 3),
                  a)
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize('rule', local_rules.RULES)
def test_dense_rule_matches_numpy(rule):
  x = jax.random.normal(jax.random.key(2), (8, 6))
  w, y, got = _hebbian(nn.Dense(3), x, _local_cfg(rule, 'conv'))
  x64 = np.asarray(x, np.float64)
  corr = x64.T @ y / 8  # the activity is the output, bias included
  np.testing.assert_allclose(got, _np_rule(rule, w, corr, y), rtol=2e-4,
                             atol=2e-5)


def test_bfloat16_layer_accumulates_its_hebbian_sum_in_float32():
  """A bf16 layer's contraction is the float32 sum of its bf16 inputs: no
  rounding of the result to bf16 (which would be ~4e-3 relative)."""
  x = jax.random.normal(jax.random.key(3), (4, 6, 6, 8)).astype(jnp.bfloat16)
  module = nn.Conv(16, (3, 3), use_bias=False, dtype=jnp.bfloat16)
  w, y, got = _hebbian(module, x, _local_cfg('hebb', 'bn'))
  assert got.dtype == np.float32
  a = _np_activity(y, 'bn')  # from the layer's own bf16 output
  want = _np_conv_corr(np.asarray(x, np.float64), a, 3, 3)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_hebbian_fraction_uses_every_mth_example():
  x = jax.random.normal(jax.random.key(3), (8, 4, 4, 2))
  cfg = _local_cfg('hebb', 'conv', fraction=0.25)
  w, _, got = _hebbian(nn.Conv(3, (3, 3), use_bias=False), x, cfg)
  xs = np.asarray(x, np.float64)[::4]
  ys = np.asarray(nn.Conv(3, (3, 3), use_bias=False).apply(
      {'params': {'kernel': jnp.asarray(w, jnp.float32)}}, x[::4]), np.float64)
  np.testing.assert_allclose(got, _np_conv_corr(xs, ys, 3, 3), rtol=2e-4,
                             atol=2e-5)


def test_depthwise_gha_falls_back_to_oja():
  x = jax.random.normal(jax.random.key(4), (2, 5, 5, 3))
  conv = nn.Conv(3, (3, 3), feature_group_count=3, use_bias=False)
  _, _, gha = _hebbian(conv, x, _local_cfg('gha'))
  _, _, oja = _hebbian(conv, x, _local_cfg('oja'))
  np.testing.assert_allclose(gha, oja, rtol=1e-6)
  assert gha.shape == (3, 3, 1, 3)


def test_no_hebbian_outside_local_units():
  """Where 'hebbian' is not mutable (SGD units), nothing is computed."""
  x = jnp.ones((2, 4, 4, 2))
  conv = nn.Conv(3, (3, 3))
  variables = conv.init(jax.random.key(0), x)
  with nn.intercept_methods(train_step.hebbian_interceptor(_local_cfg('oja'))):
    _, new = conv.apply(variables, x, mutable=['batch_stats'])
  assert 'hebbian' not in new


def test_apply_update_normalize_keeps_filter_norms():
  k = jax.random.normal(jax.random.key(5), (3, 3, 4, 6))
  d = jax.random.normal(jax.random.key(6), k.shape)
  new = local_rules.apply_update(k, d, jnp.float32(0.3), normalize=True)
  np.testing.assert_allclose(jnp.linalg.norm(new.reshape(-1, 6), axis=0),
                             jnp.linalg.norm(k.reshape(-1, 6), axis=0),
                             rtol=1e-5)
  assert not np.allclose(new, k)
  raw = local_rules.apply_update(k, d, jnp.float32(0.3), normalize=False)
  np.testing.assert_allclose(raw, k + 0.3 * d, rtol=1e-6)


def test_apply_update_survives_a_norm_overflow():
  # An update past ~1e19 overflows the sum of squares to inf: without care,
  # k * old / inf is exact zeros and the run trains on at chance.
  k = jax.random.normal(jax.random.key(5), (3, 3, 4, 6))
  d = jax.random.normal(jax.random.key(6), k.shape)
  norms = jnp.linalg.norm(k.reshape(-1, 6), axis=0)
  new = local_rules.apply_update(k, d, jnp.float32(1e25), normalize=True)
  np.testing.assert_allclose(jnp.linalg.norm(new.reshape(-1, 6), axis=0),
                             norms, rtol=1e-5)
  # The filters turned to the update's direction (the rate dwarfs k).
  unit = d / jnp.linalg.norm(d.reshape(-1, 6), axis=0)
  np.testing.assert_allclose(new / norms, unit, atol=1e-5)
  # An update that is itself inf stays non-finite, for the finite check.
  inf = local_rules.apply_update(k, d, jnp.float32(jnp.inf), normalize=True)
  assert not np.isfinite(np.asarray(inf)).any()


def test_oja_filters_converge_to_unit_norm():
  """Oja's decay stabilises the kernel norm where plain Hebb would grow."""
  rng = np.random.default_rng(0)
  data = rng.normal(size=(512, 5)) * np.array([3.0, 1, 0.5, 0.2, 0.1])
  w = jnp.asarray(rng.normal(size=(5, 1)) * 0.1, jnp.float32)
  for _ in range(300):
    a = jnp.asarray(data, jnp.float32) @ w
    d = local_rules.hebbian_direction(
        'oja', w, lambda act: jnp.asarray(data, jnp.float32).T @ act, a)
    w = w + 0.05 * d
  assert abs(float(jnp.linalg.norm(w)) - 1.0) < 1e-2
  assert abs(float(w[0, 0])) > 0.99  # the first principal direction


@pytest.mark.parametrize('mode,loss,ema,want', [
    ('none', 2.0, 1.0, 1.0),
    ('scale', 2.0, 1.0, 0.5),
    ('scale', 0.5, 1.0, 1.0),
    ('sign', 2.0, 1.0, -1.0),
    ('sign', 1.0, 1.0, 1.0),
])
def test_weak_supervision_factor(mode, loss, ema, want):
  got = local_rules.weak_supervision_factor(mode, jnp.float32(loss),
                                            jnp.float32(ema), power=1.0)
  assert float(got) == pytest.approx(want)


def test_frozen_is_a_mode_not_a_rule_function():
  """'frozen' is accepted by config.local.rule but computes no direction."""
  from localsgd_jax import config_validation
  assert local_rules.FROZEN == 'frozen'
  assert local_rules.is_frozen('frozen')
  assert not any(local_rules.is_frozen(r) for r in local_rules.RULES)
  assert local_rules.FROZEN not in local_rules.RULES
  assert config_validation.LOCAL_RULES == local_rules.RULES + ('frozen',)
  with pytest.raises(ValueError, match='unknown local rule'):
    local_rules.hebbian_direction('frozen', jnp.ones((2, 4)),
                                  lambda a: jnp.ones((2, 4)), jnp.ones((5, 4)))


def _ws_sequence(mode, losses, decay=0.5):
  ema, factors, emas = jnp.float32(jnp.nan), [], []
  for loss in losses:
    f, ema = local_rules.weak_supervision(mode, jnp.float32(loss), ema, decay,
                                          power=1.0)
    factors.append(float(f))
    emas.append(float(ema))
  return factors, emas


def test_weak_supervision_compares_with_the_previous_average():
  """By hand, decay 0.5: averages 1, .9, .75, .625 on the falling losses
  (factor 1 throughout); the loss 1.0 then sits above the average .625 of
  the losses before it: factor .625 (the average after it, .8125, would
  give .8125); the next loss .7 is below .8125 again: 1."""
  factors, emas = _ws_sequence('scale', [1.0, 0.8, 0.6, 0.5, 1.0, 0.7])
  np.testing.assert_allclose(emas, [1.0, 0.9, 0.75, 0.625, 0.8125, 0.75625],
                             rtol=1e-6)
  np.testing.assert_allclose(factors, [1, 1, 1, 1, 0.625, 1], rtol=1e-6)
  signs, _ = _ws_sequence('sign', [1.0, 0.8, 0.6, 0.5, 1.0, 0.7])
  assert signs == [1, 1, 1, 1, -1, 1]
  none, _ = _ws_sequence('none', [1.0, 2.0, 4.0])
  assert none == [1, 1, 1]


def test_weak_supervision_stays_1_on_a_falling_loss():
  losses = 2.0 * 0.97 ** np.arange(200)
  factors, _ = _ws_sequence('scale', losses, decay=0.98)
  assert factors == [1.0] * 200


def _rotated(kernel, angles, rng):
  """Each output filter rotated by its angle, in a plane through a random
  direction orthogonal to it; its norm kept."""
  w = kernel.reshape(-1, kernel.shape[-1])
  out = np.empty_like(w)
  for j in range(w.shape[1]):
    u = w[:, j] / np.linalg.norm(w[:, j])
    e = rng.normal(size=u.shape)
    e -= (e @ u) * u
    e /= np.linalg.norm(e)
    out[:, j] = np.linalg.norm(w[:, j]) * (np.cos(angles[j]) * u
                                           + np.sin(angles[j]) * e)
  return out.reshape(kernel.shape)


def test_filter_angle_and_change_of_a_known_rotation():
  rng = np.random.default_rng(0)
  start = {'units_0': {'conv': {'kernel': rng.normal(size=(3, 3, 2, 4))},
                       'bn': {'scale': np.ones(4)}},
           'units_1': {'conv1': {'kernel': rng.normal(size=(3, 3, 4, 3))},
                       'conv2': {'kernel': rng.normal(size=(4, 2))}}}
  angles = {'units_0': [1e-3, 0.05, 0.3, 1.2], 'units_1': [0.0, 0.01, 0.1,
                                                           0.002, 2.5]}
  now = {'units_0': {'conv': {'kernel': _rotated(
      start['units_0']['conv']['kernel'], angles['units_0'], rng)},
                     'bn': {'scale': np.ones(4)}},
         'units_1': {'conv1': {'kernel': _rotated(
             start['units_1']['conv1']['kernel'], angles['units_1'][:3],
             rng)},
                     'conv2': {'kernel': _rotated(
                         start['units_1']['conv2']['kernel'],
                         angles['units_1'][3:], rng)}}}
  # The primary measure against arccos of the cosine, in float64.
  for name, kernel in (('units_0', 'conv'), ('units_1', 'conv1')):
    a = start[name][kernel]['kernel'].reshape(-1, start[name][kernel][
        'kernel'].shape[-1])
    b = now[name][kernel]['kernel'].reshape(a.shape)
    by_hand = np.arccos(np.clip(np.sum(a * b, 0) / np.linalg.norm(a, axis=0)
                                / np.linalg.norm(b, axis=0), -1, 1))
    got = local_phase.filter_angles(
        jnp.asarray(now[name][kernel]['kernel'], jnp.float32),
        jnp.asarray(start[name][kernel]['kernel'], jnp.float32))
    np.testing.assert_allclose(got, by_hand, rtol=1e-4, atol=2e-6)
  f32 = lambda t: jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), t)
  phase = local_phase.LocalPhase()
  phase.begin(2, f32(start))
  assert set(phase.start) == {'units_0', 'units_1'}
  assert 'bn' not in phase.start['units_0']  # kernels only
  got = phase.measure(f32(now), num_units=3)
  np.testing.assert_allclose(got['local_filter_angle'][:2],
                             [np.mean(angles['units_0']),
                              np.mean(angles['units_1'])], rtol=1e-5)
  # A norm-keeping rotation by t moves a filter by 2 |w| sin(t / 2).
  for u, name in enumerate(('units_0', 'units_1')):
    norms = np.concatenate([np.linalg.norm(k['kernel'].reshape(
        -1, k['kernel'].shape[-1]), axis=0) for k in
                            local_phase.kernels(start[name]).values()])
    moved = 2 * norms * np.sin(np.asarray(angles[name]) / 2)
    want = np.sqrt(np.sum(moved ** 2) / np.sum(norms ** 2))
    np.testing.assert_allclose(got['local_filter_change'][u], want,
                               rtol=1e-5)
  assert got['local_filter_angle'][2] is None  # an SGD unit
  # Unchanged kernels: exactly 0; k falling back forgets unit 1's start.
  same = phase.measure(f32(start), num_units=3)
  assert same['local_filter_angle'][:2] == [0.0, 0.0]
  assert same['local_filter_change'][:2] == [0.0, 0.0]
  phase.begin(1, f32(now))
  assert set(phase.start) == {'units_0'}


def test_ws_stats_cover_the_steps_that_apply_the_rule():
  # k = 0 for steps 0-3, then k = 2; a Hebbian step every 2nd step.
  mask = local_phase.local_rule_steps([(0, 0), (4, 2)], 9, 2, frozen=False)
  assert mask.tolist() == [0, 0, 0, 0, 1, 0, 1, 0, 1]
  assert not local_phase.local_rule_steps([(0, 2)], 4, 1, frozen=True).any()
  ws = np.array([0.1, 0.1, 0.1, 0.1, 1.0, 0.2, 0.5, 0.2, 1.0])
  got = local_phase.ws_stats(ws, mask)
  assert got == {'ws_factor_local': pytest.approx(2.5 / 3),
                 'ws_below_1_fraction': pytest.approx(1 / 3),
                 'local_rule_steps': 3}
  assert local_phase.ws_stats(ws, np.zeros(9, bool)) == {
      'ws_factor_local': None, 'ws_below_1_fraction': None,
      'local_rule_steps': 0}
