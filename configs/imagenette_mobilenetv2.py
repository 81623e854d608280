"""Imagenette at 128 px, MobileNetV2 (width 1.0, ImageNet stem), LoCal+SGD.

As configs/imagenette_resnet50.py (data, augmentation, schedule, selection),
with MobileNetV2's own regularization from its paper (Sandler et al., 2018):
weight decay 4e-5; the peak learning rate 0.1 x batch / 256 of the ResNet
recipe, since the paper's RMSProp rate does not carry over to SGD. Not yet
checked on a hold-out of our data (benchmarks/frontier.py, on a GPU).

  python train.py --config=configs/imagenette_mobilenetv2.py \
      --workdir=runs/inmb --config.data.dir=../shared/data/imagenette128
"""
from localsgd_jax.configs import imagenette_resnet50


def get_config():
  config = imagenette_resnet50.get_config()
  config.model.name = 'mobilenet_v2'
  config.optim.weight_decay = 4e-5
  return config
