"""Every shipped config loads, validates and names real models and datasets."""
import glob
import importlib
import json
import os
import warnings

import pytest

from localsgd_jax import config_fields
from localsgd_jax import config_validation
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
  config = importlib.import_module(f'localsgd_jax.configs.{name}').get_config()
  config_validation.validate_config(config)
  assert config.model.name in models.MODELS
  assert config.data.name in data.VALID_NAMES
  assert (importlib.import_module(f'localsgd_jax.configs.{name}').__doc__ or '').strip()


@pytest.mark.parametrize('name', ['quickstart', 'cifar10_resnet'])
def test_static_configs_start_with_an_sgd_epoch(name):
  """60% of the epochs by SGD, and at least one: a 1-epoch run stays SGD."""
  config = importlib.import_module(f'localsgd_jax.configs.{name}').get_config()
  assert config.selection.mode == 'static'
  for num_epochs, warmup in ((1, 1), (2, 1), (10, 6), (30, 18), (200, 120)):
    config.num_epochs = num_epochs
    assert config.selection.warmup_epochs == warmup


def test_configs_ship_inside_the_package():
  """localsgd_jax.configs is configs/: installed by a package-dir mapping in
  pyproject.toml (so a checkout without symlinks installs the same), and
  through the symlink in a checkout used without installing; the one way
  to import a config (tests and configs alike)."""
  from localsgd_jax.configs import quickstart  # pylint: disable=g-import-not-at-top
  assert os.path.samefile(os.path.dirname(quickstart.__file__),
                          os.path.join(ROOT, 'configs'))
  link = os.path.join(ROOT, 'localsgd_jax', 'configs')
  assert os.path.samefile(link, os.path.join(ROOT, 'configs'))
  with open(os.path.join(ROOT, 'pyproject.toml')) as f:
    assert '"localsgd_jax.configs" = "configs"' in f.read()


def _from_command_line(name, *overrides):
  """The config as train.py gets it: config_flags, locked, overridden."""
  warnings.filterwarnings('ignore', 'the load_module', DeprecationWarning)
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  argv = ['train.py', f'--config={os.path.join(ROOT, "configs", name)}.py',
          *overrides]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', flag_values=flag_values,
                                  lock_config=True, sys_argv=argv)
  flag_values(argv)
  return flag_values.config


@pytest.mark.parametrize('name', CONFIGS)
def test_learning_rate_follows_the_batch_size(name):
  """--config.batch_size scales the resolved learning rate linearly; an
  explicit --config.optim.learning_rate wins, in either order."""
  base = importlib.import_module(f'localsgd_jax.configs.{name}').get_config()
  lr, batch = base.optim.learning_rate, base.batch_size
  half = _from_command_line(name, f'--config.batch_size={batch // 2}')
  assert half.optim.learning_rate == pytest.approx(lr / 2, rel=1e-12)
  assert json.loads(half.to_json_best_effort())['optim'][
      'learning_rate'] == pytest.approx(lr / 2, rel=1e-12)
  double = _from_command_line(name, f'--config.batch_size={batch * 2}')
  assert double.optim.learning_rate == pytest.approx(2 * lr, rel=1e-12)
  for order in ((f'--config.batch_size={batch // 2}',
                 '--config.optim.learning_rate=0.3'),
                ('--config.optim.learning_rate=0.3',
                 f'--config.batch_size={batch // 2}')):
    config = _from_command_line(name, *order)
    assert config.optim.learning_rate == 0.3
    assert config.batch_size == batch // 2
  # Overrides in code (tests, notebooks) behave the same.
  base.update_from_flattened_dict({'batch_size': batch * 4})
  assert base.optim.learning_rate == pytest.approx(4 * lr, rel=1e-12)
  base.update_from_flattened_dict({'optim.learning_rate': 0.01,
                                   'batch_size': 3})
  assert base.optim.learning_rate == 0.01


def test_shipped_learning_rates_are_unchanged_at_their_batch_size():
  """Bit for bit the constants they were: runs resume across the change."""
  want = {'default': 0.1, 'quickstart': 0.05, 'cifar10_resnet': 0.2,
          'cifar100_resnet': 0.2, 'imagenet_resnet50': 0.1 * 1024 / 256,
          'imagenet_mobilenetv2': 0.05 * 1024 / 256}
  for name, lr in want.items():
    config = importlib.import_module(f'localsgd_jax.configs.{name}').get_config()
    assert config.optim.learning_rate == lr, name


def test_resume_check_compares_resolved_learning_rates():
  from localsgd_jax import resume_check  # pylint: disable=g-import-not-at-top
  saved = config_fields.as_dict(
      importlib.import_module('localsgd_jax.configs.cifar10_resnet').get_config())
  new = _from_command_line('cifar10_resnet', '--config.batch_size=512')
  changes = {c.field: (c.old, c.new) for c in
             resume_check.config_changes(saved, config_fields.as_dict(new))}
  assert changes == {'batch_size': (500, 512),
                     'optim.learning_rate': (0.2, 0.2048)}
  # eval_tta changes no training: resumable without resume_allow.
  tta = _from_command_line('cifar10_resnet', '--config.eval_tta=flip')
  assert not resume_check.config_changes(saved, config_fields.as_dict(tta))


def test_eval_tta_is_validated_and_refused_without_flips(tmp_path):
  from localsgd_jax.errors import UserError  # pylint: disable=g-import-not-at-top
  config = importlib.import_module('localsgd_jax.configs.quickstart').get_config()
  config.eval_tta = 'mirror'
  with pytest.raises(UserError, match='config.eval_tta=.mirror.'):
    config_validation.validate_config(config)
  config.eval_tta = 'flip'  # digits: trained without flips
  with pytest.raises(UserError, match='eval_tta=none') as e:
    train_lib.train_and_evaluate(config, str(tmp_path / 'run'))
  assert '\n' not in str(e.value)
  assert not os.path.exists(tmp_path / 'run')  # refused before the workdir
