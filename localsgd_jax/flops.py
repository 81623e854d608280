"""XLA's FLOP counts, always from the program compiled for the CPU backend.

The one reader of `cost_analysis()` in the project. On GPUs XLA's cost
analysis leaves out the cuDNN / cuBLAS custom calls that carry the
convolutions and GEMMs, so a GPU program reports ~1% of its real FLOPs.
Every FLOP count here therefore comes from the same program lowered and
compiled for the CPU backend (which exists on GPU machines too), whatever
the default backend is:

  * `cpu_compile(traced)` lowers a `jax.jit(...).trace(...)` for 'cpu'
    (`lower(lowering_platforms=('cpu',))`) and compiles it on the CPU
    client: with JAX's own `compile()` where the program's devices are
    CPUs, else through the CPU client directly, with a device assignment
    of CPU devices (device 0 repeated when there are fewer CPU devices
    than the program's partitions: the program is compiled, never run);
  * a sharded program keeps its partitions, so its count is XLA's count of
    one partition: FLOPs per device, as for the program that runs;
  * temporary bytes (`memory_analysis()`) are the device's and stay with
    the program that actually runs (`step_cache.xla_costs`);
  * `cpu_flops` counts each distinct program once: its count is kept by a
    fingerprint of the CPU lowering (and the JAX version), in memory and,
    with `keep_counts_in` (the persistent compilation cache's folder), on
    disk. Off the CPU the count is a second compile of the step (~3 s for
    ResNet-18's on two cores), which JAX's own cache does not serve; a
    comparison's runs ask for the same few programs hundreds of times.
"""
import functools
import hashlib
import json
import os
from typing import Any, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from localsgd_jax.models import base


def cost_counts(compiled) -> Dict[str, float]:
  """`compiled.cost_analysis()` as one flat dict of floats ('flops', ...)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {name: float(value) for name, value in (cost or {}).items()}


def platform_of(compiled) -> str:
  """The platform ('cpu', 'gpu', ...) a `jax.stages.Compiled` runs on."""
  for sharding in jax.tree.leaves(compiled.input_shardings):
    return next(iter(sharding.device_set)).platform
  return jax.default_backend()


def _num_partitions(module) -> int:
  attrs = module.operation.attributes
  if 'mhlo.num_partitions' not in attrs:
    return 1
  return int(str(attrs['mhlo.num_partitions']).split(':')[0])


def cpu_compile(traced) -> Any:
  """`traced` (a `jax.jit(f).trace(...)`) lowered and compiled for the CPU.

  Returns an executable with `cost_analysis()` and `as_text()` (a
  `jax.stages.Compiled`, or the CPU client's executable where the traced
  program's devices are not CPUs).
  """
  return _compile_for_cpu(traced.lower(lowering_platforms=('cpu',)))


def _compile_for_cpu(lowered) -> Any:
  """A CPU lowering compiled: by JAX where its devices are CPUs, else on
  the CPU client (`client_compile`)."""
  if _device_platform(lowered) == 'cpu':
    return lowered.compile()
  return client_compile(lowered, jax.devices('cpu'))


def _device_platform(lowered) -> str:
  """The platform of the devices a lowering's program was traced for (its
  arguments' devices, else the default), which `lowering_platforms` leaves
  alone: `Lowered.compile()` compiles for them."""
  try:  # No public attribute names it.
    return lowered._lowering.compile_args['backend'].platform  # pylint: disable=protected-access
  except (AttributeError, KeyError, TypeError):
    return jax.default_backend()


def client_compile(lowered, cpus: Sequence[Any]) -> Any:
  """A CPU lowering compiled on the CPU client, over the devices `cpus`.

  For programs whose own devices are GPUs (or TPUs): JAX has no public call
  for this; `get_compile_options` sets the same build options (SPMD,
  Shardy) as JAX's own compile. With fewer CPU devices than the program's
  partitions every partition is assigned CPU device 0: fine for a program
  that is only compiled, to be counted, never run.
  """
  from jax._src import compiler  # pylint: disable=g-import-not-at-top
  from jax._src.lib import _jax  # pylint: disable=g-import-not-at-top
  module = lowered.compiler_ir('stablehlo')
  n = _num_partitions(module)
  ids = list(range(n)) if n <= len(cpus) else [0] * n
  options = compiler.get_compile_options(
      num_replicas=1, num_partitions=n,
      device_assignment=np.array([cpus[i].id for i in ids]).reshape(1, n))
  used = _jax.DeviceList(tuple(cpus[i] for i in sorted(set(ids))))
  return cpus[0].client.compile_and_load(module, used, options)


# Counts of the programs counted so far, by `_fingerprint`; `_count_dir`:
# where they are also kept on disk ('' = in memory only).
_counts: Dict[str, float] = {}
_count_dir = ''


def keep_counts_in(path: str) -> None:
  """Keeps `cpu_flops`' counts in folder `path` too (one small JSON file
  per program), so that later processes on this machine do not compile a
  counted program again; '' = in this process's memory only."""
  global _count_dir
  _count_dir = path


