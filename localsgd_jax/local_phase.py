"""What the local rule does to each local unit over its local phase.

A unit's local phase starts when the transition index k passes it (the step
before it is the unit's last SGD step) and lasts while it stays below k.
`LocalPhase` keeps, on the device, a copy of each local unit's kernels (the
Conv/Dense 'kernel' leaves: the only parameters the local rule updates)
taken when its phase starts; at each epoch end `measure` compares the
kernels with that copy:

  local_filter_angle (primary): the mean, over the unit's output filters
    (the last axis of every kernel; a filter is kernel[..., j] flattened
    over (kh, kw, C_in)), of the angle in radians between the filter now and
    at the start of the phase. With `config.local.normalize` each filter
    keeps its norm, so this angle is all the rule can change about it.
  local_filter_change: ||W_now - W_start|| / ||W_start||, Frobenius norms
    over all of the unit's kernels together.

Both are exactly 0 for the frozen rule (both are computed from the change
W_now - W_start; `filter_angles` has the formula), and the angle resolves
the small rotations a local learning rate of 1e-4 makes (~1e-3 rad), which
arccos of the cosine cannot in float32.

The copies survive a checkpoint (`start`, saved as the checkpoint's
'local_start' item), so a resumed run measures from the same start.
Nothing here runs per step: a copy when k changes, one small jitted
reduction and one fetch per epoch.
"""
from collections import abc
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from localsgd_jax.models.base import unit_index

Tree = Dict[str, Any]


def kernels(tree: Tree) -> Tree:
  """The 'kernel' leaves of a parameter tree, in their nesting."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, abc.Mapping):
      sub = kernels(value)
      if sub:
        out[key] = sub
    elif key == 'kernel':
      out[key] = value
  return out


def _filters(kernel: jax.Array) -> jax.Array:
  """(..., C_out) kernel -> (C_out, fan_in) float32 filter vectors."""
  k = kernel.astype(jnp.float32)
  return k.reshape(-1, k.shape[-1]).T


def filter_angles(now: jax.Array, start: jax.Array) -> jax.Array:
  """Per output filter, the angle (radians) between `now` and `start`.

  From the change d = now - start split along and across the start filter
  b: atan2(|d - (d.b^) b^|, |b| + d.b^), b^ = b / |b|. Exactly 0 when the
  filter did not change (d = 0 bit for bit) and accurate for small angles,
  unlike arccos of the cosine (float32 cannot resolve angles below ~3e-4
  rad that way) or normalizing both filters (their norms may round apart).
  """
  a, b = _filters(now), _filters(start)
  d = a - b
  b_norm = jnp.linalg.norm(b, axis=1)
  b_hat = b / jnp.maximum(b_norm, 1e-30)[:, None]
  along = jnp.sum(d * b_hat, axis=1)
  across = jnp.linalg.norm(d - along[:, None] * b_hat, axis=1)
  return jnp.arctan2(across, b_norm + along)


@jax.jit
def _unit_change(now: Tree, start: Tree) -> Dict[str, Tuple[jax.Array, ...]]:
  """Per unit: (mean filter angle, ||now - start|| / ||start||)."""
  out = {}
  for name in start:
    pairs = list(zip(jax.tree.leaves(now[name]),
                     jax.tree.leaves(start[name])))
    angles = jnp.concatenate([filter_angles(a, b) for a, b in pairs])
    diff = sum(jnp.sum(jnp.square(a.astype(jnp.float32)
                                  - b.astype(jnp.float32)))
               for a, b in pairs)
    ref = sum(jnp.sum(jnp.square(b.astype(jnp.float32))) for _, b in pairs)
    out[name] = (jnp.mean(angles),
                 jnp.sqrt(diff) / jnp.maximum(jnp.sqrt(ref), 1e-30))
  return out


_copy = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))


class LocalPhase:
  """The kernels of each local unit at the start of its local phase."""

  def __init__(self):
    self.start: Tree = {}  # unit name -> its kernels (device arrays)

  def begin(self, k: int, params: Tree) -> None:
    """Units [0, k) are local from now: copy the kernels of those that just
    became local; forget those back on SGD (a later phase starts anew).

    Call it before the first step at k: `params` then hold the units' last
    SGD update. A no-op (no device work) while k stays the same.
    """
    for name in [n for n in self.start if unit_index(n) >= k]:
      del self.start[name]
    new = {}
    for name, unit in params.items():
      if unit_index(name) < k and name not in self.start:
        tracked = kernels(unit)
        if tracked:
          new[name] = tracked
    if new:
      # A real copy: the train step donates (overwrites) the params.
      self.start.update(_copy(new))

  def load(self, start: Optional[Tree]) -> None:
    """The copies restored from a checkpoint (None: it held none)."""
    self.start = dict(start or {})

  def measure(self, params: Tree, num_units: int
              ) -> Dict[str, List[Optional[float]]]:
    """Per unit, the change since the start of its local phase (None for SGD
    units): 'local_filter_angle' and 'local_filter_change' (module doc)."""
    angle: List[Optional[float]] = [None] * num_units
    change: List[Optional[float]] = [None] * num_units
    if self.start:
      now = {n: kernels(params[n]) for n in self.start}
      for name, (a, c) in jax.device_get(
          _unit_change(now, self.start)).items():
        angle[unit_index(name)] = float(a)
        change[unit_index(name)] = float(c)
    return {'local_filter_angle': angle, 'local_filter_change': change}


def local_rule_steps(segments: Sequence[Tuple[int, int]], steps: int,
                     hebbian_every: int, frozen: bool) -> np.ndarray:
  """Which of an epoch's `steps` applied the local rule, (steps,) bool.

  A step applies it when its k > 0, the rule is not frozen and it is a
  Hebbian step (step in the epoch % hebbian_every == 0), as in
  `loop.TrainLoop.run_epoch`. `segments`: (first step in the epoch, k).
  """
  mask = np.zeros(steps, bool)
  if frozen:
    return mask
  bounds = [s for s, _ in segments[1:]] + [steps]
  for (first, k), end in zip(segments, bounds):
    if k > 0:
      mask[first:end] = True
  mask &= np.arange(steps) % hebbian_every == 0
  return mask


def ws_stats(ws_factor: np.ndarray, mask: np.ndarray) -> Dict[str, Any]:
  """The weak-supervision factor over the steps that applied the local rule.

  'ws_factor_local': its mean; 'ws_below_1_fraction': the fraction of those
  steps with a factor below 1 (a local rate actually shrunk, or reversed by
  'sign'); both None without such steps. 'local_rule_steps': their number
  (the weight of the epoch in the run's summary).
  """
  ws = np.asarray(ws_factor, np.float64)[mask]
  n = int(ws.size)
  return {'ws_factor_local': float(np.mean(ws)) if n else None,
          'ws_below_1_fraction': float(np.mean(ws < 1.0)) if n else None,
          'local_rule_steps': n}


def epoch_stats(phase: LocalPhase, params: Tree, num_units: int,
                ws_factor: np.ndarray, segments: Sequence[Tuple[int, int]],
                hebbian_every: int, frozen: bool) -> Dict[str, Any]:
  """The epoch row's local-rule fields: `LocalPhase.measure` and `ws_stats`.

  `ws_factor` holds the epoch's steps (as many as it ran).
  """
  mask = local_rule_steps(segments, len(ws_factor), hebbian_every, frozen)
  return {**phase.measure(params, num_units), **ws_stats(ws_factor, mask)}

