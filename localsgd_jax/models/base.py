"""A network is an ordered sequence of units: stem, blocks, head.

The transition index k splits a network into units [0, k) (trained by the local
rule) and [k, L) (trained by SGD). A unit is never split: a residual or
inverted-residual block is one unit, and the head is always the last unit.
"""
import math
from typing import Any, Callable, Optional, Sequence

from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp


def unit_name(i: int) -> str:
  """The key of unit i in the params / batch_stats dicts (Linen's list naming)."""
  return f'units_{i}'


def unit_index(name: str) -> int:
  """Inverse of `unit_name`."""
  prefix = unit_name(0)[:-1]
  if not name.startswith(prefix):
    raise ValueError(f'{name!r} is not a unit key (expected {prefix}<i>)')
  return int(name[len(prefix):])


class Network(nn.Module):
  """Runs units [start, stop) of a sequence of units.

  Every unit is a Linen module called as `unit(x, train=train)`.
  `num_units` and `unit_names` are the one way to count and name them.
  """
  units: Sequence[nn.Module]

  def __call__(self, x: jax.Array, train: bool = True, start: int = 0,
               stop: Optional[int] = None) -> jax.Array:
    for unit in self.units[start:stop]:
      x = unit(x, train=train)
    return x

  @property
  def num_units(self) -> int:
    """Number of units L; transition indices run over 0..L."""
    return len(self.units)

  @property
  def unit_names(self) -> list:
    """The units' keys in params / batch_stats, in order."""
    return [unit_name(i) for i in range(self.num_units)]


def batch_norm(train: bool, dtype: Any, name: Optional[str] = None,
               scale_init=nn.initializers.ones) -> nn.BatchNorm:
  """BatchNorm as used across the zoo: statistics and params kept in float32."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9,
                      epsilon=1e-5, dtype=dtype, param_dtype=jax.numpy.float32,
                      scale_init=scale_init, name=name)


# He initialisation for convs (fan_out, as torchvision's ResNets).
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')

# config.model.init, how the conv and dense layers start:
#   he_fan_out     the modules' own initialisers, torchvision's: He normal
#                  (fan_out) convs, LeCun normal head with zero bias;
#   torch_default  PyTorch's layer defaults (nn.Conv2d and nn.Linear:
#                  kaiming_uniform(a=sqrt(5)) kernels and uniform biases,
#                  both U(-1/sqrt(fan_in), 1/sqrt(fan_in))), which networks
#                  written as plain torch modules train from, e.g. the public
#                  CIFAR-10 ResNet-18 recipe. Its same-width 3x3 conv kernels
#                  start 6x smaller in squared norm (fan_out / (6 fan_in)).
INITS = ('he_fan_out', 'torch_default')


def torch_default_init(params: Any, rng: jax.Array) -> Any:
  """`params` with every layer that has a 'kernel' (convs, dense) drawn anew
  as PyTorch's defaults: kernel and bias U(-b, b), b = 1 / sqrt(fan_in),
  fan_in = the kernel's size over its last (output) axis (kh * kw * in /
  groups for a conv, in for a dense). Other leaves (BatchNorm) are kept."""
  flat = traverse_util.flatten_dict(params)
  layers = sorted({path[:-1] for path in flat if path[-1] == 'kernel'})
  for layer, key in zip(layers, jax.random.split(rng, len(layers))):
    kernel = flat[layer + ('kernel',)]
    bound = 1.0 / math.sqrt(math.prod(kernel.shape[:-1]))
    for name, k in zip(('kernel', 'bias'), jax.random.split(key)):
      if layer + (name,) in flat:
        leaf = flat[layer + (name,)]
        flat[layer + (name,)] = jax.random.uniform(
            k, leaf.shape, leaf.dtype, -bound, bound)
  return traverse_util.unflatten_dict(flat)


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
    x = self.act(batch_norm(train, self.dtype, name='bn')(x))
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
