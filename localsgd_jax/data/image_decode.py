"""Images decoded with PIL into one uint8 (N, H, W, 3) array.

Every image must have one size (the in-memory arrays hold one shape);
large lists are decoded by a pool of forked processes. Every 8-bit mode
becomes RGB by PIL's `convert('RGB')`; 16-bit grayscale PNGs are scaled
to 8 bits (`to_rgb`).
"""
import concurrent.futures
import functools
import math
import multiprocessing
import os
from typing import Any, Callable, Optional, Sequence, Tuple
import warnings

import numpy as np
from PIL import Image

from localsgd_jax.errors import UserError
from localsgd_jax.errors import warn

# Below this many images a process pool costs more than it saves.
_MIN_PARALLEL_IMAGES = 2048
_MAX_CHUNK = 1024


def unreadable(path: str, e: Exception) -> UserError:
  return UserError(f'Cannot read image {path!r} ({type(e).__name__}: {e}); '
                   f'replace or delete the file.')


# PIL's modes of 16-bit grayscale PNGs ('I' in older Pillow versions), whose
# convert('RGB') clips every value above 255 to white.
_SIXTEEN_BIT_GRAY = ('I;16', 'I;16B', 'I;16L', 'I;16N', 'I')


def to_rgb(image: Image.Image) -> np.ndarray:
  """The uint8 (H, W, 3) RGB pixels of a PIL image.

  8-bit modes go through `convert('RGB')`, as torchvision's and tfds'
  folder readers do: gray (L) is copied to the three channels, alpha (LA,
  RGBA, a palette's transparency) is dropped, palettes (P) are looked up,
  CMYK is PIL's (255 - C)(255 - K) / 255 per channel. 16-bit grayscale
  (`_SIXTEEN_BIT_GRAY`) is scaled from 0..65535 to 0..255, rounded, where
  `convert('RGB')` would clip it (nearly white).

  Raises:
    ValueError: pixels with no 8-bit meaning (floating point, or 32-bit
      integers outside 0..65535).
  """
  if image.mode == 'RGB':
    return np.asarray(image)  # convert() would only copy it
  if image.mode in _SIXTEEN_BIT_GRAY:
    values = np.asarray(image).astype(np.int64)  # (H, W)
    if values.size and (values.min() < 0 or values.max() > 65535):
      raise ValueError(f'{image.mode} pixels outside the 16-bit range '
                       f'0..65535 (min {values.min()}, max {values.max()})')
    gray = ((values * 255 + 32767) // 65535).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)
  if image.mode == 'F':
    raise ValueError('floating-point pixels (mode F) have no 8-bit RGB '
                     'meaning; save the image as 8-bit RGB')
  return np.asarray(image.convert('RGB'))


def read_image_shape(path: str) -> Tuple[int, int, int]:
  """(H, W, 3) of an image, from its header only (no pixel decoding)."""
  try:
    with Image.open(path) as image:
      width, height = image.size
  except Exception as e:  # pylint: disable=broad-except
    # PIL raises many types for bad files (OSError, SyntaxError, ...).
    raise unreadable(path, e) from e
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
        if image.size != (width, height):
          return out, ('size', i, image.size)
        out[i] = to_rgb(image)
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

  Each image is `to_rgb(Image.open(path))`. Large lists are decoded by
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
  out = np.empty((len(paths), height, width, 3), np.uint8)

  def check(start, result):
    images, problem = result
    out[start:start + len(images)] = images
    if problem is not None:
      raise _problem_error(problem, paths[start + problem[1]], (width, height),
                           reference or paths[0])

  try:
    _run_chunks(paths, functools.partial(_decode_chunk, height=height,
                                         width=width), check, num_workers)
  except concurrent.futures.process.BrokenProcessPool:
    # A worker died (e.g. killed for memory); one process still works.
    warn('an image decoding worker died; decoding in one process.')
    return decode_images(paths, shape, num_workers=1, reference=reference)
  return out


def _run_chunks(paths: Sequence[str], work: Callable[[Sequence[str]], Any],
                check: Callable[[int, Any], None],
                num_workers: Optional[int]) -> None:
  """`check(start, work(chunk))` for the chunks of `paths` in order; the
  chunks run in a pool of processes for long lists (see decode_images)."""
  if num_workers is None:
    num_workers = (_num_workers() if len(paths) >= _MIN_PARALLEL_IMAGES
                   else 1)
  num_workers = max(1, min(int(num_workers), len(paths)))
  # A few chunks per worker balance the load; capped so that one result
  # pickled back through the pipe stays small.
  chunk = max(1, min(_MAX_CHUNK, math.ceil(len(paths) / (4 * num_workers))))
  starts = range(0, len(paths), chunk)
  pool = _process_pool(num_workers) if num_workers > 1 else None
  if pool is None:
    for start in starts:
      check(start, work(paths[start:start + chunk]))
    return
  with pool:
    _run_in_pool(pool, work, paths, starts, chunk, check)


def _load_chunk(paths: Sequence[str]) -> Optional[Tuple]:
  """The problem (as `_decode_chunk` reports it) of the first of `paths`
  PIL cannot decode, or None; the pixels are dropped."""
  for i, path in enumerate(paths):
    try:
      with Image.open(path) as image:
        image.load()
    except Exception as e:  # pylint: disable=broad-except
      return ('read', i, type(e).__name__, str(e))
  return None


def find_unreadable(paths: Sequence[str], *,
                    num_workers: Optional[int] = None) -> Optional[UserError]:
  """The error naming the first of `paths` that PIL cannot decode, or None.

  Images of any size; decoded (by a process pool for long lists, as in
  `decode_images`) and dropped. For streamed folders, whose tf.data errors
  do not name the file.
  """
  paths = list(paths)

  def check(start, problem):
    if problem is not None:
      raise _problem_error(problem, paths[start + problem[1]])

  try:
    _run_chunks(paths, _load_chunk, check, num_workers)
  except UserError as e:
    return e
  return None


def _problem_error(problem: Tuple, path: str,
                   expected: Optional[Tuple[int, int]] = None,
                   reference: Optional[str] = None) -> UserError:
  """The UserError for a problem `_decode_chunk` reported about `path`."""
  if problem[0] == 'size':
    return _size_error(path, problem[2], expected, reference)
  return UserError(f'Cannot read image {path!r} ({problem[2]}: '
                   f'{problem[3]}); replace or delete the file.')


def _run_in_pool(pool: concurrent.futures.ProcessPoolExecutor,
                 work: Callable[[Sequence[str]], Tuple],
                 paths: Sequence[str], starts: range, chunk: int,
                 check: Callable[[int, Tuple], None]) -> None:
  """Runs `work` on the chunks at `starts` in `pool`, `check`ing each result
  in order."""
  futures = [pool.submit(work, paths[start:start + chunk])
             for start in starts]
  try:
    # In submission order, so that an error names the first bad file.
    for i, start in enumerate(starts):
      result = futures[i].result()
      # A finished future keeps its result: drop it, or every chunk would
      # stay alive next to `out` (twice the memory at the peak).
      futures[i] = None
      check(start, result)
  finally:
    for future in futures:
      if future is not None:
        future.cancel()


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
      warn(f'cannot start image decoding workers ({e}); decoding in one '
            f'process.')
      return None
  return pool
