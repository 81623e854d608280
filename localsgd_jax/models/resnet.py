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
live here too; the other families import them.
"""
import functools
from typing import Any, Callable, ClassVar, Optional, Sequence, Type

import flax.linen as nn
import jax
import jax.numpy as jnp

from localsgd_jax.models import base

# torchvision's kaiming_normal_(mode='fan_out', nonlinearity='relu'); for a
# depthwise kernel (kh, kw, 1, C) fan_out is kh * kw * C, as in PyTorch.
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def conv(features: int, kernel_size: int, strides: int = 1,
         dtype: Any = jnp.float32, groups: int = 1,
         name: Optional[str] = None) -> nn.Conv:
  """A bias-free square conv (a BN always follows) with PyTorch's padding.

  Explicit padding of kernel_size // 2 on every side, not 'SAME': with stride 2
  'SAME' pads (0, 1) on even inputs, PyTorch pads (1, 1).
  """
  pad = kernel_size // 2
  return nn.Conv(features, (kernel_size, kernel_size),
                 strides=(strides, strides), padding=((pad, pad), (pad, pad)),
                 feature_group_count=groups, use_bias=False, dtype=dtype,
                 param_dtype=jnp.float32, kernel_init=conv_init, name=name)


class ConvBNAct(nn.Module):
  """conv -> BN -> activation [-> max-pool]: stems, VGG layers, tiny layers.

  Attributes:
    features: output channels.
    kernel_size: square conv kernel size.
    strides: conv stride.
    act: activation after BN.
    pool: 0 for no pooling, else a max-pool with this window, stride 2 and
      PyTorch's padding (pool - 1) // 2: pool=2 is VGG's 2x2/2, pool=3 the
      ResNet stem's 3x3/2 with padding 1.
    dtype: compute dtype.
  """
  features: int
  kernel_size: int = 3
  strides: int = 1
  act: Callable[[jax.Array], jax.Array] = nn.relu
  pool: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    x = conv(self.features, self.kernel_size, self.strides, self.dtype,
             name='conv')(x)
    x = self.act(base.batch_norm(train, self.dtype, name='bn')(x))
    if self.pool:
      pad = (self.pool - 1) // 2
      x = nn.max_pool(x, (self.pool, self.pool), strides=(2, 2),
                      padding=((pad, pad), (pad, pad)))
    return x


class ClassifierHead(nn.Module):
  """[Global average pool ->] Dense(num_classes): the last unit of every model.

  Logits are returned in float32 whatever the compute dtype, so the softmax
  cross-entropy stays stable under bfloat16.

  Attributes:
    num_classes: number of logits.
    global_pool: average over H, W first (input (B, H, W, C)); False for an
      input that is already (B, D).
    dtype: compute dtype of the Dense.
  """
  num_classes: int
  global_pool: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    del train  # No BN or dropout in the head.
    if self.global_pool:
      x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))  # (B, C)
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                 name='fc')(x)
    return x.astype(jnp.float32)  # (B, num_classes)


def _shortcut(x: jax.Array, features: int, strides: int, train: bool,
              dtype: Any) -> jax.Array:
  """Identity, or a 1x1 conv + BN projection where the shape changes.

  Called from a block's compact __call__, so its modules belong to the block.
  """
  if x.shape[-1] == features and strides == 1:
    return x
  x = conv(features, 1, strides, dtype, name='proj_conv')(x)
  return base.batch_norm(train, dtype, name='proj_bn')(x)


class BasicBlock(nn.Module):
  """Two 3x3 convs (ResNet-18/34, CIFAR ResNets); one unit with its shortcut."""
  features: int
  strides: int = 1
  dtype: Any = jnp.float32
  expansion: ClassVar[int] = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    y = conv(self.features, 3, self.strides, self.dtype, name='conv1')(x)
    y = nn.relu(base.batch_norm(train, self.dtype, name='bn1')(y))
    y = conv(self.features, 3, 1, self.dtype, name='conv2')(y)
    y = base.batch_norm(train, self.dtype, name='bn2')(y)
    return nn.relu(y + _shortcut(x, self.features, self.strides, train,
                                 self.dtype))


class BottleneckBlock(nn.Module):
  """1x1 -> 3x3 (strided) -> 1x1 x4 (ResNet-50/101); one unit with shortcut."""
  features: int
  strides: int = 1
  dtype: Any = jnp.float32
  expansion: ClassVar[int] = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    out = self.features * self.expansion
    y = conv(self.features, 1, 1, self.dtype, name='conv1')(x)
    y = nn.relu(base.batch_norm(train, self.dtype, name='bn1')(y))
    y = conv(self.features, 3, self.strides, self.dtype, name='conv2')(y)
    y = nn.relu(base.batch_norm(train, self.dtype, name='bn2')(y))
    y = conv(out, 1, 1, self.dtype, name='conv3')(y)
    y = base.batch_norm(train, self.dtype, name='bn3')(y)
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
    stem = ConvBNAct(widths[0], 3, 1, dtype=dtype)
  else:
    stem = ConvBNAct(widths[0], 7, 2, pool=3, dtype=dtype)
  units = [stem]
  for stage, (num_blocks, width) in enumerate(zip(stage_sizes, widths)):
    for i in range(num_blocks):
      # Every stage but the first halves the resolution in its first block.
      strides = 2 if stage > 0 and i == 0 else 1
      units.append(block_cls(width, strides, dtype))
  units.append(ClassifierHead(num_classes, dtype=dtype))
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
