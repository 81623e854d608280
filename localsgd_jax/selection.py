"""Learning mode selection: the transition index of each epoch.

A host-side state machine, plain Python (no JAX): after each period of
training (an epoch, or with `every_steps` > 0 in dynamic and gradnorm modes
every that many steps) it receives the period's statistics and decides the
transition index k of the next period. Units [0, k) then learn locally, units
[k, L) by SGD. Its state is a JSON-able dict saved in every checkpoint.
The period's statistics come from the train loop's per-step buffers through
`period_stats` (numpy).

Modes:
  sgd:      k = 0 always.
  static:   a scheduler function of the epoch (warm-up, then a ramp to k_max)
            or an explicit table.
  dynamic:  from the weight updates of the transition unit. After each
            period the trainer reports, per unit, `statistic`:
            'consistency' (the default): the net weight change over the
            period over the path its steps travelled (the sum of the
            per-step update norms), in [0, 1]. Both lengths scale with the
            learning rate, so a decaying schedule neither fakes nor hides
            convergence: it falls as the steps start to cancel out.
            'update_per_lr': the relative weight change over the period
            divided by the mean learning rate, scaled to a whole epoch's
            steps (measured to rise again as a cosine learning rate goes to
            0, so late in training units never settle).
            A unit has *settled* when its statistic has fallen to
            `settle_fraction` of its own peak.
            The boundary advances over consecutive settled units starting at
            the transition unit, at most `max_advance` per decision; guards:
            no move during `warmup_epochs` or within `min_hold_epochs` of the
            last move, never past k_max; and with `retreat`, if the training
            loss rose by more than `retreat_tolerance` (relative) over the
            previous period, the boundary steps back one unit.
  gradnorm: AutoFreeze / PipeTransformer-style freezing criterion: a unit has
            settled when the relative change of its period-mean gradient norm
            between the last two periods is at most `gradnorm_threshold`; the
            boundary advances over such units with the same guards (no
            retreat). Used with `local.rule=frozen` it is the AutoFreeze peer.
"""
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from localsgd_jax.errors import UserError

MODES = ('sgd', 'static', 'dynamic', 'gradnorm')
STATISTICS = {'consistency': 'consistency', 'update_per_lr': 'update_ratios'}
# config.selection.ramp: the share of k_max reached at progress p in (0, 1].
_RAMPS = {'linear': lambda p: p,
          'cosine': lambda p: (1 - math.cos(math.pi * p)) / 2,
          'cubic': lambda p: p ** 3,
          'step': lambda p: 1.0}
RAMPS = tuple(_RAMPS)


def parse_table(table: str) -> List[tuple]:
  """'0:0,3:2,6:5' -> [(0, 0), (3, 2), (6, 5)], sorted by epoch.

  Raises:
    UserError: an entry is not "epoch:k", or an epoch is given twice (which
      k it would use is ambiguous).
  """
  ks = {}
  for item in filter(None, (t.strip() for t in table.split(','))):
    try:
      epoch, k = (int(v) for v in item.split(':'))
    except ValueError:
      raise UserError(f'config.selection.table entry {item!r} is not '
                      '"epoch:k" (e.g. --config.selection.table=0:0,3:2)'
                      ) from None
    if epoch in ks:
      raise UserError(f'config.selection.table: epoch {epoch} is given '
                      f'twice ({epoch}:{ks[epoch]} and {epoch}:{k}); give '
                      'each epoch once')
    ks[epoch] = k
  return sorted(ks.items())


def k_for_flop_share(unit_flops: Sequence[float], share: float) -> int:
  """The largest k whose units [0, k) hold at most `share` of the FLOPs.

  `unit_flops` are per-unit forward FLOPs in unit order; the head (the last
  unit) is never local, so k is at most len(unit_flops) - 1. A share
  expresses "the early half of the network" independently of depth: e.g.
  0.6 gives 6 of ResNet-20's 11 units and 5 of ResNet-18's 10.
  """
  total = float(sum(unit_flops))
  k, held = 0, 0.0
  for flops in unit_flops[:-1]:
    held += flops
    if held > share * total * (1 + 1e-9):
      break
    k += 1
  return k


def static_schedule(epoch: int, *, k_max: int, warmup_epochs: int,
                    ramp_epochs: int, ramp: str) -> int:
  """The scheduler function: SGD warm-up, then a ramp up to k_max.

  Args:
    epoch: 0-based epoch.
    k_max: the largest transition index.
    warmup_epochs: epochs [0, warmup_epochs) use k = 0.
    ramp_epochs: the ramp reaches k_max after this many epochs past warm-up.
    ramp: 'linear', 'cosine' (slow start and end), 'cubic' (FreezeOut's cubic
      scaling: slow start, fast end) or 'step' (straight to k_max).
  """
  if epoch < warmup_epochs:
    return 0
  p = min(1.0, (epoch - warmup_epochs + 1) / max(1, ramp_epochs))
  return int(math.floor(_RAMPS[ramp](p) * k_max + 1e-9))


