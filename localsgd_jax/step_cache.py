"""A run's compiled steps: one XLA executable per (k, hebbian), compiled once.

`StepCache` wraps a step function with static `k` and `hebbian` (the train
step, or the train loop's step that also builds the batch) and keeps each
program's compile time and XLA counts (`xla_costs`: FLOPs of the program
as written, `flops.py`; temporary bytes from the device's program).
`program_key` names which program a step runs. Programs are kept across
runs in JAX's persistent compilation cache (`enable_compilation_cache`).
"""
import os
import time
from typing import Any, Callable, Dict, Tuple

import jax
import numpy as np

from localsgd_jax import flops as flops_lib


def xla_costs(compiled, traced) -> Dict[str, float]:
  """XLA's FLOPs and temporary bytes of a compiled step.

  'flops' are those of `traced` (the same `jax.jit(step).trace(...)`) as
  written, `flops.cpu_flops` (a compiled program's own count leaves out
  the cuDNN / cuBLAS calls on GPUs and densifies depthwise weight
  gradients on CPUs). 'temp_bytes' are the device's:
  `compiled.memory_analysis()` of the program that actually runs.
  """
  return {'flops': flops_lib.cpu_flops(traced),
          'temp_bytes': int(compiled.memory_analysis().temp_size_in_bytes)}


def _abstract(leaf):
  """A leaf of the step's arguments as a shape, dtype and sharding only."""
  if isinstance(leaf, jax.Array):
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
  return jax.ShapeDtypeStruct(np.shape(leaf), np.result_type(leaf))


def program_key(k: int, hebbian: bool) -> Tuple[int, bool]:
  """Which compiled step runs k local units with or without the Hebbian
  pass: `StepCache`'s key. k = 0 has no local units, so no Hebbian pass."""
  return (k, hebbian and k > 0)


class StepCache:
  """One compiled executable per transition index, compiled once.

  Wraps any `step(state, operand, k, hebbian)` with static `k` and `hebbian`
  (the train step, or the train loop's step that also builds the batch).
  Keyed by `(k, hebbian)`. `compile_time_s[key]` holds the lowering +
  compilation time (a load from JAX's persistent compilation cache when it
  holds the program), so the trainer can report compile time apart from
  step time; `compiled[key]` exposes XLA's `cost_analysis()` /
  `memory_analysis()` to benchmarks and tests, and `costs(key)` their
  FLOPs (the step traced again from the shapes of its first arguments and
  counted on its CPU lowering, `flops.cpu_flops`: no compile) and
  temporary bytes (the device program's).
  """

  def __init__(self, train_step: Callable, donate: bool = True):
    self._jitted = jax.jit(train_step, static_argnums=(2, 3),
                           donate_argnums=(0,) if donate else ())
    self.compiled: Dict[Tuple[int, bool], Any] = {}
    self.compile_time_s: Dict[Tuple[int, bool], float] = {}
    self._costs: Dict[Tuple[int, bool], Dict[str, float]] = {}
    self._shapes: Dict[Tuple[int, bool], Any] = {}  # the arguments, abstract

  def costs(self, key: Tuple[int, bool]) -> Dict[str, float]:
    """`xla_costs` of the compiled step `key` (compiled already)."""
    if key not in self._costs:
      self._costs[key] = xla_costs(
          self.compiled[key], self._jitted.trace(*self._shapes[key], *key))
    return self._costs[key]

  def get(self, k: int, state: Any, batch: Any,
          hebbian: bool = True):
    key = program_key(k, hebbian)
    if key not in self.compiled:
      t0 = time.perf_counter()
      self.compiled[key] = self._jitted.lower(state, batch, *key).compile()
      self.compile_time_s[key] = time.perf_counter() - t0
      self._shapes[key] = jax.tree.map(_abstract, (state, batch))
    return self.compiled[key]

  def __call__(self, state: Any, batch: Any, k: int,
               hebbian: bool = True):
    return self.get(k, state, batch, hebbian)(state, batch)


def enable_compilation_cache(path: str) -> None:
  """Points JAX's persistent compilation cache at `path` ('' = off).

  Every program a run compiles (each k's step, the eval step) is stored
  there and loaded by later runs on this machine instead of compiled again:
  the runs of a comparison or a benchmark suite compile each program once.
  """
  path = os.path.abspath(os.path.expanduser(path)) if path else ''
  if (jax.config.jax_compilation_cache_dir or '') == path:
    return
  from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=g-import-not-at-top
  compilation_cache.reset_cache()
  jax.config.update('jax_enable_compilation_cache', bool(path))
  jax.config.update('jax_compilation_cache_dir', path or None)
  # Cache every program: the small ones compile in well under the default
  # 1 s threshold on a GPU, but a comparison compiles them many times.
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)


class CacheEvents:
  """While entered, counts the programs compiled through the persistent
  compilation cache and those loaded from it (jax.monitoring events) into
  `clock.compile_cache_requests` and `clock.compile_cache_hits`, so a run's
  compile time says whether it was a cold compile or a cache load."""

  FIELDS = {'/jax/compilation_cache/compile_requests_use_cache':
                'compile_cache_requests',
            '/jax/compilation_cache/cache_hits': 'compile_cache_hits'}

  def __init__(self, clock: Any):
    self.clock = clock

  def __call__(self, event: str, **kwargs) -> None:
    del kwargs
    field = self.FIELDS.get(event)
    if field is not None:
      setattr(self.clock, field, getattr(self.clock, field) + 1)

  def __enter__(self):
    jax.monitoring.register_event_listener(self)
    return self

  def __exit__(self, *exc_info):
    jax.monitoring.unregister_event_listener(self)
