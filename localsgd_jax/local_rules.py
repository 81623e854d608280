"""Localized (Hebbian) learning rules: pure functions of arrays.

A layer computes `y = f(x; W)`, linear in its kernel W. Its Hebbian term is the
weight-shaped correlation of the layer's input with its post-synaptic activity
`a`, averaged over the batch and the spatial positions:

    corr = contract(a) / n,   contract = transpose of (W -> f(x; W)),

which is exactly the contraction XLA uses for a filter gradient, with the
activity in place of the error: ONE GEMM per layer. The rules below differ only
in the cheap stabilising term that keeps the kernels bounded:

  hebb: corr                          (plain; use with `normalize=True`)
  oja:  corr - W * <a_j^2>            (Oja: each filter decays towards unit norm)
  gha:  corr - W @ triu(<a a^T>)      (Sanger's generalized Hebbian algorithm:
                                       filter j also unlearns what filters
                                       1..j-1 already extract, so the filters
                                       decorrelate instead of all collapsing on
                                       the first principal direction)

The decorrelating term of gha costs a (C_out x C_out) product per layer, small
beside the (k*k*C_in x C_out) correlation.
"""
from typing import Callable, Tuple

import jax
import jax.numpy as jnp

RULES = ('hebb', 'oja', 'gha')  # the rules `hebbian_direction` computes
# The freezing mode (FreezeOut, AutoFreeze): the local units run forward only,
# i.e. a local unit with learning rate 0. It is a value of `config.local.rule`
# but not a rule function: the step skips the Hebbian pass (`is_frozen`).
FROZEN = 'frozen'
# Every value `config.local.rule` accepts.
RULE_NAMES = RULES + (FROZEN,)
ACTIVITIES = ('conv', 'bn', 'bn_relu')

_EPS = 1e-5


def is_frozen(rule: str) -> bool:
  """Whether `config.local.rule` names the freezing mode, not a rule."""
  return rule == FROZEN


def post_synaptic_activity(y: jax.Array, kind: str) -> jax.Array:
  """The activity a layer's output contributes to its Hebbian update.

  Args:
    y: the layer's output, channels last, (..., C).
    kind: 'conv' uses the raw output; 'bn' standardizes each channel over batch
      and positions (what the following BatchNorm does, without its affine
      part); 'bn_relu' additionally keeps only positive activity.

  Returns:
    An array shaped like `y`, in float32.
  """
  y = y.astype(jnp.float32)
  if kind == 'conv':
    return y
  axes = tuple(range(y.ndim - 1))
  mean = jnp.mean(y, axis=axes)
  var = jnp.var(y, axis=axes)
  a = (y - mean) * jax.lax.rsqrt(var + _EPS)
  if kind == 'bn_relu':
    a = jax.nn.relu(a)
  return a


def hebbian_direction(rule: str, kernel: jax.Array,
                      contract: Callable[[jax.Array], jax.Array],
                      activity: jax.Array, *, grouped: bool = False
                      ) -> jax.Array:
  """The learning-rate-free Hebbian update of one kernel.

  Args:
    rule: one of RULES.
    kernel: (..., C_in, C_out) kernel of a conv (kh, kw, C_in, C_out) or dense
      (C_in, C_out) layer.
    contract: the linear map from an output-shaped array to a kernel-shaped one
      (transpose of the layer as a function of its kernel).
    activity: post-synaptic activity, shaped like the layer's output (..., C_out).
    grouped: True for grouped/depthwise convs, whose output channels see
      different inputs: there gha falls back to its diagonal (Oja) term.

  Returns:
    A kernel-shaped float32 array: the update direction.
  """
  c_out = activity.shape[-1]
  flat = activity.reshape(-1, c_out)  # (N * positions, C_out)
  n = flat.shape[0]
  corr = contract(activity).astype(jnp.float32) / n
  w = kernel.astype(jnp.float32)
  if rule == 'hebb':
    return corr
  if rule == 'oja' or (rule == 'gha' and grouped):
    return corr - w * jnp.mean(jnp.square(flat), axis=0)
  if rule == 'gha':
    cov = flat.T @ flat / n  # (C_out, C_out)
    decay = w.reshape(-1, c_out) @ jnp.triu(cov)
    return corr - decay.reshape(w.shape)
  raise ValueError(f'unknown local rule {rule!r}; expected one of {RULES}')


