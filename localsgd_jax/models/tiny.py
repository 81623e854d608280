"""A tiny 4-unit CNN for tests and the offline (sklearn digits) default.

Units: [conv16-BN-ReLU-pool, conv32-BN-ReLU-pool, conv64-BN-ReLU-pool, head].
On a 32x32x1 image: 24,058 params with 10 classes and 4.6 MFLOPs forward
(XLA's count; tests/test_models.py bounds it). Its accuracy and time with
plain SGD on sklearn digits: `python train.py --config.selection.mode=sgd`
(the README's quickstart shows the default LoCal+SGD run's output).
"""
from typing import Any

import jax.numpy as jnp

from localsgd_jax.models import base


def tiny(num_classes: int, *, cifar_stem: bool = True,
         dtype: Any = jnp.float32) -> base.Network:
  """Builds the tiny CNN.

  Args:
    num_classes: number of logits.
    cifar_stem: ignored (accepted so every builder has one signature); the
      tiny CNN always keeps full resolution in its first conv.
    dtype: compute dtype; parameters stay float32.

  Returns:
    A Network of 4 units.
  """
  del cifar_stem
  # Pooling early keeps FLOPs low: 32x32 -> 16 -> 8 -> 4.
  return base.Network(units=[
      base.ConvBNAct(16, 3, 1, pool=2, dtype=dtype),
      base.ConvBNAct(32, 3, 1, pool=2, dtype=dtype),
      base.ConvBNAct(64, 3, 1, pool=2, dtype=dtype),
      base.ClassifierHead(num_classes, dtype=dtype),
  ])