def _fingerprint(lowered) -> str:
  """Names a program's count: its CPU lowering's text (shapes, constants,
  shardings; no source locations) and the JAX that compiles it."""
  text = f'flops v1, jax {jax.__version__}\n{lowered.as_text()}'
  return hashlib.sha256(text.encode()).hexdigest()


def _stored_count(key: str) -> Optional[float]:
  """The count kept on disk under `key`; None where there is none, or it
  cannot be read (it is counted again and rewritten)."""
  try:
    with open(os.path.join(_count_dir, f'{key}.json')) as f:
      return float(json.load(f)['flops'])
  except (OSError, ValueError, KeyError, TypeError):
    return None


def _store_count(key: str, count: float) -> None:
  path = os.path.join(_count_dir, f'{key}.json')
  try:
    os.makedirs(_count_dir, exist_ok=True)
    with open(f'{path}.{os.getpid()}.tmp', 'w') as f:
      json.dump({'flops': count}, f)
    os.replace(f'{path}.{os.getpid()}.tmp', path)  # whole, or not there
  except OSError:
    pass  # a cache: the count stays in memory


def cpu_flops(traced) -> float:
  """XLA's FLOPs of `traced` compiled for the CPU (per device if sharded),
  compiled once per distinct program (see the module's docstring)."""
  lowered = traced.lower(lowering_platforms=('cpu',))
  key = _fingerprint(lowered)
  if key not in _counts:
    count = _stored_count(key) if _count_dir else None
    if count is None:
      count = cost_counts(_compile_for_cpu(lowered))['flops']
      if _count_dir:
        _store_count(key, count)
    _counts[key] = count
  return _counts[key]


def program_flops(compiled, traced=None) -> float:
  """FLOPs of a compiled program, counted on its CPU compile.

  `compiled` itself where it runs on the CPU (no second compile), else
  `traced` (the same program, `jax.jit(f).trace(...)`) compiled for the CPU.

  Raises:
    ValueError: `compiled` is not a CPU program and `traced` is None.
  """
  if platform_of(compiled) == 'cpu':
    return cost_counts(compiled)['flops']
  if traced is None:
    raise ValueError('FLOPs of a non-CPU program are counted on its CPU '
                     'compile: pass `traced`, the same jax.jit(f).trace(...)')
  return cpu_flops(traced)


def _cpu_struct(struct):
  return jax.ShapeDtypeStruct(
      struct.shape, struct.dtype,
      sharding=jax.sharding.SingleDeviceSharding(jax.devices('cpu')[0]))


def unit_flops(model: base.Network, image_shape: Sequence[int]
               ) -> List[float]:
  """XLA's FLOPs of each unit's forward pass on one image (inference mode,
  compiled for the CPU), in unit order: what
  `config.selection.k_max_flop_share` divides.

  Shapes only: nothing is initialized or run. Units equal in their fields
  and input shape (e.g. the repeated blocks of a stage) compile once.
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