class Selector:
  """Decides the transition index epoch by epoch.

  Usage: `k = selector.transition(epoch)` before an epoch, then
  `selector.observe(epochs_done, stats)` after it (and, when
  `selector.every_steps` > 0, after every that many steps within it, followed
  by `selector.transition(epoch)` for the k of the next steps).
  """

  def __init__(self, cfg, num_units: int, num_epochs: int,
               unit_flops: Optional[Sequence[float]] = None):
    """`unit_flops` (per-unit forward FLOPs, `TrainLoop.unit_flops`) is
    needed when `cfg.k_max_flop_share` > 0, which then sets k_max."""
    self.cfg = cfg
    self.num_units = num_units
    self.num_epochs = num_epochs
    share = cfg.k_max_flop_share
    # The share of the forward FLOPs held by units [0, k_max), when chosen
    # by share (None otherwise).
    self.k_max_flops = None
    if share > 0:  # config_validation refuses it with k_max >= 0
      if unit_flops is None or len(unit_flops) != num_units:
        raise ValueError('k_max_flop_share needs the FLOPs of every unit')
      self.k_max = k_for_flop_share(unit_flops, share)
      self.k_max_flops = sum(unit_flops[:self.k_max]) / sum(unit_flops)
    else:
      self.k_max = num_units - 1 if cfg.k_max < 0 else cfg.k_max
    if not 0 <= self.k_max <= num_units - 1:
      raise UserError(
          f'config.selection.k_max={cfg.k_max} is out of range: the model '
          f'has {num_units} units, so k_max must be in [0, {num_units - 1}] '
          '(the head always trains by SGD), or -1 for all but the head')
    # Static schedules are functions of the epoch: only the modes driven by
    # statistics decide within an epoch.
    self.every_steps = cfg.every_steps if self.adaptive else 0
    self.table = parse_table(cfg.table) if cfg.table else []
    for _, k in self.table:
      if not 0 <= k <= num_units - 1:
        raise UserError(f'config.selection.table has k={k}, outside '
                        f'[0, {num_units - 1}]')
    self.history: List[Dict[str, Any]] = []
    self.k = 0                   # dynamic / gradnorm: the current boundary
    self.last_move_epoch = None  # epochs done when k last changed

  @property
  def adaptive(self) -> bool:
    """Whether k follows the training statistics (dynamic, gradnorm)."""
    return self.cfg.mode in ('dynamic', 'gradnorm')

  def transition(self, epoch: int) -> int:
    """The transition index to use for `epoch`."""
    if self.cfg.mode == 'sgd':
      return 0
    if self.adaptive:
      return self.k
    if self.table:
      k = 0
      for start, value in self.table:
        if epoch >= start:
          k = value
      return k
    ramp_epochs = self.cfg.ramp_epochs
    if ramp_epochs < 0:
      ramp_epochs = max(1, self.num_epochs - self.cfg.warmup_epochs)
    return static_schedule(epoch, k_max=self.k_max,
                           warmup_epochs=self.cfg.warmup_epochs,
                           ramp_epochs=ramp_epochs, ramp=self.cfg.ramp)

  def local_from_init(self) -> Optional[str]:
    """Why units may learn locally before one whole epoch of SGD, or None.

    Local units keep the filters they have when they go local; from random
    initialization that is rarely wanted (the configs start with at least
    one SGD epoch), so train_lib warns when a config asks for it.
    """
    if self.k_max == 0 or self.cfg.mode == 'sgd':
      return None
    if self.adaptive:
      if self.every_steps and self.cfg.warmup_epochs < 1:
        return (f'config.selection.warmup_epochs={self.cfg.warmup_epochs} '
                f'with every_steps={self.every_steps}: k may move within '
                'the first epoch')
      return None
    k = self.transition(0)
    if k == 0:
      return None
    what = ('config.selection.table starts with k > 0' if self.table else
            f'config.selection.warmup_epochs={self.cfg.warmup_epochs}')
    return f'{what}: units [0, {k}) learn locally from the first step'

  def observe(self, epochs_done: float, stats: Dict[str, Any]) -> str:
    """Records a finished period's statistics and decides the next k.

    Args:
      epochs_done: training progress at the end of the period, in epochs
        (e.g. 3 after the third epoch, 2.5 half way through the third).
      stats: at least 'train_loss'; for dynamic mode 'update_ratios' and for
        gradnorm mode 'grad_norms': one number per unit (None or NaN where
        not measured, e.g. for local units).

    Returns:
      Why k changed or held ('advance', 'retreat', 'hold', 'warmup', ...).
    """
    self.history.append({'epochs_done': epochs_done, **stats})
    if not self.adaptive:
      return 'schedule'
    reason, new_k = self._decide(epochs_done)
    if new_k != self.k:
      self.k, self.last_move_epoch = new_k, epochs_done
    self.history[-1]['decision'] = reason
    return reason

  def _decide(self, epochs_done: float):
    cfg = self.cfg
    if epochs_done < cfg.warmup_epochs:
      return 'warmup', self.k
    if (cfg.mode == 'dynamic' and cfg.retreat and self.k > 0
        and len(self.history) >= 2):
      prev, cur = self.history[-2]['train_loss'], self.history[-1]['train_loss']
      if cur > prev * (1 + cfg.retreat_tolerance):
        return 'retreat', self.k - 1
    if (self.last_move_epoch is not None
        and epochs_done - self.last_move_epoch < cfg.min_hold_epochs):
      return 'hold', self.k
    settled = (self._update_settled if cfg.mode == 'dynamic'
               else self._gradnorm_settled)
    k = self.k
    while k < self.k_max and k - self.k < cfg.max_advance and settled(k):
      k += 1
    return ('advance' if k > self.k else 'hold'), k

  def _series(self, key: str, unit: int) -> List[float]:
    """The finite values of `key[unit]` over the history, oldest first."""
    out = []
    for h in self.history:
      values = h.get(key)
      if values is not None and unit < len(values):
        v = values[unit]
        if v is not None and math.isfinite(v):
          out.append(v)
    return out

  def _update_settled(self, unit: int) -> bool:
    series = self._series(STATISTICS[self.cfg.statistic], unit)
    return bool(series) and series[-1] <= self.cfg.settle_fraction * max(
        series)

  def _gradnorm_settled(self, unit: int) -> bool:
    series = self._series('grad_norms', unit)
    if len(series) < 2 or series[-2] <= 0:
      return False
    return abs(series[-1] - series[-2]) / series[-2] <= (
        self.cfg.gradnorm_threshold)

  def state_dict(self) -> Dict[str, Any]:
    return {'history': list(self.history), 'k': self.k,
            'last_move_epoch': self.last_move_epoch}

  def load_state_dict(self, state: Optional[Dict[str, Any]]) -> None:
    state = state or {}
    self.history = list(state.get('history', []))
    self.k = state.get('k', 0)
    self.last_move_epoch = state.get('last_move_epoch')


