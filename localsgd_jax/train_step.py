"""The one pure LoCal+SGD train step, per transition index k, and the eval step.

For transition index k:
  * units [0, k) run forward only; each of their Conv/Dense layers computes its
    Hebbian update inside the same forward pass (one GEMM, `local_rules`), and
    the activation entering unit k is a `stop_gradient` boundary;
  * `jax.grad` runs over the parameters of units [k, L) only, so the compiled
    program contains no backward pass for the local units and keeps none of
    their activations;
  * k = 0 is the plain SGD step.
The step is compiled once per k (`step_cache.StepCache`), with compile time
recorded apart from step time.
"""
import contextlib
import threading
from typing import Any, Callable, Dict, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from localsgd_jax import local_rules
from localsgd_jax import partition
from localsgd_jax.models import base

Batch = Dict[str, jax.Array]
Metrics = Dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  """Everything the step updates. Its tree structure is independent of k."""
  step: jax.Array            # int32 scalar: global step
  params: Any                # {'units_i': ...}
  batch_stats: Any           # {'units_i': ...}
  opt_state: Any             # {'units_i': optax state of that unit}
  loss_ema: jax.Array        # running average of the training loss (weak sup.)
  # config.optim.ema_decay > 0: {'params', 'batch_stats'}, the exponential
  # moving average of both that evaluation uses; else None (no leaves, so
  # runs without it keep the checkpoint layout they always had).
  ema: Any = None

  def eval_variables(self) -> Tuple[Any, Any]:
    """(params, batch_stats) that evaluation uses: the moving average's
    where there is one, else the trained ones."""
    if self.ema is None:
      return self.params, self.batch_stats
    return self.ema['params'], self.ema['batch_stats']


def create_train_state(model: base.Network, tx: optax.GradientTransformation,
                       rng: jax.Array, image_shape,
                       ema: bool = False,
                       init: str = 'he_fan_out') -> TrainState:
  """Initialises parameters (`init`: one of models.INITS, see base.py),
  BatchNorm statistics and per-unit optimizer state, and with `ema` their
  moving average (starting at the same values)."""
  if init not in base.INITS:
    raise ValueError(f'init={init!r}: expected one of {base.INITS}')
  variables = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32),
                         train=False)
  params = dict(variables['params'])
  if init == 'torch_default':
    params = base.torch_default_init(params, jax.random.fold_in(rng, 1))
  batch_stats = dict(variables.get('batch_stats', {}))
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=batch_stats,
      opt_state={name: tx.init(p) for name, p in params.items()},
      loss_ema=jnp.full((), jnp.nan, jnp.float32),
      # Copies: the train step donates the state, each buffer once.
      ema=(jax.tree.map(jnp.array, {'params': params,
                                    'batch_stats': batch_stats})
           if ema else None))


def ema_update(ema: Any, new: Any, step: jax.Array, decay: float) -> Any:
  """The moving average after global step `step` (0-based) trained `new`.

  The decay is warmed up as TensorFlow's ExponentialMovingAverage does with
  num_updates: min(decay, (1 + step) / (10 + step)), so that the average
  leaves the initialization within the first tens of steps.
  """
  step = step.astype(jnp.float32)
  d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  return jax.tree.map(lambda a, x: d * a + (1.0 - d) * x, ema, new)


# --- Hebbian updates inside the forward pass --------------------------------

_in_hebbian = threading.local()


@contextlib.contextmanager
def _no_reentry():
  _in_hebbian.active = True
  try:
    yield
  finally:
    _in_hebbian.active = False


