"""Local rules against a NumPy reference, through the real interceptor."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

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
