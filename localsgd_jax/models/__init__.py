"""The model zoo: every model is a `base.Network`, a sequence of units.

Pick a model with `--config.model.name=<name>`; `create_model` builds it.
"""
from typing import Any, Callable, Dict

import jax.numpy as jnp

from localsgd_jax import errors
from localsgd_jax.models import base
from localsgd_jax.models import mobilenet_v2
from localsgd_jax.models import resnet
from localsgd_jax.models import tiny
from localsgd_jax.models import vgg

# name -> builder(num_classes, *, cifar_stem, dtype) -> base.Network.
MODELS: Dict[str, Callable[..., base.Network]] = {
    'tiny': tiny.tiny,
    'resnet18': resnet.resnet18,
    'resnet34': resnet.resnet34,
    'resnet50': resnet.resnet50,
    'resnet101': resnet.resnet101,
    'resnet20': resnet.resnet20,
    'resnet56': resnet.resnet56,
    'vgg16': vgg.vgg16,
    'vgg19': vgg.vgg19,
    'mobilenet_v2': mobilenet_v2.mobilenet_v2,
}
INITS = base.INITS  # config.model.init (base.py says what each is)
# config.dtype -> the compute dtype `create_model` takes.
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def create_model(name: str, num_classes: int, *, cifar_stem: bool = True,
                 dtype: Any = jnp.float32) -> base.Network:
  """Builds a model of the zoo by name.

  Args:
    name: a key of MODELS, e.g. 'resnet20'.
    num_classes: number of logits of the head.
    cifar_stem: stems for 32x32 inputs (no early downsampling); False gives
      the ImageNet stems and, for VGG, the torchvision classifier.
    dtype: compute dtype (e.g. jnp.bfloat16); parameters stay float32.

  Returns:
    A `base.Network`; the same arguments always give the same units.

  Raises:
    errors.UserError: `name` is not a known model.
  """
  builder = MODELS.get(name)
  if builder is None:
    raise errors.UserError(
        f'Unknown model {name!r}. Valid models: {", ".join(sorted(MODELS))}. '
        'Pick one with --config.model.name=NAME, e.g. '
        '--config.model.name=resnet20.')
  return builder(num_classes, cifar_stem=cifar_stem, dtype=dtype)

