"""k_max by FLOP share: per-unit XLA counts and the k they choose."""
import functools

import jax
import jax.numpy as jnp
import pytest

from localsgd_jax import flops
from localsgd_jax import metrics
from localsgd_jax import models
from localsgd_jax import run_console
from localsgd_jax import selection
from localsgd_jax import train_lib
from localsgd_jax.configs import cifar10_resnet
from localsgd_jax.configs import quickstart
from localsgd_jax.errors import UserError


@pytest.mark.parametrize('name', ['tiny', 'resnet20'])
def test_unit_flops_add_up_to_the_whole_forward_pass(name):
  model = models.create_model(name, 10)
  per_unit = flops.unit_flops(model, (32, 32, 3))
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(functools.partial(model.init, train=False),
                             jax.random.key(0), x)
  whole, _ = flops.lowered_flops(
      jax.jit(functools.partial(model.apply, train=False)).lower(variables, x))
  assert len(per_unit) == model.num_units
  assert min(per_unit) > 0
  assert sum(per_unit) == pytest.approx(whole, rel=1e-6)


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


def test_k_max_and_flop_share_together_are_refused():
  config = cifar10_resnet.get_config()
  config.selection.k_max = 4
  with pytest.raises(UserError, match='k_max=4 and k_max_flop_share=0.6 '
                     'both set') as err:
    train_lib.validate_config(config)
  assert '\n' not in str(err.value)
  config.selection.k_max_flop_share = 0.0  # the fix the message names
  train_lib.validate_config(config)


def test_flop_share_out_of_range_is_refused():
  config = cifar10_resnet.get_config()
  config.selection.k_max_flop_share = 1.0
  with pytest.raises(UserError, match='k_max_flop_share'):
    train_lib.validate_config(config)


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
