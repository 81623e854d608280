"""A network is an ordered sequence of units: stem, blocks, head.

The transition index k splits a network into units [0, k) (trained by the local
rule) and [k, L) (trained by SGD). A unit is never split: a residual or
inverted-residual block is one unit, and the head is always the last unit.
"""
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax


def unit_name(i: int) -> str:
  """The key of unit i in the params / batch_stats dicts (Linen's list naming)."""
  return f'units_{i}'


class Network(nn.Module):
  """Runs units [start, stop) of a sequence of units.

  Every unit is a Linen module called as `unit(x, train=train)`.
  """
  units: Sequence[nn.Module]

  def __call__(self, x: jax.Array, train: bool = True, start: int = 0,
               stop: Optional[int] = None) -> jax.Array:
    for unit in self.units[start:stop]:
      x = unit(x, train=train)
    return x

  @property
  def num_units(self) -> int:
    return len(self.units)


def batch_norm(train: bool, dtype: Any, name: Optional[str] = None,
               scale_init=nn.initializers.ones) -> nn.BatchNorm:
  """BatchNorm as used across the zoo: statistics and params kept in float32."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9,
                      epsilon=1e-5, dtype=dtype, param_dtype=jax.numpy.float32,
                      scale_init=scale_init, name=name)
