"""SGD-side optimizer and learning-rate schedules (optax).

The optimizer produces an update *direction*; the step multiplies it by the
scheduled learning rate of the global step. Its state is kept per unit (one
optax state per top-level params key), so the state's tree structure does not
depend on the transition index: an SGD step simply leaves the states of local
units untouched.
"""
import ml_collections
import optax

from localsgd_jax.errors import UserError

OPTIMIZERS = ('sgd', 'adamw')
SCHEDULES = ('cosine', 'step', 'constant')


def direction(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The lr-free update direction of `cfg.name` (with weight decay)."""
  if cfg.name == 'sgd':
    return optax.chain(optax.add_decayed_weights(cfg.weight_decay),
                       optax.trace(decay=cfg.momentum, nesterov=cfg.nesterov))
  if cfg.name == 'adamw':
    return optax.chain(optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2),
                       optax.add_decayed_weights(cfg.weight_decay))
  raise UserError(f'unknown optimizer config.optim.name={cfg.name!r}; '
                  f'choose one of {", ".join(OPTIMIZERS)}')


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
  if cfg.schedule == 'step':
    boundaries = {int(b * total): cfg.step_decay
                  for b in cfg.step_boundaries}
    main = optax.piecewise_constant_schedule(peak, boundaries)
  elif cfg.schedule == 'constant':
    main = optax.constant_schedule(peak)
  else:
    raise UserError(f'unknown schedule config.optim.schedule={cfg.schedule!r};'
                    f' choose one of {", ".join(SCHEDULES)}')
  if not warmup:
    return main
  ramp = optax.linear_schedule(0.0, peak, warmup)
  return optax.join_schedules([ramp, lambda s: main(s + warmup)], [warmup])
