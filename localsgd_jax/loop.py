"""The steps of one epoch: one dispatch per batch, metrics kept on the device.

`TrainLoop.run_epoch` drives the compiled LoCal+SGD step through an epoch:

  * one jitted call per step: the batch is built inside it
    (`Dataset.assemble`: for in-memory data a gather + crop + flip of the
    device-resident split, so nothing is uploaded per step), then the train
    step runs, then its metrics are written into per-step buffers on the
    device (`acc`);
  * the host fetches those buffers only at the deliberate points: every
    `config.log.check_finite_every` steps (the losses and one "are all
    parameters finite" flag, one fetch), and at the end of each selection
    period (the epoch, or `config.selection.every_steps` steps);
  * the step for each (k, hebbian) is compiled once (`StepCache`), and its
    XLA counts come from that program (FLOPs of the program as written,
    its CPU lowering: `flops.py`); the share of the FLOPs spent in the
    local units from the local forward pass, counted the same way.
"""
import collections
import dataclasses
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from localsgd_jax import data as data_lib
from localsgd_jax import flops as flops_lib
from localsgd_jax import local_phase
from localsgd_jax import local_rules
from localsgd_jax import metrics as metrics_lib
from localsgd_jax import models
from localsgd_jax import optim
from localsgd_jax import partition
from localsgd_jax import selection
from localsgd_jax import step_cache
from localsgd_jax import train_step as train_step_lib

# Per-step buffers of the metrics the train step returns ('grad_norms' and
# 'update_norms' are (steps, units), the others (steps,)).
_ACC_FIELDS = ('loss', 'correct', 'count', 'learning_rate', 'local_lr',
               'ws_factor', 'grad_norms', 'update_norms')
_PER_UNIT = ('grad_norms', 'update_norms')


def make_loop_step(train_step: Callable, dataset: data_lib.Dataset,
                   batch_sharding: Optional[jax.sharding.Sharding]
                   ) -> Callable:
  """`loop_step((state, acc), feed, k, hebbian) -> (state, acc)`.

  `feed` is `{'device': EpochFeed.device, 'host': this step's host batch or
  None, 'first_step': int32 global step of the epoch's first step, 'rates':
  the epoch's `train_step.step_rates`, one per step}`; the step within the
  epoch is `state.step - first_step`, so nothing about the step's position
  is uploaded, and the learning rates are an epoch's table, uploaded once.
  """
  def loop_step(carry, feed, k: int, hebbian: bool):
    state, acc = carry
    i = state.step - feed['first_step']
    batch = dataset.assemble(feed['device'], feed['host'], i)
    if batch_sharding is not None:
      batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
    state, m = train_step(state, batch, k, hebbian,
                          rates=jax.tree.map(lambda r: r[i], feed['rates']))
    acc = {name: acc[name].at[i].set(m[name]) for name in _ACC_FIELDS}
    return state, acc
  return loop_step


@jax.jit
def _all_finite(params) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(p))
                            for p in jax.tree.leaves(params)]))


@jax.jit
def _net_change(new_params, old_params):
  """Per unit: ||W_new - W_old|| and ||W_old|| over all its parameters."""
  return {n: (optax.tree.norm(jax.tree.map(jnp.subtract, new_params[n],
                                             old_params[n])),
              optax.tree.norm(old_params[n]))
          for n in old_params}


_copy = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))


def compile_message(k: int, hebbian: bool, hebbian_every: int,
                    frozen: bool = False) -> str:
  """The line announcing a compile of the step for (k, hebbian)."""
  if k == 0:
    what = 'plain SGD'
  elif frozen:
    what = f'units 0..{k - 1} frozen: forward only'
  elif hebbian:
    what = f'units 0..{k - 1} local, with their Hebbian update'
  else:
    what = (f'units 0..{k - 1} local, forward only: the steps between '
            f'Hebbian updates (every {hebbian_every})')
  return f'Compiling the step for k={k} ({what}) ...'


