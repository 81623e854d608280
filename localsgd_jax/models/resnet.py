"""ResNets as sequences of units: stem, one unit per residual block, head.

ImageNet ResNet-18/34/50/101 follow torchvision (ResNet v1.5: a bottleneck's
stride sits on its 3x3 conv), so parameter counts match torchvision exactly.
CIFAR ResNet-20/56 follow He et al. 2016, Sec. 4.2 (3 stages of 16/32/64
channels, 3x3 stem of 16), except that where the shape changes the shortcut
is a 1x1 conv + BN projection (the paper's option B) instead of the zero-padding
option A: 272,474 / 855,770 params with 10 classes instead of 269,722 /
853,018. Projections keep every weight in a plain Conv that the local rule can
update, and avoid a parameter-free strided-slice-and-pad branch.

The layers shared by the whole zoo (`conv`, `ConvBNAct`, `ClassifierHead`)
live in base.py.
"""
import functools
from typing import Any, ClassVar, Sequence, Type

import flax.linen as nn
import jax
import jax.numpy as jnp

from localsgd_jax.models import base

# torchvision's kaiming_normal_(mode='fan_out', nonlinearity='relu'); for a
# depthwise kernel (kh, kw, 1, C) fan_out is kh * kw * C, as in PyTorch.


def _shortcut(x: jax.Array, features: int, strides: int, train: bool,
              dtype: Any) -> jax.Array:
  """Identity, or a 1x1 conv + BN projection where the shape changes.

  Called from a block's compact __call__, so its modules belong to the block.
  """
  if x.shape[-1] == features and strides == 1:
    return x
  x = base.conv(features, 1, strides, dtype, name='proj_conv')(x)
  return base.batch_norm(train, dtype, name='proj_bn')(x)


def _conv_bn(x: jax.Array, features: int, kernel: int, strides: int,
             train: bool, dtype: Any, index: int) -> jax.Array:
  """conv{index} -> bn{index} of the calling block (its modules, by name)."""
  x = base.conv(features, kernel, strides, dtype, name=f'conv{index}')(x)
  return base.batch_norm(train, dtype, name=f'bn{index}')(x)


class _Block(nn.Module):
  """A residual block: one unit, with its shortcut; `features` is its base
  width, `expansion` x features its output's."""
  features: int
  strides: int = 1
  dtype: Any = jnp.float32
  expansion: ClassVar[int] = 1


class BasicBlock(_Block):
  """Two 3x3 convs (ResNet-18/34, CIFAR ResNets)."""

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    y = nn.relu(_conv_bn(x, self.features, 3, self.strides, train,
                         self.dtype, 1))
    y = _conv_bn(y, self.features, 3, 1, train, self.dtype, 2)
    return nn.relu(y + _shortcut(x, self.features, self.strides, train,
                                 self.dtype))


class BottleneckBlock(_Block):
  """1x1 -> 3x3 (strided) -> 1x1 x4 (ResNet-50/101)."""
  expansion: ClassVar[int] = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    out = self.features * self.expansion
    y = nn.relu(_conv_bn(x, self.features, 1, 1, train, self.dtype, 1))
    y = nn.relu(_conv_bn(y, self.features, 3, self.strides, train,
                         self.dtype, 2))
    y = _conv_bn(y, out, 1, 1, train, self.dtype, 3)
    return nn.relu(y + _shortcut(x, out, self.strides, train, self.dtype))


def resnet(num_classes: int, *, stage_sizes: Sequence[int],
           block_cls: Type[nn.Module],
           widths: Sequence[int] = (64, 128, 256, 512),
           cifar_stem: bool = True, dtype: Any = jnp.float32) -> base.Network:
  """Builds a ResNet as units [stem, block, ..., block, head].

  Args:
    num_classes: number of logits.
    stage_sizes: number of blocks in each stage.
    block_cls: BasicBlock or BottleneckBlock.
    widths: base channels of each stage; the stem has widths[0] channels.
    cifar_stem: a 3x3 stride-1 conv stem without max-pool (32x32 inputs);
      False gives the ImageNet stem, 7x7/2 conv + 3x3/2 max-pool.
    dtype: compute dtype; parameters stay float32.

  Returns:
    A Network of 1 + sum(stage_sizes) + 1 units.
  """
  if cifar_stem:
    stem = base.ConvBNAct(widths[0], 3, 1, dtype=dtype)
  else:
    stem = base.ConvBNAct(widths[0], 7, 2, pool=3, dtype=dtype)
  units = [stem]
  for stage, (num_blocks, width) in enumerate(zip(stage_sizes, widths)):
    for i in range(num_blocks):
      # Every stage but the first halves the resolution in its first block.
      strides = 2 if stage > 0 and i == 0 else 1
      units.append(block_cls(width, strides, dtype))
  units.append(base.ClassifierHead(num_classes, dtype=dtype))
  return base.Network(units=units)


resnet18 = functools.partial(resnet, stage_sizes=(2, 2, 2, 2),
                             block_cls=BasicBlock)
resnet34 = functools.partial(resnet, stage_sizes=(3, 4, 6, 3),
                             block_cls=BasicBlock)
resnet50 = functools.partial(resnet, stage_sizes=(3, 4, 6, 3),
                             block_cls=BottleneckBlock)
resnet101 = functools.partial(resnet, stage_sizes=(3, 4, 23, 3),
                              block_cls=BottleneckBlock)
# He et al. 2016 CIFAR ResNets: depth 6n + 2.
resnet20 = functools.partial(resnet, stage_sizes=(3, 3, 3),
                             block_cls=BasicBlock, widths=(16, 32, 64))
resnet56 = functools.partial(resnet, stage_sizes=(9, 9, 9),
                             block_cls=BasicBlock, widths=(16, 32, 64))
