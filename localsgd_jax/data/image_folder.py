"""Image folders decoded once into uint8 arrays and cached on disk.

Layout: DIR/<split>/<class>/<image>, with .jpg, .jpeg or .png files (any
case). Classes are the sorted subfolder names of a split; images load in
sorted file order within each class, classes in sorted order. Hidden entries
(names starting with '.', e.g. macOS '._x.jpg' resource forks) are skipped.

A split decodes into uint8 (N, H, W, 3) images and int32 (N,) labels. Every
image of a folder must have one size: the arrays feed the in-memory pipeline,
which does not resize (stream mixed-size folders instead).

The decoded images of a split are cached in one .npz file named by a hash of
its (relative path, size, mtime_ns) list and `CACHE_VERSION`: a changed,
added or removed file changes the name, so a stale cache is simply not found.
Labels are not cached; they follow from the scan that a load does anyway.

The jobs sit in their own modules: `image_scan` (list and check the folder),
`image_decode` (PIL, in a process pool) and `image_cache` (the .npz files);
this module loads a folder through them. Neither TensorFlow nor JAX is
imported here.
"""
import os
import sys
import time
from typing import List, Optional, Sequence, Tuple

import numpy as np

from localsgd_jax.data.image_cache import cache_path
from localsgd_jax.data.image_cache import cache_write_problem
from localsgd_jax.data.image_cache import default_cache_dir
from localsgd_jax.data.image_cache import read_cache
from localsgd_jax.data.image_cache import warn_no_cache
from localsgd_jax.data.image_cache import write_cache
from localsgd_jax.data.image_decode import decode_images
from localsgd_jax.data.image_decode import read_image_shape
from localsgd_jax.data.image_scan import FolderArrays
from localsgd_jax.data.image_scan import FolderSplit
from localsgd_jax.data.image_scan import check_same_classes
from localsgd_jax.data.image_scan import scan_split


def _decode_splits(splits: Sequence[FolderSplit],
                   shape: Tuple[int, int, int],
                   reference: Optional[str]) -> List[np.ndarray]:
  """Decodes several splits in one `decode_images` call (one worker pool)."""
  start = time.perf_counter()
  where = ', '.join(repr(os.path.join(s.root, s.name)) for s in splits)
  paths = [path for split in splits for path in split.paths()]
  print(f'Decoding the {len(paths)} images of {where} once...',
        file=sys.stderr, flush=True)
  images = decode_images(paths, shape, reference=reference)
  print(f'Decoded them in {time.perf_counter() - start:.1f} s.',
        file=sys.stderr, flush=True)
  ends = np.cumsum([len(split.files) for split in splits])
  return np.split(images, ends[:-1])


def load_splits(splits: Sequence[FolderSplit],
                cache_dir: Optional[str] = '') -> List[np.ndarray]:
  """Decoded images of `splits`, all the size of splits[0]'s first image.

  Each split comes from the cache when it is current; a missing or stale
  cache is built, a damaged one rebuilt with a warning, and an unwritable
  `cache_dir` gives one warning and no cache.

  Args:
    splits: from `scan_split`; the first sets the image size.
    cache_dir: cache folder; '' = `default_cache_dir()`, None = no cache.

  Returns:
    One uint8 (N_i, H, W, 3) array per split.

  Raises:
    UserError: an image is unreadable or has another size.
  """
  if cache_dir == '':
    cache_dir = default_cache_dir()
  first = splits[0].path(0)
  return _load_splits(splits, read_image_shape(first), cache_dir, first)


def _load_splits(splits: Sequence[FolderSplit], shape: Tuple[int, int, int],
                 cache_dir: Optional[str], reference: Optional[str]
                 ) -> List[np.ndarray]:
  """`load_splits` with the image shape known."""
  paths = [cache_path(s, cache_dir) if cache_dir else None for s in splits]
  results = [read_cache(p, (len(s.files),) + tuple(shape)) if p else None
             for s, p in zip(splits, paths)]
  write = bool(cache_dir) and any(r is None for r in results)
  if write:
    problem = cache_write_problem(cache_dir)
    if problem is not None:
      warn_no_cache(cache_dir, problem)
      write = False
  missing = [i for i, r in enumerate(results) if r is None]
  if missing:
    decoded = _decode_splits([splits[i] for i in missing], shape, reference)
    for i, images in zip(missing, decoded):
      results[i] = images
      if write:
        write = write_cache(splits[i], paths[i], images)
  return results


def load_image_folder(root: str, eval_split: Optional[str] = 'val',
                      cache_dir: Optional[str] = '',
                      train_split: str = 'train') -> FolderArrays:
  """Scans, checks and decodes (or loads from the cache) an image folder.

  Args:
    root: the dataset folder DIR.
    eval_split: the eval split folder name, or None to skip it.
    cache_dir: cache folder; '' = `default_cache_dir()`, None = no cache.
    train_split: the training split folder name.

  Returns:
    The decoded splits; every image has the size of the first train image.

  Raises:
    UserError: empty class folders, class sets that differ between the
      splits, unreadable images or images of different sizes.
  """
  splits = [scan_split(root, train_split)]
  if eval_split is not None:
    splits.append(scan_split(root, eval_split))
    check_same_classes(splits[0], splits[1])
  images = load_splits(splits, cache_dir)
  with_eval = eval_split is not None
  return FolderArrays(
      train_images=images[0], train_labels=splits[0].labels,
      eval_images=images[1] if with_eval else None,
      eval_labels=splits[1].labels if with_eval else None,
      class_names=splits[0].class_names)