@dataclasses.dataclass
class EpochResult:
  """What one epoch of steps produced, on the host."""
  metrics: Dict[str, np.ndarray]  # the per-step buffers, (steps, ...)
  segments: List[Tuple[int, int]]  # (first step in the epoch, k) per k used
  program_counts: Dict[Tuple[int, bool], int]  # steps run per compiled step
  decisions: List[str]             # the selector's decisions
  last_stats: Dict[str, Any]       # the last period's selector statistics
  compile_time_s: float            # compiling (or loading) new programs
  train_time_s: float              # the steps, without compiling
  # The local rule's epoch-end fields (local_phase.epoch_stats).
  local_stats: Dict[str, Any] = dataclasses.field(default_factory=dict)


def _checked_loss(acc, state, i: int, first_step: int,
                  on_nonfinite: Callable) -> float:
  """The deliberate fetch: the losses so far and one all-finite flag of the
  parameters; raises `on_nonfinite(...)` if anything is NaN or inf."""
  losses, finite = jax.device_get((acc['loss'], _all_finite(state.params)))
  losses = losses[:i + 1]
  if not (finite and np.all(np.isfinite(losses))):
    raise on_nonfinite(losses, first_step, bool(finite))
  return float(losses[-1])


class _Period:
  """The selection periods of one epoch: the epoch itself, or every
  `selector.every_steps` steps of it, each ending in a selector decision."""

  def __init__(self, selector: selection.Selector, epoch: int,
               steps_per_epoch: int, params, steps: Optional[int] = None):
    self.selector, self.epoch = selector, epoch
    self.steps_per_epoch = steps_per_epoch
    # The epoch's steps: fewer than steps_per_epoch in a run's partial last
    # epoch (config.last_epoch_fraction).
    self.steps = steps or steps_per_epoch
    self.k = selector.transition(epoch)
    self.segments = [(0, self.k)]  # (first step in the epoch, k) per k used
    self.decisions: List[str] = []
    self.stats: Dict[str, Any] = {}
    self.host = None  # the last fetch of the per-step buffers
    # The step donates its input state: keep a copy to measure updates.
    self.start, self._params = 0, _copy(params)

  def end(self, i: int, host: Dict[str, np.ndarray], params) -> None:
    """Ends the period at step `i`: statistics, decision, next k."""
    self.host = host
    rows = {n: v[self.start:i + 1] for n, v in host.items()}
    change = jax.device_get(_net_change(params, self._params))
    self.stats = selection.period_stats(
        rows, [change[models.base.unit_name(u)] for u in range(len(change))],
        self.k, self.steps_per_epoch)
    self.decisions.append(self.selector.observe(
        self.epoch + (i + 1) / self.steps_per_epoch, self.stats))
    if i + 1 < self.steps:
      self.k = self.selector.transition(self.epoch)
      if self.k != self.segments[-1][1]:
        self.segments.append((i + 1, self.k))
      self.start, self._params = i + 1, _copy(params)


def num_train_steps(config: ml_collections.ConfigDict,
                    steps_per_epoch: int) -> int:
  """The steps of a run: `config.num_epochs` epochs, the last one cut to
  `config.last_epoch_fraction` of its steps (rounded to the nearest step,
  halves to even, at least 1): 12.6 epochs are num_epochs=13 and
  last_epoch_fraction=0.6, round(12.6 * steps_per_epoch) steps."""
  last = min(steps_per_epoch,
             max(1, round(config.last_epoch_fraction * steps_per_epoch)))
  return (config.num_epochs - 1) * steps_per_epoch + last


