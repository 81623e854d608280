"""Every shipped config loads, validates and names real models and datasets."""
import glob
import importlib
import os

import pytest

from localsgd_jax import data
from localsgd_jax import models
from localsgd_jax import train_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.basename(p)[:-3] for p in
                 glob.glob(os.path.join(ROOT, 'configs', '*.py'))
                 if not p.endswith('__init__.py'))


def test_expected_configs_exist():
  for name in ('default', 'quickstart', 'cifar10_resnet', 'cifar100_resnet',
               'imagenet_resnet50', 'imagenet_mobilenetv2'):
    assert name in CONFIGS


@pytest.mark.parametrize('name', CONFIGS)
def test_config_is_valid(name):
  config = importlib.import_module(f'configs.{name}').get_config()
  train_lib.validate_config(config)
  assert config.model.name in models.MODELS
  assert config.data.name in data.VALID_NAMES
  assert (importlib.import_module(f'configs.{name}').__doc__ or '').strip()


@pytest.mark.parametrize('name', ['quickstart', 'cifar10_resnet'])
def test_static_configs_start_with_an_sgd_epoch(name):
  """60% of the epochs by SGD, and at least one: a 1-epoch run stays SGD."""
  config = importlib.import_module(f'configs.{name}').get_config()
  assert config.selection.mode == 'static'
  for num_epochs, warmup in ((1, 1), (2, 1), (10, 6), (30, 18), (200, 120)):
    config.num_epochs = num_epochs
    assert config.selection.warmup_epochs == warmup


def test_configs_ship_inside_the_package():
  """localsgd_jax.configs is configs/: installed with the package, no
  top-level `configs` package in site-packages (pyproject.toml)."""
  from localsgd_jax.configs import quickstart  # pylint: disable=g-import-not-at-top
  assert os.path.samefile(os.path.dirname(quickstart.__file__),
                          os.path.join(ROOT, 'configs'))
  with open(os.path.join(ROOT, 'pyproject.toml')) as f:
    assert 'include = ["localsgd_jax*"]' in f.read()
