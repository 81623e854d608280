"""MobileNetV2 (Sandler et al. 2018, width 1.0) as a sequence of units.

Units: stem (3x3/2 conv, 32 channels, BN, ReLU6), one unit per inverted
residual block (17), the 1x1 conv to 1280 + BN + ReLU6, and the head (global
average pool + Dense). Matches torchvision's mobilenet_v2 (3,504,872 params
with 1000 classes) except that the classifier's Dropout(0.2) is left out:
units take no RNG, and the local rule reads layer outputs, which dropout would
make noisy.

cifar_stem=True (32x32 inputs) sets the stem stride and the stride of the
24-channel stage to 1, as is common for CIFAR (e.g. kuangliu/pytorch-cifar):
the last feature map is then 4x4 instead of 1x1.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from localsgd_jax.models import base

# (expansion t, output channels c, blocks n, first-block stride s): Table 2.
BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
          (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class InvertedResidual(nn.Module):
  """1x1 expand -> 3x3 depthwise -> 1x1 linear projection, + identity.

  The identity is added only where stride is 1 and channels are unchanged
  (no projection shortcuts, as in the paper).
  """
  features: int
  strides: int = 1
  expand_ratio: int = 6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    in_features = x.shape[-1]
    hidden = in_features * self.expand_ratio
    y = x
    if self.expand_ratio != 1:
      y = base.conv(hidden, 1, 1, self.dtype, name='expand_conv')(y)
      y = nn.relu6(base.batch_norm(train, self.dtype, name='expand_bn')(y))
    y = base.conv(hidden, 3, self.strides, self.dtype, groups=hidden,
             name='dw_conv')(y)
    y = nn.relu6(base.batch_norm(train, self.dtype, name='dw_bn')(y))
    y = base.conv(self.features, 1, 1, self.dtype, name='project_conv')(y)
    y = base.batch_norm(train, self.dtype, name='project_bn')(y)
    if self.strides == 1 and in_features == self.features:
      y = x + y
    return y


def mobilenet_v2(num_classes: int, *, cifar_stem: bool = True,
                 dtype: Any = jnp.float32) -> base.Network:
  """Builds MobileNetV2 (width 1.0) as 20 units.

  Args:
    num_classes: number of logits.
    cifar_stem: stride 1 in the stem and in the 24-channel stage (32x32
      inputs); False keeps the ImageNet strides.
    dtype: compute dtype; parameters stay float32.

  Returns:
    A Network [stem, 17 inverted residual blocks, 1x1 conv to 1280, head].
  """
  units = [base.ConvBNAct(32, 3, 1 if cifar_stem else 2, act=nn.relu6,
                     dtype=dtype)]
  for t, c, n, s in BLOCKS:
    if cifar_stem and c == 24:
      s = 1
    for i in range(n):
      units.append(InvertedResidual(c, s if i == 0 else 1, t, dtype))
  units.append(base.ConvBNAct(1280, 1, 1, act=nn.relu6, dtype=dtype))
  units.append(base.ClassifierHead(num_classes, dtype=dtype))
  return base.Network(units=units)
