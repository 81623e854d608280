"""XLA's FLOP counts of programs and of each unit of a network."""
import functools
import time
from typing import List, Sequence, Tuple

import jax
import jax.numpy as jnp

from localsgd_jax.models import base


def lowered_flops(lowered) -> Tuple[float, float]:
  """XLA's FLOP count of a lowered program, and the seconds spent compiling
  it for that count (0 where lowering already counts, as on CPUs; JAX 0.11
  on GPUs counts compiled programs only)."""
  cost, compile_s = lowered.cost_analysis(), 0.0
  if cost is None:
    t0 = time.perf_counter()
    cost = lowered.compile().cost_analysis()
    compile_s = time.perf_counter() - t0
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost['flops']), compile_s


def unit_flops(model: base.Network, image_shape: Sequence[int]
               ) -> List[float]:
  """XLA's FLOPs of each unit's forward pass on one image (inference mode),
  in unit order: what `config.selection.k_max_flop_share` divides.

  Shapes only: nothing is initialized or run.
  """
  x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
  variables = jax.eval_shape(
      functools.partial(model.init, train=False), jax.random.key(0), x)
  flops = []
  for i in range(model.num_units):
    forward = jax.jit(functools.partial(model.apply, train=False, start=i,
                                        stop=i + 1))
    flops.append(lowered_flops(forward.lower(variables, x))[0])
    x = jax.eval_shape(forward, variables, x)
  return flops
