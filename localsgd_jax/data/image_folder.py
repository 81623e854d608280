"""Image folders decoded once into uint8 arrays and cached on disk.

Layout: DIR/<split>/<class>/<image>, with .jpg, .jpeg or .png files (any
case). Classes are the sorted subfolder names of a split; images load in
sorted file order within each class, classes in sorted order. Hidden entries
(names starting with '.', e.g. macOS '._x.jpg' resource forks) are skipped.

A split decodes into uint8 (N, H, W, 3) images and int32 (N,) labels. Every
image of a folder must have one size: the arrays feed the in-memory pipeline,
which does not resize (stream mixed-size folders instead).

The decoded images of a split are cached in one .npy file named by a hash of
its (relative path, size, mtime_ns) list and `CACHE_VERSION`: a changed,
added or removed file changes the name, so a stale cache is simply not found.
Labels are not cached; they follow from the scan that a load does anyway.

Neither TensorFlow nor JAX is imported here.
"""

import concurrent.futures
import dataclasses
import glob
import hashlib
import math
import multiprocessing
import os
import sys
import tempfile
import time
from typing import List, Optional, Sequence, Tuple
import warnings

import numpy as np
from PIL import Image

from localsgd_jax.errors import UserError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')

# Part of every cache key: bump it when the decoded bytes or the file order
# for the same files would change (decoder options, sort rules, layout).
CACHE_VERSION = 1

# Below this many images a process pool costs more than it saves.
_MIN_PARALLEL_IMAGES = 2048
_MAX_CHUNK = 1024


@dataclasses.dataclass(frozen=True, eq=False)
class FolderSplit:
  """The image files of one split, in load order.

  Attributes:
    root: the dataset folder DIR.
    name: the split folder name ('train', 'val', ...).
    class_names: sorted class subfolder names.
    files: paths relative to `root` ('train/cat/0001.jpg', '/'-separated).
    labels: int32 (N,), the class index of each file.
  """
  root: str
  name: str
  class_names: Tuple[str, ...]
  files: Tuple[str, ...]
  labels: np.ndarray

  def path(self, index: int) -> str:
    """The full path of file `index`."""
    return os.path.join(self.root, *self.files[index].split('/'))

  def paths(self) -> List[str]:
    """Every file's full path, in load order."""
    return [self.path(i) for i in range(len(self.files))]


@dataclasses.dataclass(frozen=True, eq=False)
class FolderArrays:
  """Decoded train and eval splits of an image folder.

  Attributes:
    train_images: uint8 (N, H, W, 3).
    train_labels: int32 (N,).
    eval_images: uint8 (M, H, W, 3), or None when the eval split was skipped.
    eval_labels: int32 (M,), or None likewise.
    class_names: sorted class names; label i is class_names[i].
  """
  train_images: np.ndarray
  train_labels: np.ndarray
  eval_images: Optional[np.ndarray]
  eval_labels: Optional[np.ndarray]
  class_names: Tuple[str, ...]


def _visible_entries(folder: str) -> List[os.DirEntry]:
  with os.scandir(folder) as it:
    return sorted((e for e in it if not e.name.startswith('.')),
                  key=lambda e: e.name)


def scan_split(root: str, split: str) -> FolderSplit:
  """Lists the images of DIR/<split>/<class>/ without opening them.

  Args:
    root: the dataset folder DIR.
    split: the split subfolder ('train', 'val', ...).

  Returns:
    The split's files and labels, in load order.

  Raises:
    UserError: the split has no class folder, or a class folder holds no
      image.
  """
  split_dir = os.path.join(root, split)
  try:
    class_dirs = [e for e in _visible_entries(split_dir)
                  if e.is_dir(follow_symlinks=True)]
  except OSError as e:
    raise UserError(f'Cannot list {split_dir!r} ({e}); check that the image '
                    f'folder exists and is readable.') from e
  if not class_dirs:
    raise UserError(f'{split_dir!r} has no class subfolders; put the images '
                    f'of each class in {split_dir}/<class>/.')
  files, labels = [], []
  for label, class_dir in enumerate(class_dirs):
    try:
      names = [e.name for e in _visible_entries(class_dir.path)
               if e.name.lower().endswith(IMAGE_EXTENSIONS)
               and e.is_file(follow_symlinks=True)]
    except OSError as e:
      raise UserError(f'Cannot list {class_dir.path!r} ({e}); check its '
                      f'permissions.') from e
    if not names:
      raise UserError(
          f'Class folder {class_dir.path!r} holds no .jpg, .jpeg or .png '
          f'image; add its images or remove the folder (its class would '
          f'have no examples).')
    files.extend(f'{split}/{class_dir.name}/{name}' for name in names)
    labels.extend([label] * len(names))
  return FolderSplit(root=root, name=split,
                     class_names=tuple(e.name for e in class_dirs),
                     files=tuple(files),
                     labels=np.asarray(labels, np.int32))


