"""ImageNet (ILSVRC-2012), ResNet-50, LoCal+SGD.

Goyal et al.'s recipe: SGD with Nesterov momentum 0.9, weight decay 1e-4,
peak learning rate 0.1 x batch / 256 after 5 warm-up epochs, cosine decay,
90 epochs, label smoothing 0.1, 224x224 random-resized crops + flip.
tfds needs the ImageNet archives in its manual directory:

  python train.py --config=configs/imagenet_resnet50.py --workdir=runs/in \
      --config.data.dir=/path/to/imagenet/manual_dir

Not run on this project's CPU-only machines (needs GPUs; see README).
"""
from localsgd_jax.configs import default


def get_config():
  config = default.get_config()
  config.model.name = 'resnet50'
  config.model.cifar_stem = False
  config.data.name = 'imagenet2012'
  config.data.image_size = 224
  config.data.rrc_scale = (0.08, 1.0)  # Inception's crops, not Imagenette's.
  config.num_epochs = 90
  config.batch_size = 1024
  config.eval_batch_size = 1000
  config.optim.learning_rate = default.per_batch_lr(config, 0.1, 256)
  config.optim.warmup_epochs = 5
  config.optim.weight_decay = 1e-4
  config.optim.label_smoothing = 0.1
  config.selection.mode = 'static'
  config.selection.warmup_epochs = 10
  config.selection.ramp_epochs = 45
  config.checkpoint.every_epochs = 1
  config.log.check_finite_every = 200
  return config