def period_stats(host: Dict[str, np.ndarray],
                 change: Sequence[Tuple[float, float]], k: int,
                 steps_per_epoch: int) -> Dict[str, Any]:
  """What the selector sees of one period (`Selector.observe`'s stats).

  Args:
    host: the period's rows of the per-step metric buffers (the train
      loop's: 'loss', 'learning_rate', 'grad_norms', 'update_norms').
    change: per unit, in order, (||W_end - W_start||, ||W_start||) over the
      period.
    k: the period's transition index.
    steps_per_epoch: steps of a whole epoch.

  Returns:
    Per unit (None for local ones):
      'update_ratios': the relative weight change over the period per unit
        of mean learning rate, scaled to a whole epoch's steps so that
        periods of any length compare;
      'consistency': the net weight change over the period divided by the
        path its steps travelled (sum of the per-step update norms), in
        [0, 1]: 1 while every step pushes the same way, towards 0 once the
        steps cancel out. A ratio of two lengths that both scale with the
        learning rate, so a decaying schedule leaves it alone;
      'grad_norms': the mean gradient norm;
    and the period's mean loss.
  """
  steps = len(host['loss'])
  mean_lr = float(np.mean(host['learning_rate']))
  scale = steps_per_epoch / steps / max(mean_lr, 1e-12)
  grad_norms = np.mean(host['grad_norms'], axis=0)
  paths = np.sum(host['update_norms'], axis=0)
  units = range(len(grad_norms))
  net = list(change)
  return {
      'transition': k,
      'train_loss': float(np.mean(host['loss'])),
      'update_ratios': [
          float(d / max(w, 1e-12)) * scale if u >= k else None
          for u, (d, w) in zip(units, net)],
      'consistency': [
          float(min(1.0, d / paths[u])) if u >= k and paths[u] > 0 else None
          for u, (d, _) in zip(units, net)],
      'grad_norms': [float(g) if u >= k else None
                     for u, g in enumerate(grad_norms)],
  }
