"""Measuring the compiled LoCal+SGD step for every transition index k.

For each k (0 = plain SGD) `measure_steps` compiles the real train step and
measures, in one process: XLA's FLOPs (of the program as written, its
CPU lowering before optimization, on any backend: `flops.py`), XLA's
temporary bytes
(`memory_analysis()` of the device's program), and the median wall time of
a step, with the k's interleaved in a random order on every repeat (these
machines are noisy), after a warm-up. Beside the Hebbian step it times the
frozen step (the local units only run forward: the FreezeOut peer). Ratios
are to k = 0. Where the device's dense peak is known
(`hardware.peak_flops`), each step's model-FLOP utilization: counted
FLOPs / step time / peak.
Used by benchmarks/step_bench.py and the notebooks.
"""
import functools
import random
import statistics
import time
from typing import Any, Dict, List, Optional

import jax
import jax.numpy as jnp
import numpy as np

from localsgd_jax import config_validation
from localsgd_jax import hardware
from localsgd_jax import local_rules
from localsgd_jax import models
from localsgd_jax import step_cache
from localsgd_jax.configs import default
from localsgd_jax import optim
from localsgd_jax import train_step as ts


def _time_steps(compiled, state, batch, steps: int):
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, batch)
  jax.block_until_ready((state, metrics))
  return state, (time.perf_counter() - t0) / steps


def measure_steps(model_name: str, batch_size: int, *, image_size: int = 32,
        channels: int = 3, num_classes: int = 10, cifar_stem: bool = True,
        rule: str = '', hebbian_fraction: float = 1.0,
        hebbian_every: int = 1,
        dtype: str = 'float32', ks=None, frozen: bool = True,
        repeats: int = 7, steps: int = 3, seed: int = 0
        ) -> List[Dict[str, Any]]:
  """Measures every k; returns one dict per k (see module docstring).

  Long because the measurement is one procedure that must stay in order:
  build, compile and count every (variant, k), warm up, then time all of
  them interleaved in a random order per repeat, then form the ratios.
  """
  config = default.get_config()
  config.dtype = dtype
  config.local.rule = rule or config.local.rule  # '' = the default rule
  rule = config.local.rule
  config.local.hebbian_fraction = hebbian_fraction
  config_validation.validate_config(config)
  model = models.create_model(model_name, num_classes, cifar_stem=cifar_stem,
                              dtype=models.DTYPES[dtype])
  num_units = model.num_units
  ks = list(range(num_units)) if ks is None else list(ks)
  shape = (image_size, image_size, channels)
  tx = optim.direction(config.optim)
  state = ts.create_train_state(model, tx, jax.random.key(seed), shape)
  rng = np.random.default_rng(seed)
  batch = {
      'image': jnp.asarray(rng.normal(size=(batch_size, *shape)), jnp.float32),
      'label': jnp.asarray(rng.integers(0, num_classes, batch_size), jnp.int32),
      'mask': jnp.ones((batch_size,), jnp.float32)}

  # One step at the peak learning rate (the rates are data of the step).
  variants = {'hebbian': step_cache.StepCache(functools.partial(
      ts.make_train_step(model, tx, config), rates=ts.step_rates(config)))}
  if frozen:
    frozen_cfg = config.copy_and_resolve_references()
    frozen_cfg.local.rule = local_rules.FROZEN
    variants['frozen'] = step_cache.StepCache(functools.partial(
        ts.make_train_step(model, tx, frozen_cfg),
        rates=ts.step_rates(frozen_cfg)))
  jobs = [(name, k) for name in variants for k in ks
          if not (name == 'frozen' and k == 0)]  # k = 0 is the same step
  results = {k: {'k': k, 'num_units': num_units, 'model': model_name,
                 'batch_size': batch_size, 'dtype': dtype, 'rule': rule,
                 'hebbian_fraction': hebbian_fraction,
                 'hebbian_every': hebbian_every} for k in ks}
  for name, k in jobs:
    compiled = variants[name].get(k, state, batch)
    # FLOPs of each program as written, temporary bytes from the device's
    # (StepCache.costs).
    key = step_cache.program_key(k, True)
    costs = variants[name].costs(key)
    if name == 'hebbian':
      results[k].update(costs)
      results[k]['compile_time_s'] = variants[name].compile_time_s[key]
    else:
      results[k]['frozen_' + 'flops'] = costs['flops']
    state, _ = _time_steps(compiled, state, batch, 1)  # warm-up
  times = {job: [] for job in jobs}
  order = random.Random(seed)
  for _ in range(repeats):
    order.shuffle(jobs)
    for name, k in jobs:
      state, t = _time_steps(
          variants[name].compiled[step_cache.program_key(k, True)], state,
          batch, steps)
      times[(name, k)].append(t)
  for (name, k), ts_ in times.items():
    prefix = '' if name == 'hebbian' else 'frozen_'
    results[k][prefix + 'step_time_s'] = statistics.median(ts_)
  return _with_ratios([results[k] for k in ks], batch_size, hebbian_every,
                      hardware.peak_flops(jax.devices()[0].device_kind, dtype))