def hebbian_interceptor(local_cfg: ml_collections.ConfigDict):
  """A Linen method interceptor adding Hebbian updates to Conv/Dense layers.

  Wherever the 'hebbian' collection is mutable (the local units), every
  `nn.Conv` / `nn.Dense` call also stores the Hebbian update direction of its
  kernel in 'hebbian' under the kernel's own path. The models stay plain Flax.
  """
  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    y = next_fun(*args, **kwargs)
    if (context.method_name != '__call__'
        or not isinstance(module, (nn.Conv, nn.Dense))
        or getattr(_in_hebbian, 'active', False)
        or not module.is_mutable_collection('hebbian')):
      return y
    kernel = module.get_variable('params', 'kernel')
    x, act_src = local_rules.subsample_batch(args[0], y,
                                             local_cfg.hebbian_fraction)
    activity = local_rules.post_synaptic_activity(act_src, local_cfg.activity)
    # The contraction runs in float32 whatever the layer's compute dtype:
    # its inputs (bf16 activations, float32 activity) convert exactly, and
    # the weight-shaped sum is accumulated and returned in float32 instead
    # of being rounded to bf16 before the float32 kernel update. (JAX's
    # transpose of a bf16 conv would return the kernel's compute dtype.)
    linear = module.clone(parent=None, use_bias=False, dtype=jnp.float32)

    def layer_of_kernel(k):
      return linear.apply({'params': {'kernel': k}}, x)

    with _no_reentry():
      transpose = jax.linear_transpose(layer_of_kernel, kernel)
      contract = lambda a: transpose(a.astype(jnp.float32))[0]
      grouped = getattr(module, 'feature_group_count', 1) > 1
      direction = local_rules.hebbian_direction(
          local_cfg.rule, kernel, contract, activity, grouped=grouped)
    module.put_variable('hebbian', 'kernel', direction)
    return y

  return interceptor


def _apply_hebbian(params: Any, directions: Any, lr: jax.Array,
                   normalize: bool) -> Any:
  """Adds lr * direction to every kernel that has a Hebbian direction."""
  def update(p, d):
    if isinstance(d, dict):
      return {n: update(p[n], d[n]) if n in d else p[n] for n in p}
    return local_rules.apply_update(p, d, lr, normalize)
  return {n: update(p, directions[n]) if n in directions else p
          for n, p in params.items()}


# --- the step ---------------------------------------------------------------

def cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array,
                  label_smoothing: float) -> jax.Array:
  """Masked mean softmax cross-entropy, computed in float32."""
  num_classes = logits.shape[-1]
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes),
                                label_smoothing)
  losses = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)
  return jnp.sum(losses * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def make_local_forward(model: base.Network,
                       local_cfg: ml_collections.ConfigDict) -> Callable:
  """Builds `local_forward(params, batch_stats, x, k, hebbian)`: units [0, k).

  Returns `(h, batch_stats, directions)`: the activation entering unit k
  (a `stop_gradient` boundary), the units' updated BatchNorm statistics and
  the Hebbian directions of their kernels ({} for the frozen rule or when
  `hebbian` is False: then the units only run forward).
  """
  interceptor = hebbian_interceptor(local_cfg)

  def local_forward(params, batch_stats, x, k: int, hebbian: bool = True):
    hebbian_on = hebbian and not local_rules.is_frozen(local_cfg.rule)
    mutable = ['batch_stats', 'hebbian'] if hebbian_on else ['batch_stats']
    with (nn.intercept_methods(interceptor) if hebbian_on
          else contextlib.nullcontext()):
      h, new_vars = model.apply(
          {'params': params, 'batch_stats': batch_stats}, x, train=True,
          start=0, stop=k, mutable=mutable)
    # No gradient flows into units [0, k): their backward pass is never built.
    return (jax.lax.stop_gradient(h),
            partition.split(dict(new_vars['batch_stats']), k)[0],
            dict(new_vars.get('hebbian', {})))

  return local_forward


Rates = Dict[str, Any]


def step_rates(config: ml_collections.ConfigDict, lr: Any = None) -> Rates:
  """The learning rates a train step takes as data, from SGD's scheduled
  rate `lr` (a scalar, or one per step: an array; None: the peak,
  config.optim.learning_rate, as a constant schedule gives).

  {'lr': SGD's rate, 'local_lr': the local rule's before the weak-
  supervision factor (which the step computes): config.local.learning_rate
  x hebbian_every, times lr / peak with follow_sgd_schedule}, float32.
  Being data, not constants of the program, every budget, peak and
  schedule of a run config shares one compiled step.
  """
  peak = config.optim.learning_rate
  lr = np.asarray(peak if lr is None else lr, np.float64)
  local = config.local
  local_lr = np.full_like(lr, local.learning_rate * local.hebbian_every)
  if local.follow_sgd_schedule:
    local_lr = local_lr * lr / peak
  with np.errstate(over='ignore'):  # a huge local rate: inf, as it runs
    return {'lr': lr.astype(np.float32),
            'local_lr': local_lr.astype(np.float32)}


def make_train_step(model: base.Network, tx: optax.GradientTransformation,
                    config: ml_collections.ConfigDict) -> Callable:
  """Builds `train_step(state, batch, k, hebbian, *, rates) -> (state,
  metrics)`.

  The step is one traced function read top to bottom (local forward, SGD
  loss and grads, optimizer, Hebbian update), so that the boundary between
  the two partitions stays in view; only its measurements are a helper
  (`_step_metrics`).

  `k` and `hebbian` are static; `rates` (`step_rates`: this step's SGD and
  local learning rates) is data, so the program does not depend on the
  learning-rate schedule. With `hebbian=False` the local units only run
  forward (no Hebbian GEMM); `config.local.hebbian_every = m` has the trainer
  run the Hebbian step every m-th step and scales the local learning rate by
  m, so the update per epoch stays the same while the Hebbian cost is
  amortized.

  Args:
    model: the unit sequence.
    tx: the per-unit update direction (`optim.direction`).
    config: the run config; reads `config.local` and
      `config.optim.label_smoothing` and `ema_decay`.
  """
  local_cfg = config.local
  smoothing = config.optim.label_smoothing
  ema_decay = config.optim.ema_decay
  local_forward = make_local_forward(model, local_cfg)
  unit_names = model.unit_names

  def train_step(state: TrainState, batch: Batch, k: int,
                 hebbian: bool = True, *,
                 rates: Rates) -> Tuple[TrainState, Metrics]:
    local_p, sgd_p = partition.split(state.params, k)
    local_bs, sgd_bs = partition.split(state.batch_stats, k)
    x = batch['image']
    directions = {}
    if k > 0:
      x, local_bs, directions = local_forward(local_p, local_bs, x, k,
                                              hebbian)

    def loss_fn(sgd_params):
      logits, new_vars = model.apply(
          {'params': sgd_params, 'batch_stats': sgd_bs}, x, train=True,
          start=k, mutable=['batch_stats'])
      loss = cross_entropy(logits, batch['label'], batch['mask'], smoothing)
      return loss, (logits, new_vars['batch_stats'])

    (loss, (logits, new_sgd_bs)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(sgd_p)
    new_sgd_bs = partition.split(dict(new_sgd_bs), k)[1]

    lr = rates['lr']
    new_sgd_p, new_opt, update_norms = {}, dict(state.opt_state), {}
    for name, g in grads.items():
      upd, new_opt[name] = tx.update(g, state.opt_state[name], sgd_p[name])
      new_sgd_p[name] = jax.tree.map(lambda p, u: p - lr * u, sgd_p[name], upd)
      update_norms[name] = lr * optax.tree.norm(upd)

    # The factor compares this loss with the average of the previous ones.
    ws, loss_ema = local_rules.weak_supervision(
        local_cfg.weak_supervision, loss, state.loss_ema,
        local_cfg.loss_ema_decay, local_cfg.ws_power)
    local_lr = rates['local_lr'] * ws
    if directions:
      local_p = _apply_hebbian(local_p, directions, local_lr,
                               local_cfg.normalize)

    new_state = state.replace(
        step=state.step + 1,
        params=partition.merge(local_p, new_sgd_p),
        batch_stats=partition.merge(local_bs, new_sgd_bs),
        opt_state=new_opt,
        loss_ema=loss_ema)
    if ema_decay > 0:
      new_state = new_state.replace(ema=ema_update(
          state.ema, {'params': new_state.params,
                      'batch_stats': new_state.batch_stats},
          state.step, ema_decay))
    return new_state, _step_metrics(
        loss, logits, batch, lr,
        local_lr if directions else jnp.zeros(()), ws, grads, update_norms,
        unit_names)

  return train_step


def _step_metrics(loss, logits, batch: Batch, lr, local_lr, ws, grads,
                  update_norms, unit_names) -> Metrics:
  """The train step's measurements (kept on the device by the loop)."""
  zero = jnp.zeros((), jnp.float32)
  return {
      'loss': loss,
      'correct': jnp.sum((jnp.argmax(logits, -1) == batch['label'])
                         * batch['mask']),
      'count': jnp.sum(batch['mask']),
      'learning_rate': lr, 'local_lr': local_lr, 'ws_factor': ws,
      # Per-unit gradient norms (0 for local units): AutoFreeze-style
      # selection reads them.
      'grad_norms': jnp.stack([optax.tree.norm(grads[n]) if n in grads
                               else zero for n in unit_names]),
      # Per-unit size of this step's SGD update (0 for local units): the
      # dynamic mode's consistency statistic sums them.
      'update_norms': jnp.stack([update_norms.get(n, zero)
                                 for n in unit_names])}


# Test-time augmentation at evaluation (config.eval_tta).
TTA_MODES = ('none', 'flip', 'flip_shift')


def mirror(x: jax.Array) -> jax.Array:
  """Horizontal flip of a (B, H, W, C) batch."""
  return x[:, :, ::-1, :]


def diagonal_shifts(x: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """(B, H, W, C) -> its two 1-px diagonal translations, reflect-padded.

  The content moves down-right by one pixel, then up-left by one (airbench's
  translate TTA: reflect-pad by 1, crop [0:H, 0:W] and [2:H+2, 2:W+2]).
  """
  h, w = x.shape[1:3]
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode='reflect')
  return padded[:, :h, :w], padded[:, 2:h + 2, 2:w + 2]


def tta_logits(logits_of: Callable[[jax.Array], jax.Array], x: jax.Array,
               mode: str, plain: jax.Array) -> jax.Array:
  """The test-time-augmented float32 logits of images `x` (normalized).

  airbench's definition (KellerJordan/cifar10-airbench, airbench94.py
  `infer_mirror_translate`): 'flip' is the mean of the logits of the image
  and of its mirror; 'flip_shift' weighs that pair 1/2 and the same pair of
  each of the two diagonal shifts (`diagonal_shifts`) 1/4: six views.
  `plain` (the logits of `x`, float32) is reused, not recomputed.
  """
  def mirrored(view, logits=None):
    logits = logits_of(view) if logits is None else logits
    return 0.5 * logits + 0.5 * logits_of(mirror(view))

  out = mirrored(x, plain)
  if mode == 'flip_shift':
    down, up = diagonal_shifts(x)
    out = 0.5 * out + 0.25 * (mirrored(down) + mirrored(up))
  return out


def make_eval_step(model: base.Network, tta: str = 'none') -> Callable:
  """`eval_step(params, batch_stats, batch) -> metrics` with running averages.

  Sums over the batch's real examples: 'loss_sum', 'correct' and 'count',
  and with `tta` (a `TTA_MODES` name other than 'none') also 'tta_loss_sum'
  and 'tta_correct' of the test-time-augmented logits, from the same pass;
  the plain sums are computed exactly as without TTA.
  """
  def eval_step(params, batch_stats, batch: Batch) -> Metrics:
    def logits_of(x):
      return model.apply({'params': params, 'batch_stats': batch_stats},
                         x, train=False).astype(jnp.float32)

    logits = model.apply({'params': params, 'batch_stats': batch_stats},
                         batch['image'], train=False)
    mask = batch['mask']
    losses = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), batch['label'])
    correct = jnp.sum((jnp.argmax(logits, -1) == batch['label']) * mask)
    metrics = {'loss_sum': jnp.sum(losses * mask), 'correct': correct,
               'count': jnp.sum(mask)}
    if tta != 'none':
      augmented = tta_logits(logits_of, batch['image'], tta,
                             logits.astype(jnp.float32))
      metrics['tta_loss_sum'] = jnp.sum(
          optax.softmax_cross_entropy_with_integer_labels(
              augmented, batch['label']) * mask)
      metrics['tta_correct'] = jnp.sum(
          (jnp.argmax(augmented, -1) == batch['label']) * mask)
    return metrics

  return eval_step


