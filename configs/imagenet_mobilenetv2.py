"""ImageNet (ILSVRC-2012), MobileNetV2 (width 1.0), LoCal+SGD.

The usual recipe: SGD with momentum 0.9, weight decay 4e-5, peak learning
rate 0.05 x batch / 256 with warm-up and cosine decay, 150 epochs, label
smoothing 0.1.

  python train.py --config=configs/imagenet_mobilenetv2.py --workdir=runs/mb \
      --config.data.dir=/path/to/imagenet/manual_dir

Not run on this project's CPU-only machines (needs GPUs; see README).
"""
from localsgd_jax.configs import default
from localsgd_jax.configs import imagenet_resnet50


def get_config():
  config = imagenet_resnet50.get_config()
  config.model.name = 'mobilenet_v2'
  config.num_epochs = 150
  config.optim.learning_rate = default.per_batch_lr(config, 0.05, 256)
  config.optim.weight_decay = 4e-5
  config.selection.warmup_epochs = 15
  config.selection.ramp_epochs = 75
  return config
