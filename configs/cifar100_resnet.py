"""CIFAR-100, ResNet-18 (CIFAR stem), LoCal+SGD: as cifar10_resnet.py.

  python train.py --config=configs/cifar100_resnet.py --workdir=runs/c100
  # or a local copy: --config.data.dir=/path/containing/cifar-100-python

Not yet run to completion on this project's CPU-only machines.
"""
from localsgd_jax.configs import cifar10_resnet


def get_config():
  config = cifar10_resnet.get_config()
  config.data.name = 'cifar100'
  return config
