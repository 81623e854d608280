"""VGG-16 / VGG-19 with BatchNorm as sequences of units.

Every conv -> BN -> ReLU is one unit; a 2x2/2 max-pool belongs to the unit it
follows. Then:
  * cifar_stem=True: one head unit, global average pool + Dense(num_classes)
    (32x32 inputs reach 1x1 after the five pools).
  * cifar_stem=False (ImageNet): torchvision's classifier split into three
    units, so its two 4096-wide hidden layers (~120M of the ~138M params) can
    become local too: [adaptive avg pool 7x7 -> flatten -> Dense 4096 -> ReLU],
    [Dense 4096 -> ReLU], head [Dense num_classes].

Differences from torchvision's vgg16_bn / vgg19_bn, on purpose:
  * Convs have no bias: the BN right after cancels it. That is 4,224 (VGG-16)
    or 5,504 (VGG-19) parameters fewer than torchvision's 138,365,992 /
    143,678,248.
  * No dropout in the classifier: units are called as unit(x, train=train)
    without an RNG, and the local rule reads a layer's output, which dropout
    would make noisy. BN already regularizes.
"""
import functools
from typing import Any, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from localsgd_jax.models import base

# Channels of each 3x3 conv; 'M' is a 2x2/2 max-pool (torchvision cfgs D, E).
CFG_VGG16 = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M',
             512, 512, 512, 'M', 512, 512, 512, 'M')
CFG_VGG19 = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 256, 'M',
             512, 512, 512, 512, 'M', 512, 512, 512, 512, 'M')

# torchvision's Linear init for VGG: N(0, 0.01), zero bias.
_fc_init = nn.initializers.normal(0.01)


def _adaptive_pool_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) averaging weights of PyTorch's AdaptiveAvgPool along 1 axis.

  Output i averages inputs [floor(i * n_in / n_out), ceil((i + 1) * n_in /
  n_out)), which also repeats inputs when n_in < n_out, as PyTorch does.
  """
  w = np.zeros((n_out, n_in), np.float32)
  for i in range(n_out):
    start = (i * n_in) // n_out
    end = -(-((i + 1) * n_in) // n_out)
    w[i, start:end] = 1.0 / (end - start)
  return w


def adaptive_avg_pool(x: jax.Array, size: int) -> jax.Array:
  """PyTorch's AdaptiveAvgPool2d((size, size)) on (B, H, W, C) input."""
  wh = _adaptive_pool_matrix(x.shape[1], size)
  ww = _adaptive_pool_matrix(x.shape[2], size)
  # Windows are rectangles, so the pool separates into two small contractions.
  return jnp.einsum('bhwc,ph,qw->bpqc', x.astype(jnp.float32), wh, ww)


class FCUnit(nn.Module):
  """[Adaptive avg pool 7x7 -> flatten ->] Dense -> ReLU (VGG classifier)."""
  features: int
  pool_flatten: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    del train  # Dropout is left out (see the module docstring).
    if self.pool_flatten:
      x = adaptive_avg_pool(x, 7)  # (B, 7, 7, C)
      x = x.reshape(x.shape[0], -1)  # (B, 49 * C)
    x = nn.Dense(self.features, dtype=self.dtype, param_dtype=jnp.float32,
                 kernel_init=_fc_init, name='fc')(x)
    return nn.relu(x)


def vgg(num_classes: int, *, cfg: Sequence[Union[int, str]],
        cifar_stem: bool = True, dtype: Any = jnp.float32) -> base.Network:
  """Builds a VGG with BatchNorm as units [conv, ..., conv, (fc, fc,) head].

  Args:
    num_classes: number of logits.
    cfg: conv channels in order, 'M' for a max-pool after the previous conv.
    cifar_stem: head = global average pool + Dense; False gives the
      torchvision ImageNet classifier (three units).
    dtype: compute dtype; parameters stay float32.

  Returns:
    A Network: one unit per conv, then the classifier units.
  """
  units = []
  for i, c in enumerate(cfg):
    if c == 'M':
      continue
    pool = 2 if i + 1 < len(cfg) and cfg[i + 1] == 'M' else 0
    units.append(base.ConvBNAct(c, 3, 1, pool=pool, dtype=dtype))
  if cifar_stem:
    units.append(base.ClassifierHead(num_classes, dtype=dtype))
  else:
    units += [FCUnit(4096, pool_flatten=True, dtype=dtype),
              FCUnit(4096, dtype=dtype),
              base.ClassifierHead(num_classes, global_pool=False, dtype=dtype)]
  return base.Network(units=units)


vgg16 = functools.partial(vgg, cfg=CFG_VGG16)
vgg19 = functools.partial(vgg, cfg=CFG_VGG19)
