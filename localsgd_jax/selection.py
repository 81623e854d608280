"""Learning mode selection: the transition index of each epoch.

A host-side state machine, plain Python (no JAX): between epochs it receives
that epoch's statistics and decides the transition index k of the next one.
Units [0, k) then learn locally, units [k, L) by SGD. Its state is a JSON-able
dict saved in every checkpoint.
"""
import math
from typing import Any, Dict, List, Optional

from localsgd_jax.errors import UserError

MODES = ('sgd', 'static')
RAMPS = ('linear', 'cosine', 'cubic', 'step')


def parse_table(table: str) -> List[tuple]:
  """'0:0,3:2,6:5' -> [(0, 0), (3, 2), (6, 5)], sorted by epoch."""
  pairs = []
  for item in filter(None, (t.strip() for t in table.split(','))):
    try:
      epoch, k = (int(v) for v in item.split(':'))
    except ValueError:
      raise UserError(f'config.selection.table entry {item!r} is not '
                      '"epoch:k" (e.g. --config.selection.table=0:0,3:2)'
                      ) from None
    pairs.append((epoch, k))
  return sorted(pairs)


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
  if ramp == 'linear':
    frac = p
  elif ramp == 'cosine':
    frac = (1 - math.cos(math.pi * p)) / 2
  elif ramp == 'cubic':
    frac = p ** 3
  elif ramp == 'step':
    frac = 1.0
  else:
    raise UserError(f'unknown config.selection.ramp={ramp!r}; choose one of '
                    f'{", ".join(RAMPS)}')
  return int(math.floor(frac * k_max + 1e-9))


class Selector:
  """Decides the transition index epoch by epoch.

  Usage: `k = selector.transition(epoch)` before an epoch, then
  `selector.observe(epoch, stats)` after it.
  """

  def __init__(self, cfg, num_units: int, num_epochs: int):
    self.cfg = cfg
    self.num_units = num_units
    self.num_epochs = num_epochs
    if cfg.mode not in MODES:
      raise UserError(f'unknown config.selection.mode={cfg.mode!r}; choose '
                      f'one of {", ".join(MODES)}')
    self.k_max = num_units - 1 if cfg.k_max < 0 else cfg.k_max
    if not 0 <= self.k_max <= num_units - 1:
      raise UserError(
          f'config.selection.k_max={cfg.k_max} is out of range: the model '
          f'has {num_units} units, so k_max must be in [0, {num_units - 1}] '
          '(the head always trains by SGD), or -1 for all but the head')
    self.table = parse_table(cfg.table) if cfg.table else []
    for _, k in self.table:
      if not 0 <= k <= num_units - 1:
        raise UserError(f'config.selection.table has k={k}, outside '
                        f'[0, {num_units - 1}]')
    self.history: List[Dict[str, Any]] = []

  def transition(self, epoch: int) -> int:
    """The transition index to use for `epoch`."""
    if self.cfg.mode == 'sgd':
      return 0
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

  def observe(self, epoch: int, stats: Dict[str, Any]) -> None:
    """Records the statistics of a finished epoch."""
    self.history.append({'epoch': epoch, **stats})

  def state_dict(self) -> Dict[str, Any]:
    return {'history': list(self.history)}

  def load_state_dict(self, state: Optional[Dict[str, Any]]) -> None:
    self.history = list((state or {}).get('history', []))
