"""Tests of the model zoo: counts, shapes, unit structure, cost.

Big models only go through jax.eval_shape (tracing, no arithmetic); only tiny
and resnet20 run on real numbers.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from localsgd_jax import errors
from localsgd_jax import models
from localsgd_jax.models import base
from localsgd_jax.models import vgg
from localsgd_jax.models.base import ClassifierHead

CIFAR = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
IMAGENET = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)


def _rng(seed):
  # 'rbg' keys: threefry's init kernels take ~10 s to compile on 2 CPU cores.
  return jax.random.key(seed, impl='rbg')

# torchvision's published counts (1000 classes). torchvision's VGG-BN convs
# carry a bias that the BN after them cancels; ours have none, so VGG counts
# are lower by one bias per conv channel.
VGG16_CONV_CHANNELS = 2 * 64 + 2 * 128 + 3 * 256 + 6 * 512  # 4,224
VGG19_CONV_CHANNELS = 2 * 64 + 2 * 128 + 4 * 256 + 8 * 512  # 5,504
IMAGENET_PARAMS = {
    'resnet18': 11_689_512,
    'resnet34': 21_797_672,
    'resnet50': 25_557_032,
    'resnet101': 44_549_160,
    'vgg16': 138_365_992 - VGG16_CONV_CHANNELS,
    'vgg19': 143_678_248 - VGG19_CONV_CHANNELS,
    'mobilenet_v2': 3_504_872,
}

# He et al. 2016, Table 6 (10 classes).
CIFAR_RESNET_PARAMS = {'resnet20': 0.27e6, 'resnet56': 0.85e6}

# Units per model with cifar_stem=True: stem + blocks + head (+ MobileNetV2's
# 1x1 conv to 1280; VGG: one unit per conv + head).
CIFAR_NUM_UNITS = {
    'tiny': 4, 'resnet18': 10, 'resnet34': 18, 'resnet50': 18,
    'resnet101': 35, 'resnet20': 11, 'resnet56': 29, 'vgg16': 14,
    'vgg19': 17, 'mobilenet_v2': 20,
}


def _abstract_variables(model, x):
  return jax.eval_shape(functools.partial(model.init, train=False),
                        jax.random.key(0), x)


def _num_params(variables):
  return sum(leaf.size for leaf in jax.tree.leaves(variables['params']))


def test_registry_names():
  assert sorted(models.MODELS) == sorted(CIFAR_NUM_UNITS)


@pytest.mark.parametrize('name', sorted(IMAGENET_PARAMS))
def test_imagenet_param_counts_match_torchvision(name):
  model = models.create_model(name, 1000, cifar_stem=False)
  assert _num_params(_abstract_variables(model, IMAGENET)) == (
      IMAGENET_PARAMS[name])


@pytest.mark.parametrize('name', sorted(CIFAR_RESNET_PARAMS))
def test_cifar_resnet_param_counts_match_paper(name):
  model = models.create_model(name, 10)
  n = _num_params(_abstract_variables(model, CIFAR))
  assert n == pytest.approx(CIFAR_RESNET_PARAMS[name], rel=0.03)


@pytest.mark.parametrize('name', sorted(CIFAR_NUM_UNITS))
def test_cifar_output_shape_and_units(name):
  model = models.create_model(name, 10)
  assert model.num_units == CIFAR_NUM_UNITS[name]
  variables = _abstract_variables(model, CIFAR)
  assert set(variables['params']) == {
      base.unit_name(i) for i in range(CIFAR_NUM_UNITS[name])}
  out = jax.eval_shape(functools.partial(model.apply, train=False),
                       variables, CIFAR)
  assert out.shape == (2, 10)
  assert out.dtype == jnp.float32


@pytest.mark.parametrize('name', sorted(CIFAR_NUM_UNITS))
@pytest.mark.parametrize('cifar_stem', [True, False])
def test_head_is_last_unit(name, cifar_stem):
  model = models.create_model(name, 10, cifar_stem=cifar_stem)
  assert isinstance(model.units[-1], ClassifierHead)
  assert not any(isinstance(u, ClassifierHead) for u in model.units[:-1])


@pytest.mark.parametrize('name', [n for n in sorted(CIFAR_NUM_UNITS)
                                  if n.startswith('resnet')])
def test_resnet_head_holds_the_only_dense(name):
  model = models.create_model(name, 10)
  params = _abstract_variables(model, CIFAR)['params']
  # A Dense kernel is 2-D; conv kernels are 4-D.
  dense_units = sorted(
      unit for unit, tree in params.items()
      if any(leaf.ndim == 2 for leaf in jax.tree.leaves(tree)))
  assert dense_units == [base.unit_name(model.num_units - 1)]


@pytest.mark.parametrize('name', sorted(CIFAR_NUM_UNITS))
def test_every_weight_belongs_to_a_plain_conv_or_dense(name):
  # The local rule intercepts nn.Conv / nn.Dense calls, so every weight of the
  # network must live in one of those modules, never in a custom layer.
  model = models.create_model(name, 10)
  variables = _abstract_variables(model, CIFAR)
  seen = set()

  def record(next_fun, args, kwargs, context):
    if (context.method_name == '__call__'
        and isinstance(context.module, (nn.Conv, nn.Dense))):
      seen.add(context.module.path)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(functools.partial(model.apply, train=False), variables,
                   CIFAR)
  kernels = {path[:-1] for path in _leaf_paths(variables['params'])
             if path[-1] == 'kernel'}
  assert kernels == seen


def _leaf_paths(tree):
  return [tuple(k.key for k in path)
          for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def test_params_are_float32_under_bfloat16_compute():
  model = models.create_model('resnet20', 10, dtype=jnp.bfloat16)
  variables = _abstract_variables(model, CIFAR)
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {
      jnp.dtype(jnp.float32)}
  out = jax.eval_shape(functools.partial(model.apply, train=False),
                       variables, CIFAR)
  assert out.dtype == jnp.float32


@pytest.mark.parametrize('name,channels', [('tiny', 1), ('resnet20', 3)])
def test_running_units_in_two_parts_equals_running_all(name, channels):
  model = models.create_model(name, 10)
  x = jax.random.normal(_rng(1), (4, 32, 32, channels))
  variables = model.init(_rng(0), x, train=False)
  # One training-mode pass moves the BN statistics off their (0, 1) init, so
  # the eval-mode comparison below is not trivially an identity in BN.
  _, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])
  variables = {'params': variables['params'], **updates}
  full = model.apply(variables, x, train=False)
  num = model.num_units
  for k in sorted({0, 1, num // 2, num - 1, num}):
    mid = model.apply(variables, x, train=False, stop=k)
    out = model.apply(variables, mid, train=False, start=k)
    np.testing.assert_allclose(out, full, rtol=1e-6, atol=1e-6,
                               err_msg=f'split at k={k}')


def test_same_name_builds_same_model():
  a = models.create_model('resnet20', 10)
  b = models.create_model('resnet20', 10)
  x = jnp.ones((1, 32, 32, 3))
  va = a.init(_rng(0), x, train=False)
  vb = b.init(_rng(0), x, train=False)
  jax.tree.map(np.testing.assert_array_equal, va, vb)


def test_unknown_name_lists_valid_names():
  with pytest.raises(errors.UserError) as info:
    models.create_model('resnet1000', 10)
  message = str(info.value)
  assert ', '.join(sorted(models.MODELS)) in message
  assert '--config.model.name=' in message
  assert 'resnet1000' in message


def test_tiny_forward_flops():
  model = models.create_model('tiny', 10)
  x = jnp.zeros((1, 32, 32, 1))
  variables = model.init(_rng(0), x, train=False)
  forward = jax.jit(functools.partial(model.apply, train=False))
  cost = forward.lower(variables, x).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older JAX returns one dict per device.
    cost = cost[0]
  # Convs: 2 * (32*32*9*1*16 + 16*16*9*16*32 + 8*8*9*32*64) = 4.8M; XLA
  # counted 4.6M (jax 0.10.2). The lower bound catches a model that lost a layer.
  assert 2e6 < cost['flops'] < 30e6
  assert _num_params(variables) < 100_000


@pytest.mark.parametrize('size_in', [1, 7, 10, 14])
def test_adaptive_avg_pool_matches_pytorch_windows(size_in):
  x = np.random.default_rng(0).normal(size=(2, size_in, size_in + 3, 5))
  want = np.zeros((2, 7, 7, 5))
  for i in range(7):
    h0, h1 = (i * size_in) // 7, -(-((i + 1) * size_in) // 7)
    for j in range(7):
      w0, w1 = (j * (size_in + 3)) // 7, -(-((j + 1) * (size_in + 3)) // 7)
      want[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
  np.testing.assert_allclose(vgg.adaptive_avg_pool(jnp.asarray(x), 7), want,
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('name', ['resnet20', 'mobilenet_v2'])
def test_torch_default_init_draws_pytorch_layer_defaults(name):
  """init='torch_default': every conv and dense kernel, and the head's bias,
  is U(-b, b) with b = 1 / sqrt(fan_in) as torch.nn.Conv2d / nn.Linear
  draw them (fan_in of a depthwise kernel: kh * kw); BatchNorm stays at
  (1, 0); 'he_fan_out' keeps the modules' own initialisers bit for bit."""
  import optax  # pylint: disable=g-import-not-at-top
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  from localsgd_jax import train_step  # pylint: disable=g-import-not-at-top
  model = models.create_model(name, 10)
  states = {init: train_step.create_train_state(
      model, optax.sgd(0.1), _rng(0), (32, 32, 3), init=init)
            for init in models.INITS}
  variables = model.init(_rng(0), jnp.zeros((1, 32, 32, 3)), train=False)
  for a, b in zip(jax.tree.leaves(states['he_fan_out'].params),
                  jax.tree.leaves(variables['params'])):
    np.testing.assert_array_equal(a, b)
  flat = traverse_util.flatten_dict(states['torch_default'].params)
  he = traverse_util.flatten_dict(states['he_fan_out'].params)
  kernels = [p for p in flat if p[-1] == 'kernel']
  assert len(kernels) == sum(p[-1] == 'kernel' for p in he) > 10
  depthwise = 0
  for path in kernels:
    kernel = np.asarray(flat[path])
    fan_in = int(np.prod(kernel.shape[:-1]))
    depthwise += kernel.ndim == 4 and kernel.shape[2] == 1
    bound = 1 / np.sqrt(fan_in)
    assert np.abs(kernel).max() <= bound, path
    if kernel.size >= 4096:  # std of U(-b, b) is b / sqrt(3)
      np.testing.assert_allclose(kernel.std(), bound / np.sqrt(3), rtol=0.05)
    bias = path[:-1] + ('bias',)
    if bias in flat:  # the head's Dense
      assert 0 < np.abs(flat[bias]).max() <= bound
  assert depthwise == (17 if name == 'mobilenet_v2' else 0)
  for path, leaf in flat.items():
    if path[-1] == 'scale' or (path[-1] == 'bias' and
                               path[:-1] + ('kernel',) not in flat):
      np.testing.assert_array_equal(leaf, he[path])  # BatchNorm: (1, 0)


def test_unknown_init_is_refused_with_the_choices():
  from localsgd_jax import config_validation  # pylint: disable=g-import-not-at-top
  from localsgd_jax.configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.model.init = 'xavier'
  with pytest.raises(errors.UserError,
                     match="config.model.init='xavier'.*he_fan_out, "
                           'torch_default'):
    config_validation.validate_config(config)