def check_same_classes(train: FolderSplit, other: FolderSplit) -> None:
  """Raises a UserError unless both splits have the same class folders.

  A class on one side only would shift every label after it, so the eval
  split would silently score the wrong classes.
  """
  if train.class_names == other.class_names:
    return
  only_train = sorted(set(train.class_names) - set(other.class_names))
  only_other = sorted(set(other.class_names) - set(train.class_names))
  raise UserError(
      f'The class folders of {train.name}/ and {other.name}/ in '
      f'{train.root!r} differ: missing in {other.name}/: '
      f'{", ".join(only_train) or "none"}; missing in {train.name}/: '
      f'{", ".join(only_other) or "none"}. Give both splits the same class '
      f'subfolders.')


def _unreadable(path: str, e: Exception) -> UserError:
  return UserError(f'Cannot read image {path!r} ({type(e).__name__}: {e}); '
                   f'replace or delete the file.')


def read_image_shape(path: str) -> Tuple[int, int, int]:
  """(H, W, 3) of an image, from its header only (no pixel decoding)."""
  try:
    with Image.open(path) as image:
      width, height = image.size
  except Exception as e:  # pylint: disable=broad-except
    # PIL raises many types for bad files (OSError, SyntaxError, ...).
    raise _unreadable(path, e) from e
  return height, width, 3


def _size_error(path: str, got: Tuple[int, int], expected: Tuple[int, int],
                reference: str) -> UserError:
  return UserError(
      f'Image {path!r} is {got[0]}x{got[1]} pixels (width x height) but '
      f'{expected[0]}x{expected[1]} was expected, the size of '
      f'{reference!r}: the in-memory image_folder path needs one image '
      f'size; resize the images, or stream the folder (random-resized '
      f'crops to config.data.image_size) with --config.data.storage=stream.')


def _decode_chunk(paths: Sequence[str], height: int, width: int
                  ) -> Tuple[np.ndarray, Optional[Tuple]]:
  """Decodes `paths` into uint8 (len, H, W, 3), stopping at the first problem.

  Runs in pool workers, so problems come back as values (exceptions from a
  worker lose their type and the path).

  Returns:
    (images, problem): problem is None, ('size', index, (w, h)) or
    ('read', index, exception type name, message).
  """
  out = np.empty((len(paths), height, width, 3), np.uint8)
  for i, path in enumerate(paths):
    try:
      with Image.open(path) as image:
        # convert() of an RGB image would only copy it.
        image = image.convert('RGB') if image.mode != 'RGB' else image
        if image.size != (width, height):
          return out, ('size', i, image.size)
        out[i] = np.asarray(image)
    except Exception as e:  # pylint: disable=broad-except
      return out, ('read', i, type(e).__name__, str(e))
  return out, None


def _num_workers() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # Not on Linux.
    return os.cpu_count() or 1


