"""SGD-side optimizer and learning-rate schedules (optax).

The optimizer produces an update *direction*; the step multiplies it by the
scheduled learning rate of the global step. Its state is kept per unit (one
optax state per top-level params key), so the state's tree structure does not
depend on the transition index: an SGD step simply leaves the states of local
units untouched.
"""
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax


def kernels_mask(params: Any) -> Any:
  """True for the conv / dense kernels of `params`, False for the rest.

  The rest are the BatchNorm scales and biases and the layers' biases. Works
  on any subtree (the optimizer state is kept per unit, so `tx.init` and
  `tx.update` see one unit's parameters at a time): a leaf is a kernel by its
  own name, not by its place in the whole model.
  """
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], 'key', None) == 'kernel', params)


def _weight_decay(cfg: ml_collections.ConfigDict
                  ) -> optax.GradientTransformation:
  """Weight decay on every parameter, or (decay_norm_and_bias=False) on the
  kernels only.

  The masked decay keeps the unmasked one's state (optax.masked would wrap
  it in a MaskedState: no leaves, but another tree structure, which Orbax
  refuses to restore into), so a run resumes or forks from a checkpoint of
  either setting.
  """
  decay = optax.add_decayed_weights(cfg.weight_decay)
  if cfg.decay_norm_and_bias:
    return decay
  masked = optax.add_decayed_weights(cfg.weight_decay, mask=kernels_mask)

  def update(updates, state, params=None):
    updates, wrapped = masked.update(
        updates, optax.MaskedState(inner_state=state), params)
    return updates, wrapped.inner_state

  return optax.GradientTransformation(decay.init, update)


# config.optim.name -> its lr-free update direction (with weight decay).
_DIRECTIONS = {
    'sgd': lambda cfg: optax.chain(
        _weight_decay(cfg),
        optax.trace(decay=cfg.momentum, nesterov=cfg.nesterov)),
    'adamw': lambda cfg: optax.chain(
        optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2), _weight_decay(cfg)),
}
OPTIMIZERS = tuple(_DIRECTIONS)


def direction(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The lr-free update direction of `cfg.name` (with weight decay)."""
  return _DIRECTIONS[cfg.name](cfg)


def triangular_schedule(peak: float, total: int, peak_fraction: float,
                        start: float, end: float) -> optax.Schedule:
  """Linear from `start` x peak up to `peak`, then linear to `end` x peak.

  The peak is at step int(peak_fraction * total) and the end value at step
  `total` (one past the last step, which therefore still trains with a
  small positive rate when end = 0), as in the fast-CIFAR ResNet-18 recipe
  (KellerJordan/cifar10-zoo, train_resnet18_94.py: np.interp over
  [0, int(0.2 T), T] -> [0.2, 1, 0] of the peak, indexed by the step).
  Defined in steps, so it compresses with the budget.
  """
  top = int(peak_fraction * total)

  def schedule(step):
    s = jnp.clip(jnp.asarray(step, jnp.float32), 0, total)
    up = start + (1.0 - start) * s / max(top, 1)
    down = 1.0 + (end - 1.0) * (s - top) / max(total - top, 1)
    return peak * jnp.where(s < top, up, down)

  return schedule


# The schedules that follow config.optim.warmup_epochs' linear ramp, from
# (cfg, peak, total steps); cosine and triangular ramp up themselves.
_AFTER_WARMUP = {
    'step': lambda cfg, peak, total: optax.piecewise_constant_schedule(
        peak, {int(b * total): cfg.step_decay for b in cfg.step_boundaries}),
    'constant': lambda cfg, peak, total: optax.constant_schedule(peak),
}
SCHEDULES = ('cosine', 'triangular') + tuple(_AFTER_WARMUP)


def learning_rate_schedule(cfg: ml_collections.ConfigDict,
                           steps_per_epoch: int,
                           num_epochs: float) -> optax.Schedule:
  """The SGD learning rate as a function of the global step.

  `num_epochs` may be fractional (a run's partial last epoch): the schedule
  spans round(num_epochs * steps_per_epoch) steps.
  """
  total = max(1, round(steps_per_epoch * num_epochs))
  warmup = min(int(cfg.warmup_epochs * steps_per_epoch), total - 1)
  peak = cfg.learning_rate
  if cfg.schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else peak, peak_value=peak,
        warmup_steps=warmup, decay_steps=total, end_value=0.0)
  if cfg.schedule == 'triangular':
    # Its own ramp up: validation refuses warmup_epochs > 0 with it.
    return triangular_schedule(peak, total, cfg.peak_fraction,
                               cfg.triangular_start, cfg.triangular_end)
  main = _AFTER_WARMUP[cfg.schedule](cfg, peak, total)
  if not warmup:
    return main
  ramp = optax.linear_schedule(0.0, peak, warmup)
  return optax.join_schedules([ramp, lambda s: main(s + warmup)], [warmup])