def _with_ratios(rows: List[Dict[str, Any]], batch_size: int,
                 hebbian_every: int, peak: Optional[float] = None
                 ) -> List[Dict[str, Any]]:
  """`rows` (one per k, k ascending) with throughput, model-FLOP
  utilization against `peak` FLOP/s (None: not known, MFU left out) and,
  when k = 0 was measured, each k's ratios to it."""
  base = rows[0] if rows[0]['k'] == 0 else None
  out = []
  for r in rows:
    r['images_per_s'] = batch_size / r['step_time_s']
    if peak:
      r['peak_flops'] = peak
      r['mfu'] = r['flops'] / r['step_time_s'] / peak
      if 'frozen_step_time_s' in r:
        r['frozen_mfu'] = r['frozen_flops'] / r['frozen_step_time_s'] / peak
    if base is not None:
      r['flops_ratio'] = r['flops'] / base['flops']
      r['temp_ratio'] = r['temp_bytes'] / max(1, base['temp_bytes'])
      r['time_ratio'] = r['step_time_s'] / base['step_time_s']
      if 'frozen_step_time_s' in r:
        r['frozen_time_ratio'] = r['frozen_step_time_s'] / base['step_time_s']
        # With a Hebbian step every m-th step the other m - 1 steps are the
        # frozen (forward-only) step: the mean step time follows from both.
        r['amortized_step_time_s'] = (
            r['step_time_s'] + (hebbian_every - 1) * r['frozen_step_time_s']
        ) / hebbian_every
        r['amortized_time_ratio'] = (r['amortized_step_time_s']
                                     / base['step_time_s'])
    out.append(r)
  return out


def format_table(rows: List[Dict[str, Any]]) -> str:
  """A plain-text table of the results (ratios to k = 0 where measured;
  MFU columns where the device's peak is known)."""
  mfu = 'mfu' in rows[0]
  head = (f'{"k":>3} {"GFLOP":>8} {"xflops":>7} {"temp MB":>8} {"xtemp":>6} '
          f'{"step ms":>8} {"xtime":>6} {"img/s":>8} {"frozen ms":>9} '
          f'{"xfrozen":>7} {"x(every m)":>10}'
          + (f' {"MFU":>6} {"frozMFU":>7}' if mfu else ''))
  lines = [head, '-' * len(head)]
  for r in rows:
    tail = ''
    if mfu:
      tail = f' {100 * r["mfu"]:>5.1f}%' + (
          f' {100 * r["frozen_mfu"]:>6.1f}%' if 'frozen_mfu' in r
          else f' {"-":>7}')
    lines.append(
        f'{r["k"]:>3} {r["flops"] / 1e9:>8.2f} {r.get("flops_ratio", 1):>7.3f} '
        f'{r["temp_bytes"] / 1e6:>8.1f} {r.get("temp_ratio", 1):>6.3f} '
        f'{r["step_time_s"] * 1e3:>8.1f} {r.get("time_ratio", 1):>6.3f} '
        f'{r["images_per_s"]:>8.0f} '
        + (f'{r["frozen_step_time_s"] * 1e3:>9.1f} '
           f'{r["frozen_time_ratio"]:>7.3f} '
           f'{r["amortized_time_ratio"]:>10.3f}'
           if 'frozen_time_ratio' in r else f'{"-":>9} {"-":>7} {"-":>10}')
        + tail)
  return '\n'.join(lines)
