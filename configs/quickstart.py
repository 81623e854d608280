"""Offline quickstart: the tiny CNN on scikit-learn's digits, about a minute.

  python train.py                  # (this config is the default)
  python train.py --config=configs/quickstart.py --workdir=/tmp/quick

Expected: >= 95% test accuracy (see README for the measured figure and time).
"""
from configs import default


def get_config():
  config = default.get_config()
  config.model.name = 'tiny'
  config.data.name = 'digits'
  config.num_epochs = 10
  config.batch_size = 64
  config.optim.learning_rate = 0.05
  config.optim.warmup_epochs = 1
  # The static / dynamic schedule chosen in configs/cifar10_resnet.py, for
  # the 4-unit tiny CNN: SGD for 60% of the epochs, then its first two convs
  # learn locally. The mode stays sgd: pass --config.selection.mode=static
  # (or compare the modes with compare.py).
  config.selection.warmup_epochs = config.get_ref('num_epochs') * 3 // 5
  config.selection.ramp = 'step'
  config.selection.k_max = 2
  return config