def decode_images(paths: Sequence[str], shape: Tuple[int, int, int], *,
                  num_workers: Optional[int] = None,
                  reference: Optional[str] = None) -> np.ndarray:
  """Decodes images with PIL into one uint8 (N, H, W, 3) array.

  Each image is `Image.open(path).convert('RGB')`. Large lists are decoded by
  a pool of forked processes. Measured on 2 cores with 45,000 32x32 JPEGs:
  one thread ~6 s, two threads 6.7-7.6 s (the per-image Python work holds
  the GIL, and the decode that releases it is tiny), two processes 4.0 s
  (1.9x on an idle machine for 10,000 images).

  Args:
    paths: image files, in output order.
    shape: (H, W, 3) that every image must have.
    num_workers: processes; None = one per available core for
      >= 2048 images, else decode in this process. 1 = in this process.
    reference: the file named as having the expected size in errors;
      default paths[0].

  Returns:
    uint8 (len(paths), H, W, 3).

  Raises:
    UserError: an image cannot be read, or its size is not `shape`, naming
      the first such file in `paths` order.
  """
  height, width, _ = shape
  paths = list(paths)
  if num_workers is None:
    num_workers = (_num_workers() if len(paths) >= _MIN_PARALLEL_IMAGES
                   else 1)
  num_workers = max(1, min(int(num_workers), len(paths)))
  # A few chunks per worker balance the load; capped so that one result
  # pickled back through the pipe stays small.
  chunk = max(1, min(_MAX_CHUNK, math.ceil(len(paths) / (4 * num_workers))))
  starts = range(0, len(paths), chunk)
  out = np.empty((len(paths), height, width, 3), np.uint8)

  def check(start, result):
    images, problem = result
    out[start:start + len(images)] = images
    if problem is None:
      return
    path = paths[start + problem[1]]
    if problem[0] == 'size':
      raise _size_error(path, problem[2], (width, height),
                        reference or paths[0])
    raise UserError(f'Cannot read image {path!r} ({problem[2]}: '
                    f'{problem[3]}); replace or delete the file.')

  pool = _process_pool(num_workers) if num_workers > 1 else None
  if pool is None:
    for start in starts:
      check(start, _decode_chunk(paths[start:start + chunk], height, width))
    return out
  with pool:
    futures = [pool.submit(_decode_chunk, paths[start:start + chunk], height,
                           width) for start in starts]
    try:
      # In submission order, so that an error names the first bad file.
      for i, start in enumerate(starts):
        result = futures[i].result()
        # A finished future keeps its result: drop it, or every chunk would
        # stay alive next to `out` (twice the memory at the peak).
        futures[i] = None
        check(start, result)
    except concurrent.futures.process.BrokenProcessPool:
      # A worker died (e.g. killed for memory); one process still works.
      _warn('an image decoding worker died; decoding in one process.')
      return decode_images(paths, shape, num_workers=1, reference=reference)
    finally:
      for future in futures:
        if future is not None:
          future.cancel()
  return out


def _process_pool(num_workers: int
                  ) -> Optional[concurrent.futures.ProcessPoolExecutor]:
  """A fork-based pool, or None where fork is unavailable (Windows).

  Fork, not spawn: spawned workers re-import the caller's __main__ (so an
  unguarded script would recurse) and JAX with it (~1 s each). JAX warns
  that forking its multithreaded process may deadlock; these children only
  run PIL and numpy and leave through os._exit, never touching XLA or its
  locks, so that warning is silenced while the workers start.
  """
  try:
    context = multiprocessing.get_context('fork')
  except ValueError:
    return None
  pool = concurrent.futures.ProcessPoolExecutor(num_workers,
                                                mp_context=context)
  # The workers fork at the first submit; start them here, warning-free.
  with warnings.catch_warnings():
    warnings.filterwarnings('ignore', message=r'os\.fork\(\) was called',
                            category=RuntimeWarning)
    try:
      pool.submit(int).result()
    except (OSError, concurrent.futures.process.BrokenProcessPool) as e:
      # No memory or process slots for a fork: decode in this process.
      pool.shutdown(wait=False)
      _warn(f'cannot start image decoding workers ({e}); decoding in one '
            f'process.')
      return None
  return pool


def _warn(message: str) -> None:
  print(f'warning: {message}', file=sys.stderr, flush=True)


# ------------------------------------------------------------------- cache


def default_cache_dir() -> str:
  """$XDG_CACHE_HOME/localsgd_jax, or ~/.cache/localsgd_jax."""
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(
      os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'localsgd_jax')


def cache_key(split: FolderSplit) -> str:
  """Hex digest of `CACHE_VERSION` and the split's (path, size, mtime_ns).

  Raises:
    UserError: a file vanished or cannot be stat'ed.
  """
  digest = hashlib.sha256(f'v{CACHE_VERSION}\n'.encode())
  for index, relative in sorted(enumerate(split.files), key=lambda p: p[1]):
    try:
      stat = os.stat(split.path(index))
    except OSError as e:
      raise _unreadable(split.path(index), e) from e
    digest.update(f'{relative}\0{stat.st_size}\0{stat.st_mtime_ns}\n'
                  .encode('utf-8', 'surrogateescape'))
  return digest.hexdigest()


def _cache_prefix(split: FolderSplit) -> str:
  """'<folder name>-<hash of its real path>-<split>-' for the cache file.

  The path hash keeps two folders of the same name apart, and lets a new
  cache of this folder and split remove the stale ones before it.
  """
  real = os.path.realpath(split.root)
  name = ''.join(c if c.isalnum() or c in '-_.' else '_'
                 for c in os.path.basename(real.rstrip(os.sep)))[:40]
  path_hash = hashlib.sha256(real.encode('utf-8', 'surrogateescape'))
  return f'{name or "root"}-{path_hash.hexdigest()[:8]}-{split.name}-'


