"""A config's fields by dotted name, and `config.init_from`'s value.

Pure Python (no JAX, no Orbax): config validation, the resume check and the
workdir read configs through these.
"""
import json
import os
from typing import Any, Dict, Optional, Sequence, Tuple

import ml_collections

from localsgd_jax.errors import UserError


def as_dict(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """The config as config.json holds it (references resolved)."""
  return json.loads(config.to_json_best_effort())


def flatten(tree: Dict[str, Any], prefix: str = '') -> Dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1}."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def matches(key: str, names: Sequence[str]) -> bool:
  """Whether the dotted field `key` is one of `names` or inside one."""
  return any(key == n or key.startswith(n + '.') for n in names)


def parse_init_from(value: str, seed: int
                    ) -> Optional[Tuple[str, Optional[int]]]:
  """'WORKDIR:EPOCH' or 'WORKDIR' (its latest checkpoint) -> (path, epoch).

  '{seed}' in WORKDIR becomes the run's seed, so that compare.py forks each
  seed's run from the parent run of the same seed.

  Raises:
    UserError: an empty path, a negative epoch, or another placeholder.
  """
  if not value:
    return None
  path, epoch = value, None
  head, sep, tail = value.rpartition(':')
  if sep and tail.strip().lstrip('-').isdigit():
    path, epoch = head, int(tail)
  try:
    path = path.format(seed=seed)
  except (KeyError, IndexError, ValueError) as e:
    raise UserError(f'config.init_from={value!r}: only {{seed}} can be '
                    f'filled in ({e!r}); give WORKDIR:EPOCH') from None
  if not path or (epoch is not None and epoch < 0):
    raise UserError(f'config.init_from={value!r} is not WORKDIR:EPOCH (or '
                    'WORKDIR for its latest checkpoint)')
  return os.path.expanduser(path), epoch
