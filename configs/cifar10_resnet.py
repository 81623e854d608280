"""CIFAR-10, ResNet-18 (CIFAR stem): the paper's CIFAR-10 setting with LoCal+SGD.

SGD with Nesterov momentum 0.9, weight decay 5e-4, batch 128, peak learning
rate 0.1 on a cosine schedule with one warm-up epoch, pad-crop + flip.

  # full CIFAR-10 through tfds (downloads once):
  python train.py --config=configs/cifar10_resnet.py --workdir=runs/c10
  # a local copy in the original python format:
  python train.py --config=configs/cifar10_resnet.py --workdir=runs/c10 \
      --config.data.dir=/path/containing/cifar-10-batches-py

Measured figures (command, accuracy, time, hardware) are in
benchmarks/RESULTS.md; this config has not been run to completion on full
CIFAR-10 on this project's CPU-only machines.
"""
from configs import default


def get_config():
  config = default.get_config()
  config.model.name = 'resnet18'
  config.model.cifar_stem = True
  config.data.name = 'cifar10'
  config.num_epochs = 200
  config.batch_size = 128
  config.optim.learning_rate = 0.1
  config.optim.warmup_epochs = 1
  config.optim.weight_decay = 5e-4
  config.selection.mode = 'static'
  config.selection.warmup_epochs = 20   # SGD first: early layers settle.
  config.selection.ramp = 'linear'
  config.selection.ramp_epochs = 100
  config.checkpoint.every_epochs = 5
  return config
