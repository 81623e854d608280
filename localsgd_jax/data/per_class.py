"""Per-class subsets: the CPU-sized proxy of an in-memory dataset.

`train_per_class` keeps the first N training images of each class and
`holdout_per_class` draws a seeded per-class hold-out from the rest.
"""
from typing import Optional, Sequence, Tuple

import numpy as np

from localsgd_jax.errors import UserError


def select_per_class(labels: np.ndarray, num_classes: int, *,
                     train_per_class: int = 0, holdout_per_class: int = 0,
                     holdout_seed: int = 0,
                     class_names: Optional[Sequence[str]] = None
                     ) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
  """Training and hold-out indices for `train_per_class` / `holdout_per_class`.

  Training keeps the first `train_per_class` images of each class in data
  order (all when 0). The hold-out draws `holdout_per_class` images of each
  class, seeded by (holdout_seed, class), from the images training does not
  keep: with `train_per_class` the ones past the first N, else all of them
  (and training then loses the drawn ones). It is a pure function of the
  seed and the labels, so every run and every process holds out the same
  images, and never overlaps training.

  Args:
    labels: integer (N,) training labels, in data order.
    num_classes: number of labels; every class must have enough images.
    train_per_class: images kept per class (0 = all).
    holdout_per_class: images held out per class (0 = no hold-out).
    holdout_seed: seed of the hold-out draw, independent of the run seed.
    class_names: names used in errors (default 'class <i>').

  Returns:
    (train indices, hold-out indices), each sorted int64 into `labels`, or
    None for "all training images" / "no hold-out".

  Raises:
    UserError: a class has fewer than train_per_class + holdout_per_class
      images.
  """
  if not train_per_class and not holdout_per_class:
    return None, None
  labels = np.asarray(labels)
  members = [np.flatnonzero(labels == c) for c in range(num_classes)]
  _check_counts(members, train_per_class, holdout_per_class, class_names)
  keep = np.zeros(labels.shape, bool)
  hold = np.zeros(labels.shape, bool)
  for c, idx in enumerate(members):
    if train_per_class:
      keep[idx[:train_per_class]] = True
      pool = idx[train_per_class:]
    else:
      keep[idx] = True
      pool = idx
    if holdout_per_class:
      # Seeded per class: a class's draw does not depend on the others.
      rng = np.random.default_rng([holdout_seed, c])
      drawn = rng.choice(pool, holdout_per_class, replace=False)
      hold[drawn] = True
      keep[drawn] = False
  return (np.flatnonzero(keep),
          np.flatnonzero(hold) if holdout_per_class else None)


def _check_counts(members: Sequence[np.ndarray], train_per_class: int,
                  holdout_per_class: int,
                  class_names: Optional[Sequence[str]]) -> None:
  """Raises a UserError naming the smallest class if it has too few images."""
  need = train_per_class + holdout_per_class
  counts = [len(m) for m in members]
  if min(counts) >= need:
    return
  c = int(np.argmin(counts))
  name = (repr(class_names[c]) if class_names is not None
          else f'class {c}')
  asked = ' + '.join(
      f'config.data.{field} ({value})' for field, value in
      (('train_per_class', train_per_class),
       ('holdout_per_class', holdout_per_class)) if value)
  raise UserError(
      f'The training set has {counts[c]} images of {name}, fewer than '
      f'{asked} = {need}; lower them to at most {counts[c]} images per '
      f'class in all.')
