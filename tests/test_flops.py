"""XLA's FLOP counts of the programs as written; k_max by FLOP share."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from localsgd_jax import config_validation
from localsgd_jax import flops
from localsgd_jax import metrics
from localsgd_jax import models
from localsgd_jax import optim
from localsgd_jax import run_console
from localsgd_jax import selection
from localsgd_jax import step_cache
from localsgd_jax import train_lib
from localsgd_jax import train_step as ts
from localsgd_jax.configs import cifar10_resnet
from localsgd_jax.configs import default
from localsgd_jax.configs import quickstart
from localsgd_jax.errors import UserError
from localsgd_jax.models import base


@pytest.mark.parametrize('name', ['tiny', 'resnet20'])
def test_unit_flops_add_up_to_the_whole_forward_pass(name):
  model = models.create_model(name, 10)
  per_unit = flops.unit_flops(model, (32, 32, 3))
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(functools.partial(model.init, train=False),
                             jax.random.key(0), x)
  whole = flops.cpu_flops(
      jax.jit(functools.partial(model.apply, train=False)).trace(variables, x))
  assert len(per_unit) == model.num_units
  assert min(per_unit) > 0
  assert sum(per_unit) == pytest.approx(whole, rel=0.01)


# Two 3x3 convs of 16 channels on 8x8 inputs of 8 channels, then the head.
_B, _H, _CIN, _C = 4, 8, 8, 16


def _conv_net():
  return base.Network(units=[base.ConvBNAct(_C, 3), base.ConvBNAct(_C, 3),
                             base.ClassifierHead(10)])


def _conv_step_cache():
  config = default.get_config()
  model = _conv_net()
  tx = optim.direction(config.optim)
  step = functools.partial(ts.make_train_step(model, tx, config),
                           rates=ts.step_rates(config))
  state = ts.create_train_state(model, tx, jax.random.key(0),
                                (_H, _H, _CIN))
  batch = {'image': jnp.ones((_B, _H, _H, _CIN)),
           'label': jnp.zeros((_B,), jnp.int32), 'mask': jnp.ones((_B,))}
  return step_cache.StepCache(step, donate=False), state, batch


def _conv_flops(cin, cout):
  """2 * B * H * W * Cin * Cout * kh * kw, less the taps that fall on the
  zero padding, which XLA does not count: a 3x3 kernel with padding 1 has
  3 * H - 2 taps in bounds along each axis, not 3 * H (84% at H = 8)."""
  return 2 * _B * (3 * _H - 2) ** 2 * cin * cout


def test_train_step_flops_include_the_convolutions():
  """The counted SGD step holds its convs' GEMMs: 2 (forward + weight
  gradient) for the first conv, whose input needs no gradient, 3 for the
  second; the rest (BN, ReLU, head, optimizer) is a few percent."""
  cache, state, batch = _conv_step_cache()
  cache.get(0, state, batch)
  counted = cache.costs((0, False))['flops']
  convs = 2 * _conv_flops(_CIN, _C) + 3 * _conv_flops(_C, _C)
  assert convs <= counted <= 1.15 * convs, (counted, convs)
  # (Without the padding correction: 2*B*H*W*Cin*Cout*9 per conv forward.)
  assert counted >= 0.85 * convs * (3 * _H) ** 2 / (3 * _H - 2) ** 2
  # Frozen first unit (k = 1): its conv runs forward only, and the second
  # conv, now the first SGD one, needs no input gradient.
  cache.get(1, state, batch, hebbian=False)
  frozen = cache.costs((1, False))['flops']
  convs = _conv_flops(_CIN, _C) + 2 * _conv_flops(_C, _C)
  assert convs <= frozen <= 1.15 * convs, (frozen, convs)


def test_step_flops_are_counted_on_the_cpu_lowering_without_a_compile(
    monkeypatch):
  """A step's FLOPs come from the step traced again and lowered for 'cpu'
  (the same path on every backend), and nothing is compiled for them."""
  cache, state, batch = _conv_step_cache()
  cache.get(0, state, batch)
  lowered_for = []
  original = jax.stages.Traced.lower

  def spy(self, *args, **kwargs):
    lowered_for.append(kwargs.get('lowering_platforms'))
    return original(self, *args, **kwargs)

  def no_compile(self, *args, **kwargs):
    raise AssertionError('compiled for a FLOP count')

  monkeypatch.setattr(flops, '_counts', {})
  monkeypatch.setattr(jax.stages.Traced, 'lower', spy)
  monkeypatch.setattr(jax.stages.Lowered, 'compile', no_compile)
  assert cache.costs((0, False))['flops'] > 0
  assert lowered_for == [('cpu',)]


def _depthwise_grad(channels, size):
  """The weight gradient of a 3x3 depthwise conv (MobileNetV2's), traced."""
  x = jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)
  w = jax.ShapeDtypeStruct((3, 3, 1, channels), jnp.float32)

  def conv(w, x):
    return jax.lax.conv_general_dilated(
        x, w, (1, 1), 'SAME', feature_group_count=channels,
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  return jax.jit(jax.grad(lambda w, x: jnp.sum(conv(w, x)))).trace(w, x)


def test_a_depthwise_weight_gradient_counts_its_own_arithmetic():
  """The count is the program as written: a depthwise conv's weight
  gradient costs 2 * H * W * C * 9 FLOPs (less the taps on the padding)
  for the conv and as much for its transpose, although XLA:CPU compiles it
  as a dense conv over all channel pairs (C times more), which the
  compiled program's own count reports."""
  c, h = 32, 16
  traced = _depthwise_grad(c, h)
  taps = 2 * (3 * h - 2) ** 2 * c  # 3x3, padding 1: 3H - 2 taps per axis
  assert taps <= flops.cpu_flops(traced) <= 2.2 * taps
  compiled = flops.cost_counts(traced.lower().compile())['flops']
  assert compiled > c / 2 * flops.cpu_flops(traced)


def _tanh_layer(rows):
  """A small program, traced: its shape decides which program it is."""
  x = jax.ShapeDtypeStruct((rows, 64), jnp.float32)
  w = jax.ShapeDtypeStruct((64, 32), jnp.float32)
  return jax.jit(lambda w, x: jnp.sum(jnp.tanh(x @ w))).trace(w, x)


def test_a_program_is_counted_once(monkeypatch):
  """The same program traced again (another run's step) is counted from
  memory; another program (other shapes) is counted anew."""
  monkeypatch.setattr(flops, '_counts', {})
  counted = []
  hlo_flops = flops.hlo_flops
  monkeypatch.setattr(flops, 'hlo_flops', lambda lowered: (
      counted.append(1), hlo_flops(lowered))[1])
  first = flops.cpu_flops(_tanh_layer(8))
  assert first >= 2 * 8 * 64 * 32
  assert flops.cpu_flops(_tanh_layer(8)) == first
  assert len(counted) == 1
  assert flops.cpu_flops(_tanh_layer(16)) == pytest.approx(2 * first,
                                                           rel=0.05)
  assert len(counted) == 2


def test_a_sharded_program_is_counted_per_device():
  """A program over 4 devices (the batch split, the weights replicated)
  counts a quarter of the same program on one device: model FLOPs per
  device."""
  mesh = Mesh(np.array(jax.devices('cpu')[:4]), ('data',))

  def traced(x_sharding, w_sharding):
    x = jax.ShapeDtypeStruct((8, 64), jnp.float32, sharding=x_sharding)
    w = jax.ShapeDtypeStruct((64, 32), jnp.float32, sharding=w_sharding)
    return jax.jit(lambda w, x: jax.grad(
        lambda w: jnp.sum(jnp.tanh(x @ w)))(w)).trace(w, x)

  one = jax.sharding.SingleDeviceSharding(jax.devices('cpu')[0])
  whole = flops.cpu_flops(traced(one, one))
  per_device = flops.cpu_flops(traced(NamedSharding(mesh, P('data')),
                                      NamedSharding(mesh, P())))
  assert whole >= 2 * 2 * 8 * 64 * 32  # forward + weight gradient
  assert per_device == pytest.approx(whole / 4)


@pytest.mark.parametrize('unit_flops,share,want', [
    ([1, 1, 1, 1, 1], 0.6, 3),     # exactly 3/5: included
    ([1, 1, 1, 1, 1], 0.59, 2),
    ([1, 1, 1, 1, 1], 0.1, 0),     # not even the first unit
    ([1, 1, 1, 1, 1], 0.99, 4),    # never the head
    ([8, 1, 1, 10], 0.5, 3),       # a heavy first unit
    ([1, 30, 1, 1, 1], 0.5, 1),    # stops at the first unit over the share
])
def test_k_for_flop_share(unit_flops, share, want):
  assert selection.k_for_flop_share(unit_flops, share) == want


@pytest.mark.parametrize('name,k_max', [('resnet18', 5), ('resnet20', 6)])
def test_cifar_config_picks_the_early_units_of_either_depth(name, k_max):
  """One share (0.6) gives the k_max chosen for each depth: ResNet-18's stem
  and stages 1-2, and the 6 of ResNet-20's 11 units measured earlier."""
  config = cifar10_resnet.get_config()
  config.model.name = name
  model = models.create_model(name, 10)
  selector = selection.Selector(config.selection, model.num_units,
                                config.num_epochs,
                                flops.unit_flops(model, (32, 32, 3)))
  assert selector.k_max == k_max
  assert 0.5 < selector.k_max_flops <= 0.6
  line = run_console.describe_selection(config, selector)
  assert f'k_max {k_max}: units 0..{k_max - 1} hold' in line
  assert 'k_max_flop_share 0.6' in line
  # A resumed run's line speaks of the epochs to come only: the ones done
  # may have had another schedule (resume_allow=selection.warmup_epochs).
  ks = [selector.transition(e) for e in range(config.num_epochs)]
  switch = ks.index(k_max)  # the first local epoch, from 0
  done = switch + 2
  line = run_console.describe_selection(config, selector, start_epoch=done)
  assert (f'static: epochs 1-{done} done; k={k_max} in epochs '
          f'{done + 1}-{config.num_epochs} (units') in line
  line = run_console.describe_selection(config, selector, start_epoch=2)
  assert (f'epochs 1-2 done; k=0 in epochs 3-{switch}, k={k_max} in epochs '
          f'{switch + 1}-{config.num_epochs}') in line


def test_k_max_and_flop_share_together_are_refused():
  config = cifar10_resnet.get_config()
  config.selection.k_max = 4
  with pytest.raises(UserError, match='k_max=4 and k_max_flop_share=0.6 '
                     'both set') as err:
    config_validation.validate_config(config)
  assert '\n' not in str(err.value)
  config.selection.k_max_flop_share = 0.0  # the fix the message names
  config_validation.validate_config(config)


def test_flop_share_out_of_range_is_refused():
  config = cifar10_resnet.get_config()
  config.selection.k_max_flop_share = 1.0
  with pytest.raises(UserError, match='k_max_flop_share'):
    config_validation.validate_config(config)


def test_a_run_uses_the_k_max_its_flop_share_gives(tmp_path, capsys):
  """The trainer counts the units' FLOPs on its data's images and schedules
  k up to that k_max (the tiny CNN on 16x16 grey digits: 2 of 4 units at
  share 0.6, where k_max=-1 would be 3)."""
  config = quickstart.get_config()
  config.data.image_size = 16
  config.num_epochs = 2
  config.log.progress = False
  config.update_from_flattened_dict({
      'selection.warmup_epochs': 1, 'selection.k_max': -1,
      'selection.k_max_flop_share': 0.6})
  train_lib.train_and_evaluate(config, str(tmp_path / 'run'))
  rows = metrics.read_rows(str(tmp_path / 'run' / 'metrics.jsonl'))
  share = flops.unit_flops(models.create_model('tiny', 10), (16, 16, 1))
  assert selection.k_for_flop_share(share, 0.6) == 2
  assert [r['transition'] for r in rows] == [0, 2]
  assert 'k_max 2: units 0..1 hold' in capsys.readouterr().out
