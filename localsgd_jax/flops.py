"""XLA's FLOP counts of a program as written: its CPU lowering, unoptimized.

The one reader of XLA's cost analysis for FLOPs in the project. A count is
XLA's cost analysis of the program's HLO before any optimization, lowered
for the CPU backend (`lower(lowering_platforms=('cpu',))`, which exists on
GPU machines too) and analysed by the CPU client, whatever the default
backend is; nothing is compiled. Why not a compiled program's own count:

  * on GPUs it leaves out the cuDNN / cuBLAS custom calls that carry the
    convolutions and GEMMs (~1% of the real FLOPs);
  * on CPUs XLA rewrites the weight gradient of a grouped (depthwise)
    convolution into a dense convolution over all channel pairs and keeps
    the diagonal, so MobileNetV2's compiled CPU step counts 5.6x the FLOPs
    of the program as written (3.59 against 0.64 GFLOP per image at 128
    px, benchmarks/RESULTS.md); for the ResNets the two counts agree to
    within 1%;
  * the unoptimized count is the program's own arithmetic, the same on every
    backend: model FLOPs, what utilization (MFU) divides.

A sharded program's count is per device: its whole (unpartitioned) count
divided by its partitions, as for model FLOPs per device. `cpu_flops`
counts each distinct program once per process (by a fingerprint of its
CPU lowering); counting costs a trace and a lowering, no compile.
Temporary bytes (`memory_analysis()`) are the device's and stay with the
program that actually runs (`step_cache.xla_costs`).
"""
import functools
import hashlib
from typing import Dict, List, Sequence

import jax
import jax.numpy as jnp

from localsgd_jax.models import base


def cost_counts(compiled) -> Dict[str, float]:
  """`compiled.cost_analysis()` as one flat dict of floats ('flops', ...):
  a compiled program's own counts (for tests and comparisons; FLOP counts
  are `cpu_flops`')."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {name: float(value) for name, value in (cost or {}).items()}


def _num_partitions(module) -> int:
  attrs = module.operation.attributes
  if 'mhlo.num_partitions' not in attrs:
    return 1
  return int(str(attrs['mhlo.num_partitions']).split(':')[0])


def hlo_flops(lowered) -> float:
  """XLA's FLOPs of a CPU lowering's HLO before optimization, per device.

  Analysed by the CPU client: `Lowered.cost_analysis()` would ask the
  backend the program was traced for, and GPU plugins do not implement it.
  """
  from jax._src.lib import _jax  # pylint: disable=g-import-not-at-top
  module = lowered.compiler_ir('hlo').as_hlo_module()
  cost = _jax.hlo_module_cost_analysis(jax.devices('cpu')[0].client, module)
  return float(cost['flops']) / _num_partitions(
      lowered.compiler_ir('stablehlo'))


# Counts of the programs counted so far, by `_fingerprint`.
_counts: Dict[str, float] = {}


def _fingerprint(lowered) -> str:
  """Names a program: its CPU lowering's text (shapes, constants,
  shardings; no source locations)."""
  return hashlib.sha256(lowered.as_text().encode()).hexdigest()


def cpu_flops(traced) -> float:
  """XLA's FLOPs of `traced` (a `jax.jit(f).trace(...)`) as written, per
  device: its CPU lowering's HLO before optimization (`hlo_flops`),
  counted once per distinct program (see the module's docstring)."""
  lowered = traced.lower(lowering_platforms=('cpu',))
  key = _fingerprint(lowered)
  if key not in _counts:
    _counts[key] = hlo_flops(lowered)
  return _counts[key]


def _cpu_struct(struct):
  return jax.ShapeDtypeStruct(
      struct.shape, struct.dtype,
      sharding=jax.sharding.SingleDeviceSharding(jax.devices('cpu')[0]))


def unit_flops(model: base.Network, image_shape: Sequence[int]
               ) -> List[float]:
  """XLA's FLOPs of each unit's forward pass on one image (inference mode,
  `cpu_flops`), in unit order: what
  `config.selection.k_max_flop_share` divides.

  Shapes only: nothing is initialized or run. Units equal in their fields
  and input shape (e.g. the repeated blocks of a stage) are counted once.
  """
  x = _cpu_struct(jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
  variables = jax.tree.map(_cpu_struct, jax.eval_shape(
      functools.partial(model.init, train=False), jax.random.key(0), x))
  flops, seen = [], {}
  for i in range(model.num_units):
    forward = jax.jit(functools.partial(model.apply, train=False, start=i,
                                        stop=i + 1))
    key = (repr(model.units[i]), x.shape, x.dtype)
    if key not in seen:
      seen[key] = cpu_flops(forward.trace(variables, x))
    flops.append(seen[key])
    x = _cpu_struct(jax.eval_shape(forward, variables, x))
  return flops
