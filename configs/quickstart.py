"""Offline quickstart: LoCal+SGD, the tiny CNN on scikit-learn's digits.

  python train.py                  # (this config is the default)
  python train.py --config=configs/quickstart.py --workdir=/tmp/quick
  python train.py --config.selection.mode=sgd   # plain SGD, to compare

The project's default schedule, as in configs/cifar10_resnet.py: plain SGD
(k = 0) for the first 60% of the epochs, then k = 2: the first two of the
tiny CNN's 4 units learn with the local Hebbian rule (oja), which shows the
rule at work; the CIFAR config freezes those units instead, as measured on
CIFAR-10 (benchmarks/RESULTS.md). Expected: >= 95% test accuracy in well
under a minute on a 2-core CPU (README has the measured figures).
"""
from localsgd_jax.configs import default


def get_config():
  config = default.get_config()
  config.model.name = 'tiny'
  config.data.name = 'digits'
  config.num_epochs = 10
  config.batch_size = 64
  config.optim.learning_rate = default.per_batch_lr(config, 0.05, 64)
  config.optim.warmup_epochs = 1
  # The static schedule chosen in configs/cifar10_resnet.py, for the 4-unit
  # tiny CNN: SGD for 60% of the epochs (at least one: a 1-epoch smoke run
  # stays SGD rather than going local from random weights), then its first
  # two convs learn locally. compare.py compares it with SGD.
  default.static_after_sgd(config)
  config.selection.k_max = 2
  return config