def cache_path(split: FolderSplit, cache_dir: str) -> str:
  """Where the decoded images of `split` are (or would be) cached."""
  return os.path.join(cache_dir,
                      f'{_cache_prefix(split)}{cache_key(split)[:32]}.npy')


def _read_cache(path: str, expected_shape: Tuple[int, ...]
                ) -> Optional[np.ndarray]:
  """The cached images, or None if absent; a corrupt file is warned about."""
  if not os.path.isfile(path):
    return None
  try:
    images = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    # Truncated and garbage files raise ValueError or EOFError.
    problem = f'{type(e).__name__}: {e}'
  else:
    if images.dtype == np.uint8 and images.shape == expected_shape:
      return images
    problem = (f'it holds {images.dtype} {images.shape}, expected uint8 '
               f'{expected_shape}')
  _warn(f'unreadable or corrupt image cache {path!r} ({problem[:200]}); '
        f'decoding the images again to rebuild it.')
  return None


def _cache_write_problem(cache_dir: str) -> Optional[str]:
  """None if files can be created in `cache_dir` (made if needed), else why."""
  try:
    os.makedirs(cache_dir, exist_ok=True)
    with tempfile.TemporaryFile(dir=cache_dir):
      pass
  except OSError as e:
    return str(e)
  return None


def _warn_no_cache(cache_dir: str, problem: str) -> None:
  _warn(f'cannot write the image cache in {cache_dir!r} ({problem}); '
        f'decoding without a cache (set config.data.cache_dir to a writable '
        f'folder to decode only once).')


def _write_cache(split: FolderSplit, path: str, images: np.ndarray) -> bool:
  """Writes atomically (temp file + rename); warns and returns False on error.
  """
  folder = os.path.dirname(path)
  tmp = None
  try:
    fd, tmp = tempfile.mkstemp(dir=folder, suffix='.tmp',
                               prefix='.' + os.path.basename(path))
    with os.fdopen(fd, 'wb') as f:
      np.save(f, images, allow_pickle=False)
    # mkstemp makes the file private (0600); a cache is as readable as the
    # images it holds.
    os.chmod(tmp, 0o644)
    # Concurrent writers (several processes on one host) each rename a
    # complete file, so readers never see a partial one.
    os.replace(tmp, path)
    tmp = None
  except OSError as e:
    _warn_no_cache(folder, str(e))
    return False
  finally:
    if tmp is not None:
      try:
        os.remove(tmp)
      except OSError:
        pass
  # Older caches of this folder and split are stale: they would never be
  # found again, and each holds a whole split.
  pattern = os.path.join(glob.escape(folder),
                         glob.escape(_cache_prefix(split)) + '*.npy')
  for stale in glob.glob(pattern):
    if stale != path:
      try:
        os.remove(stale)
      except OSError:
        pass
  return True


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


def load_split_images(split: FolderSplit, shape: Tuple[int, int, int],
                      cache_dir: Optional[str], *,
                      reference: Optional[str] = None) -> np.ndarray:
  """The decoded images of `split`, from the cache when it is current.

  A missing or stale cache is built; a corrupt one is rebuilt with a
  warning; an unwritable `cache_dir` gives a warning and no cache.

  Args:
    split: from `scan_split`.
    shape: (H, W, 3) every image must have.
    cache_dir: cache folder; None or '' decodes without a cache.
    reference: file named as having the expected size in size errors;
      default the split's first file.

  Returns:
    uint8 (len(split.files), H, W, 3).

  Raises:
    UserError: an image is unreadable or has another size.
  """
  return _load_splits([split], shape, cache_dir, reference)[0]


def load_splits(splits: Sequence[FolderSplit],
                cache_dir: Optional[str] = '') -> List[np.ndarray]:
  """Decoded images of `splits`, all the size of splits[0]'s first image.

  Like `load_split_images` for each split, with at most one warning about
  an unwritable cache folder.

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
  """`load_split_images` of several splits, warning at most once."""
  paths = [cache_path(s, cache_dir) if cache_dir else None for s in splits]
  results = [_read_cache(p, (len(s.files),) + tuple(shape)) if p else None
             for s, p in zip(splits, paths)]
  write = bool(cache_dir) and any(r is None for r in results)
  if write:
    problem = _cache_write_problem(cache_dir)
    if problem is not None:
      _warn_no_cache(cache_dir, problem)
      write = False
  missing = [i for i, r in enumerate(results) if r is None]
  if missing:
    decoded = _decode_splits([splits[i] for i in missing], shape, reference)
    for i, images in zip(missing, decoded):
      results[i] = images
      if write:
        write = _write_cache(splits[i], paths[i], images)
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