def apply_update(kernel: jax.Array, direction: jax.Array, lr: jax.Array,
                 normalize: bool) -> jax.Array:
  """`kernel + lr * direction`, optionally keeping each filter's norm.

  Norm preservation rescales every output filter back to its norm before the
  update, so plain Hebbian growth cannot blow up the layer's scale (BatchNorm
  after a conv makes the scale irrelevant to the forward pass anyway). A
  filter too large for its sum of squares (above ~1e19 in float32, a very
  large local learning rate) has its norm taken after scaling by its
  largest entry, instead of overflowing to inf and turning the filter into
  zeros; an update that is itself inf or NaN stays so, for the run's finite
  check to stop.
  """
  new = kernel + lr * direction.astype(kernel.dtype)
  if normalize:
    axes = tuple(range(kernel.ndim - 1))
    old_norm = jnp.sqrt(jnp.sum(jnp.square(kernel), axis=axes))
    new_norm = jnp.sqrt(jnp.sum(jnp.square(new), axis=axes))
    largest = jnp.max(jnp.abs(new), axis=axes)
    scaled_norm = largest * jnp.sqrt(jnp.sum(
        jnp.square(new / jnp.maximum(largest, 1e-30)), axis=axes))
    new_norm = jnp.where(jnp.isinf(new_norm), scaled_norm, new_norm)
    new = new * (old_norm / jnp.maximum(new_norm, 1e-12))
  return new


def subsample_batch(x: jax.Array, y: jax.Array, fraction: float):
  """Every m-th example of the batch (m = round(1 / fraction)).

  A strided slice keeps the examples spread over the batch, so each data
  shard contributes equally when the batch is sharded over devices.
  """
  stride = max(1, int(round(1.0 / fraction)))
  if stride == 1:
    return x, y
  return x[::stride], y[::stride]


def weak_supervision_factor(mode: str, loss: jax.Array, reference: jax.Array,
                            power: float) -> jax.Array:
  """Scales the local learning rate by how the training loss is doing.

  'none': 1. 'scale': min(1, reference / loss) ** power: a loss above its
  reference shrinks the local updates. 'sign': +1 while the loss is at or
  below its reference, -1 (anti-Hebbian) above it. No GEMM: the loss is the
  one the SGD part already computed this step. `weak_supervision` gives the
  reference: the running average of the losses before this one.
  """
  if mode == 'none':
    return jnp.ones((), jnp.float32)
  ratio = reference / jnp.maximum(loss, 1e-12)
  if mode == 'scale':
    return jnp.minimum(1.0, ratio) ** power
  if mode == 'sign':
    return jnp.where(ratio >= 1.0, 1.0, -1.0).astype(jnp.float32)
  raise ValueError(f'unknown weak supervision mode {mode!r}')


def weak_supervision(mode: str, loss: jax.Array, loss_ema: jax.Array,
                     decay: float, power: float
                     ) -> Tuple[jax.Array, jax.Array]:
  """This step's weak-supervision factor and the updated loss average.

  The reference is the running average of the PREVIOUS losses, `loss_ema`
  before this step's loss enters it: the factor asks "is this loss above
  the recent losses?". (Until 2026-12 the reference was the average after
  the update, ema' = d ema + (1 - d) loss. That is below the loss exactly
  when ema is, so it shrank the same steps, but by a factor d r + (1 - d)
  instead of r = ema / loss: less, and never below 1 - d.)

  What "recent" means is `decay` (d): the average spans ~1 / (1 - d) steps.
  On a falling loss it lags above the current loss and the factor stays 1;
  it drops below 1 only when the loss rises by more than that lag, e.g.
  batch noise larger than the fall over the span (the epoch rows'
  `ws_below_1_fraction` says how often).

  Args:
    mode: 'none', 'scale' or 'sign' (`weak_supervision_factor`).
    loss: this step's training loss, float32 scalar.
    loss_ema: the average before it; NaN before the run's first step (the
      first factor is then 1 and the average starts at that loss).
    decay: the average's decay per step.
    power: 'scale' exponent.

  Returns:
    (factor, new loss_ema).
  """
  first = jnp.isnan(loss_ema)
  reference = jnp.where(first, loss, loss_ema)
  factor = weak_supervision_factor(mode, loss, reference, power)
  new_ema = jnp.where(first, loss, loss_ema * decay + (1 - decay) * loss)
  return factor, new_ema
