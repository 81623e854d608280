"""The comparison's modes: named sets of config overrides.

A mode is a set of config overrides (dotted keys) applied on top of the
comparison's config, so every peer runs under the same code, data, model and
optimizer, and differs only in how units leave the backward pass. Add a mode
here; `comparison` trains it and `report` tabulates it.
"""
from typing import Any, Dict, List, Sequence

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
                seed: int) -> ml_collections.ConfigDict:
  """A copy of `config` with `mode`'s overrides and `seed` applied."""
  cfg = config.copy_and_resolve_references()
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
