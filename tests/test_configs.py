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
