"""Split and merge per-unit trees by the transition index k.

Every top-level key of params / batch_stats / opt_state is a unit
(`units_0`, `units_1`, ...). Units [0, k) are local, units [k, L) are SGD.
"""
from typing import Any, Dict, Tuple

from localsgd_jax.models.base import unit_index

Tree = Dict[str, Any]


def split(tree: Tree, k: int) -> Tuple[Tree, Tree]:
  """(local, sgd): the units before k and the units from k on."""
  local = {n: v for n, v in tree.items() if unit_index(n) < k}
  sgd = {n: v for n, v in tree.items() if unit_index(n) >= k}
  return local, sgd


def merge(*trees: Tree) -> Tree:
  """Union of disjoint per-unit trees."""
  out: Tree = {}
  for t in trees:
    overlap = out.keys() & t.keys()
    if overlap:
      raise ValueError(f'units appear in two partitions: {sorted(overlap)}')
    out.update(t)
  return out
