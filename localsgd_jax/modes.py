"""The comparison's modes: named sets of config overrides.

A mode is a set of config overrides (dotted keys) applied on top of the
comparison's config, so every peer runs under the same code, data, model and
optimizer, and differs only in how units leave the backward pass. Add a mode
here; `comparison` trains it and `report` tabulates it.
"""
import copy
import math
from typing import Any, Dict, List, Optional, Sequence

import ml_collections

from localsgd_jax.errors import UserError

MODES: Dict[str, Dict[str, Any]] = {
    # Plain SGD: the baseline every other mode is compared with.
    'sgd': {'selection.mode': 'sgd'},
    # LoCal+SGD, static scheduler, with the config's local rule.
    'static': {'selection.mode': 'static'},
    # LoCal+SGD, the transition index driven by the weight-update dynamics.
    'dynamic': {'selection.mode': 'dynamic'},
    # FreezeOut: units leave the backward pass on a cubic schedule; a frozen
    # unit is a local unit with learning rate 0.
    'freeze': {'selection.mode': 'static', 'selection.ramp': 'cubic',
               'local.rule': 'frozen'},
    # AutoFreeze / PipeTransformer: freeze a unit once its gradient norm
    # stops changing.
    'autofreeze': {'selection.mode': 'gradnorm', 'local.rule': 'frozen'},
    # Freezing on exactly the static schedule of LoCal+SGD: the same units
    # leave the backward pass at the same epochs with learning rate 0, so
    # any difference from 'static' is the local rule's doing.
    'static_frozen': {'selection.mode': 'static', 'local.rule': 'frozen'},
    # The Hebbian rule (oja) on exactly the static schedule, whatever rule
    # the config sets (configs/cifar10_resnet.py freezes: benchmarks/
    # RESULTS.md): the paper's LoCal+SGD against the default.
    'static_oja': {'selection.mode': 'static', 'local.rule': 'oja'},
    # Plain SGD given the training time of another mode (`match_mode`): the
    # same schedule shape compressed into fewer epochs, which
    # `comparison.run_comparison` sets from the finished runs' costs. The
    # baseline a skeptic asks for first.
    'sgd_same_time': {'selection.mode': 'sgd'},
}
SAME_TIME = 'sgd_same_time'
BASELINE = 'sgd'
# SGD at a budget of B epochs (compare.py --sgd_budgets): mode 'sgd@B', the
# same schedule shape compressed into B epochs, in WORKDIR/sgd@B/seed_<s>.
BUDGET_PREFIX = BASELINE + '@'


def budget_mode(epochs: float) -> str:
  """The mode (and folder) name of SGD at `epochs` epochs: 'sgd@12.6'."""
  return f'{BUDGET_PREFIX}{epochs:g}'


def parse_budget_mode(mode: str) -> Optional[float]:
  """The epochs of an 'sgd@B' mode name, None for any other name."""
  if not mode.startswith(BUDGET_PREFIX):
    return None
  try:
    return float(mode[len(BUDGET_PREFIX):])
  except ValueError:
    return None


def parse_budgets(budgets: Sequence[str]) -> List[float]:
  """'8,12.6' items -> [8.0, 12.6], ascending, repeats dropped.

  Raises:
    UserError: for a value that is not a number of epochs > 0.
  """
  out = []
  for item in (b.strip() for b in budgets):
    if not item:
      continue
    try:
      value = float(item)
    except ValueError:
      value = float('nan')
    if not value > 0 or math.isinf(value):
      raise UserError(f'--sgd_budgets: {item!r} is not a number of epochs '
                      '> 0 (e.g. --sgd_budgets=8,10,12.6)')
    out.append(round(value, 6))
  return sorted(set(out))


def length_fields(epochs: float) -> Dict[str, Any]:
  """num_epochs and last_epoch_fraction of a run of `epochs` epochs
  (12.6 -> 13 epochs, the last at 0.6 of its steps)."""
  num_epochs = max(1, math.ceil(round(epochs, 6)))
  return {'num_epochs': num_epochs,
          'last_epoch_fraction': float(round(epochs - (num_epochs - 1), 6))}


def parse_modes(modes: Sequence[str]) -> List[str]:
  """Checks mode names against MODES; drops repeats, keeps the order.

  Raises:
    UserError: for an empty list or an unknown name (the message lists the
      valid ones).
  """
  names = list(dict.fromkeys(m.strip() for m in modes if m.strip()))
  unknown = [m for m in names if m not in MODES]
  if unknown or not names:
    what = (f'unknown mode(s) {", ".join(map(repr, unknown))}' if unknown
            else 'no modes given')
    raise UserError(f'{what} in --modes; valid modes: {", ".join(MODES)} '
                    '(e.g. --modes=sgd,static,freeze)')
  return names


def mode_config(config: ml_collections.ConfigDict, mode: str,
                seed: int, epochs: Optional[float] = None
                ) -> ml_collections.ConfigDict:
  """A copy of `config` with `mode`'s overrides and `seed` applied.

  `epochs` (None: the config's) sets the run's length, fractional ones with
  a partial last epoch (`length_fields`), before the config's references
  are resolved, so fields derived from num_epochs follow it.
  """
  cfg = copy.deepcopy(config)  # keeps the references within the copy
  if epochs is not None:
    if 'last_epoch_fraction' not in cfg:
      raise UserError(f'mode {mode!r} at {epochs:g} epochs sets config.'
                      'last_epoch_fraction, which this config does not '
                      'have; derive the config from configs/default.py')
    cfg.update(length_fields(epochs))
  cfg = cfg.copy_and_resolve_references()
  for key, value in MODES[mode].items():
    *path, leaf = key.split('.')
    node = cfg
    for part in path:
      node = node.get(part) if isinstance(node, ml_collections.ConfigDict) \
          else None
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
      # Modes set fields of configs/default.py; a config that does not
      # derive from it cannot express the mode.
      raise UserError(f'mode {mode!r} sets config.{key}, which this config '
                      'does not have; derive the config from '
                      'configs/default.py')
    node[leaf] = value
  cfg.seed = seed
  return cfg