class TrainLoop:
  """Runs epochs of the compiled LoCal+SGD step of `config` on a mesh.

  Owns what a run's steps are made of: the optimizer direction (`tx`), the
  learning-rate schedule, the train step per (k, hebbian) compiled once
  (`steps`), and the initial state (`init_state`).
  """

  def __init__(self, model: models.base.Network, dataset: data_lib.Dataset,
               config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    self.model = model
    self.dataset = dataset
    self.config = config
    self.batch_size = config.batch_size
    self.steps_per_epoch = dataset.steps_per_epoch(config.batch_size)
    self.replicated = jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec())
    self.batch_sharding = jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec('data'))
    self.tx = optim.direction(config.optim)
    self.num_steps = num_train_steps(config, self.steps_per_epoch)
    # The schedule's shape compressed into the run's exact steps, evaluated
    # here once: the steps take their rates as data (one program whatever
    # the schedule, its peak or the run's length).
    lr_schedule = optim.learning_rate_schedule(
        config.optim, self.steps_per_epoch,
        self.num_steps / self.steps_per_epoch)
    steps = np.arange(self.num_steps)
    with jax.default_device(jax.local_devices(backend='cpu')[0]):
      # (A constant schedule gives one value for any steps.)
      lrs = np.broadcast_to(jax.device_get(lr_schedule(steps)), steps.shape)
    self.rates = train_step_lib.step_rates(config, lrs)
    self.steps = step_cache.StepCache(make_loop_step(
        train_step_lib.make_train_step(model, self.tx, config),
        dataset, self.batch_sharding))
    self._local_forward = jax.jit(
        train_step_lib.make_local_forward(model, config.local),
        static_argnums=(3, 4))
    self._local_flops: Dict[Tuple[int, bool], float] = {}
    self._extra_compile_s = 0.0
    self._zeros = jax.jit(self._make_zeros, out_shardings=self.replicated)
    # Each local unit's kernels at the start of its local phase
    # (checkpointed: train_lib saves and restores `local_phase.start`).
    self.local_phase = local_phase.LocalPhase()

  def init_state(self, seed: int) -> train_step_lib.TrainState:
    """The initial train state of `seed`, replicated over the mesh.

    Every process computes the same state from the seed and places its
    copy (with several processes `device_put` would all-gather each leaf to
    check that they agree: costly for big models, and the NaN loss EMA
    never compares equal).
    """
    state = train_step_lib.create_train_state(
        self.model, self.tx, jax.random.key(seed), self.dataset.image_shape,
        ema=self.config.optim.ema_decay > 0, init=self.config.model.init)
    return data_lib.dataset.replicate(state, self.replicated)

  def _make_zeros(self):
    shapes = {name: (self.steps_per_epoch,) for name in _ACC_FIELDS}
    for name in _PER_UNIT:
      shapes[name] = (self.steps_per_epoch, self.model.num_units)
    return {name: jnp.zeros(shape, jnp.float32)
            for name, shape in shapes.items()}

  def steps_in_epoch(self, epoch: int) -> int:
    """The steps epoch `epoch` (0-based) runs: all but in a partial last
    epoch (see `num_train_steps`)."""
    return min(self.steps_per_epoch,
               self.num_steps - epoch * self.steps_per_epoch)

  def operand(self, epoch: int,
              feed: data_lib.dataset.EpochFeed) -> Dict[str, Any]:
    """The loop step's `feed` for epoch `epoch` (`make_loop_step`), placed
    on the devices once per epoch, its host batch still None. Its rates are
    `self.rates`' rows of the epoch, steps_per_epoch of each: a partial last
    epoch repeats its last row in the steps it does not run, so every
    epoch's table has one shape."""
    first = epoch * self.steps_per_epoch
    rows = np.minimum(np.arange(first, first + self.steps_per_epoch),
                      self.num_steps - 1)
    return {'device': feed.device, 'host': None,
            'first_step': data_lib.dataset.replicate(np.int32(first),
                                                     self.replicated),
            'rates': data_lib.dataset.replicate(
                {name: r[rows] for name, r in self.rates.items()},
                self.replicated)}

  @property
  def compile_time_s(self) -> float:
    return sum(self.steps.compile_time_s.values()) + self._extra_compile_s

  def step_costs(self, key: Tuple[int, bool], state) -> Dict[str, float]:
    """XLA's FLOPs and temporary bytes of a compiled step, and the share of
    its FLOPs in the local units (their forward pass and Hebbian GEMMs).

    FLOPs, the step's and the local units', are XLA's counts of the programs
    as written (`flops.py`: their CPU lowerings, unoptimized), per device
    (the image batch sharded as the step's); temporary bytes are the device
    program's. Each key's programs are counted once.
    """
    k, hebbian = key
    if key not in self._local_flops:
      # The first count of each program traces and lowers it again (the
      # step and the local forward): compile time, not training time.
      t0 = time.perf_counter()
      self.steps.costs(key)
      local = 0.0
      if k > 0:
        image = jax.ShapeDtypeStruct(
            (self.batch_size, *self.dataset.image_shape), jnp.float32,
            sharding=self.batch_sharding)
        local = flops_lib.cpu_flops(self._local_forward.trace(
            partition.split(state.params, k)[0],
            partition.split(state.batch_stats, k)[0], image, k, hebbian))
      self._extra_compile_s += time.perf_counter() - t0
      self._local_flops[key] = local
    costs = self.steps.costs(key)
    return {'step_flops': costs['flops'],
            'step_temp_bytes': costs['temp_bytes'],
            'local_flop_fraction': self._local_flops[key]
                                   / max(costs['flops'], 1.0)}

  def run_epoch(self, state, epoch: int, selector: selection.Selector,
                progress: metrics_lib.Progress, on_nonfinite: Callable
                ) -> Tuple[Any, EpochResult]:
    """Runs epoch `epoch` (0-based) from `state`; returns the new state.

    Args:
      state: the train state (donated).
      epoch: 0-based epoch.
      selector: decides k at the start and after each selection period.
      progress: the epoch's progress display.
      on_nonfinite: `(losses, first_step, params_finite) -> UserError` for
        a failed finite check.
    """
    steps_per_epoch = self.steps_per_epoch
    compile_before = self.compile_time_s
    t0 = time.perf_counter()
    feed = self.dataset.train_feed(epoch, self.batch_size, self.replicated,
                                   self.batch_sharding)
    first_step = epoch * steps_per_epoch
    operand = self.operand(epoch, feed)
    acc = self._zeros()
    steps = self.steps_in_epoch(epoch)
    period = _Period(selector, epoch, steps_per_epoch, state.params,
                     steps=steps)
    self.local_phase.begin(period.k, state.params)
    counts = collections.Counter()
    check_every = self.config.log.check_finite_every
    hebbian_every = self.config.local.hebbian_every
    # Frozen units have no Hebbian step: one program per k, not two equal
    # ones (the step skips the update for the frozen rule either way).
    frozen = local_rules.is_frozen(self.config.local.rule)
    for i in range(steps):
      if feed.host is not None:
        operand['host'] = next(feed.host)
      key = step_cache.program_key(
          period.k, not frozen and i % hebbian_every == 0)
      if key not in self.steps.compiled:
        progress.note(compile_message(*key, hebbian_every, frozen))
      state, acc = self.steps((state, acc), operand, *key)
      counts[key] += 1
      last = i + 1 == steps
      if (i + 1) % check_every == 0 or last:
        progress.update(i, _checked_loss(acc, state, i, first_step,
                                         on_nonfinite))
      else:
        progress.update(i)
      if last or (selector.every_steps
                  and (i + 1) % selector.every_steps == 0):
        period.end(i, jax.device_get(acc), state.params)
        self.local_phase.begin(period.k, state.params)
    progress.close()
    for key in counts:  # XLA counts of new programs: compile time, if any
      self.step_costs(key, state)
    epoch_compile = self.compile_time_s - compile_before
    # Each local unit's filter change since its local phase began, and the
    # weak-supervision factor of the steps that applied the rule.
    local_stats = local_phase.epoch_stats(
        self.local_phase, state.params, self.model.num_units,
        period.host['ws_factor'][:sum(counts.values())], period.segments,
        hebbian_every, frozen)
    return state, EpochResult(
        # The buffers hold a whole epoch: a partial one fills only `steps`.
        metrics={n: v[:steps] for n, v in period.host.items()},
        segments=period.segments,
        program_counts=dict(counts), decisions=period.decisions,
        last_stats=period.stats, compile_time_s=epoch_compile,
        train_time_s=time.perf_counter() - t0 - epoch_compile,
        local_stats=local_stats)

  def weighted_costs(self, result: EpochResult, state) -> Dict[str, float]:
    """XLA's counts of the steps an epoch ran, weighted by how often each
    compiled step (k, with or without the Hebbian GEMM) ran."""
    total = sum(result.program_counts.values())
    out = collections.defaultdict(float)
    for key, count in result.program_counts.items():
      for name, value in self.step_costs(key, state).items():
        out[name] += value * count / total
    return dict(out)
