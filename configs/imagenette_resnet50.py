"""Imagenette at 128 px, ResNet-50 (ImageNet stem), LoCal+SGD.

The paper's ImageNet setting at small scale: ten ImageNet classes
(../shared/data/imagenette128: train/ 8,469, val/ 1,000, 128x128), the
ImageNet stem (7x7/2 conv + max-pool), so the early units run at 64x64 and
32x32 where skipping their backward pass saves the most memory.

Recipe, from public work: the ResNet-50 "bag of tricks" (He et al., 2019):
SGD with Nesterov momentum 0.9, peak learning rate 0.1 x batch / 256 after a
linear warm-up (2 of 40 epochs), cosine decay, label smoothing 0.1, no weight
decay on BatchNorm and biases; fast.ai's Imagenette baselines' augmentation:
random-resized crops of (0.35, 1) of the area at 128 px + flip, evaluated
on the whole image; weight decay 5e-4, as decoupled decay 1e-2 at learning
rate 3e-3 (fast.ai's) is per step about what 5e-4 at 0.1 is. Not yet checked
on a hold-out of our data: that is the first stage of benchmarks/frontier.py
(needs a GPU; --config.data.holdout_per_class, never val/). LoCal+SGD as in
configs/cifar10_resnet.py: plain SGD for the first 60% of the epochs, then
the units holding the first 60% of the forward FLOPs frozen.

  python train.py --config=configs/imagenette_resnet50.py --workdir=runs/in50 \
      --config.data.dir=../shared/data/imagenette128
  # on a GPU add --config.dtype=bfloat16; a CPU trains ResNet-50 at about
  # 20 images/s, so try --config.batch_size=32 --config.data.train_per_class=50
"""
from localsgd_jax.configs import default


def get_config():
  config = default.get_config()
  config.model.name = 'resnet50'
  config.model.cifar_stem = False
  config.data.name = 'image_folder'
  config.data.dir = ''            # e.g. ../shared/data/imagenette128
  config.data.augmentation = 'random_resized_crop'
  config.data.rrc_scale = (0.35, 1.0)
  config.data.train_size = 0      # the images' own 128 px
  config.data.image_size = 128    # what a streamed folder is cropped to
  config.num_epochs = 40
  config.batch_size = 256
  config.eval_batch_size = 500
  config.optim.learning_rate = default.per_batch_lr(config, 0.1, 256)
  config.optim.schedule = 'cosine'
  config.optim.warmup_epochs = 2
  config.optim.weight_decay = 5e-4
  config.optim.decay_norm_and_bias = False
  config.optim.label_smoothing = 0.1
  default.static_after_sgd(config)
  config.selection.k_max_flop_share = 0.6
  config.local.rule = 'frozen'
  config.checkpoint.every_epochs = 5
  config.log.check_finite_every = 20
  return config
