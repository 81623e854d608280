"""The on-disk cache of a split's decoded images: one .npz file per split.

The file is named by a hash of the split's (relative path, size, mtime_ns)
list and `CACHE_VERSION`: a changed, added or removed file changes the name,
so a stale cache is simply not found (and a new one removes it). It holds the
images and the SHA-256 of their bytes: a cache damaged in place (same size,
other pixels) is found out on reading and rebuilt, never served.
"""
import glob
import hashlib
import os
import tempfile
import zipfile
from typing import Optional, Tuple

import numpy as np

from localsgd_jax.data.image_decode import unreadable
from localsgd_jax.data.image_scan import FolderSplit
from localsgd_jax.errors import warn

# Part of every cache key: bump it when the decoded bytes or the file order
# for the same files would change (decoder options, sort rules, layout).
# 2: 16-bit grayscale PNGs scaled, no longer white; 3: .npz with a checksum.
CACHE_VERSION = 3


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
      raise unreadable(split.path(index), e) from e
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
                      f'{_cache_prefix(split)}{cache_key(split)[:32]}.npz')


def _checksum(images: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(images).data).hexdigest()


def read_cache(path: str, expected_shape: Tuple[int, ...]
                ) -> Optional[np.ndarray]:
  """The cached images, or None if absent; a damaged file is warned about.

  Damaged: unreadable, of another shape or dtype, or its pixels no longer
  match the checksum stored with them.
  """
  if not os.path.isfile(path):
    return None
  try:
    with np.load(path, allow_pickle=False) as cache:
      images, stored = cache['images'], str(cache['sha256'])
  except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
    # Truncated and garbage files raise BadZipFile, ValueError or EOFError.
    problem = f'{type(e).__name__}: {e}'
  else:
    if images.dtype != np.uint8 or images.shape != expected_shape:
      problem = (f'it holds {images.dtype} {images.shape}, expected uint8 '
                 f'{expected_shape}')
    elif _checksum(images) != stored:
      problem = 'its pixels do not match their checksum: damaged on disk'
    else:
      return images
  warn(f'unreadable or corrupt image cache {path!r} ({problem[:200]}); '
        f'decoding the images again to rebuild it.')
  return None


def cache_write_problem(cache_dir: str) -> Optional[str]:
  """None if files can be created in `cache_dir` (made if needed), else why."""
  try:
    os.makedirs(cache_dir, exist_ok=True)
    with tempfile.TemporaryFile(dir=cache_dir):
      pass
  except OSError as e:
    return str(e)
  return None


def warn_no_cache(cache_dir: str, problem: str) -> None:
  warn(f'cannot write the image cache in {cache_dir!r} ({problem}); '
        f'decoding without a cache (set config.data.cache_dir to a writable '
        f'folder to decode only once).')


def write_cache(split: FolderSplit, path: str, images: np.ndarray) -> bool:
  """Writes atomically (temp file + rename); warns and returns False on error.
  """
  folder = os.path.dirname(path)
  tmp = None
  try:
    fd, tmp = tempfile.mkstemp(dir=folder, suffix='.tmp',
                               prefix='.' + os.path.basename(path))
    with os.fdopen(fd, 'wb') as f:
      np.savez(f, images=images, sha256=np.array(_checksum(images)))
    # mkstemp makes the file private (0600); a cache is as readable as the
    # images it holds.
    os.chmod(tmp, 0o644)
    # Concurrent writers (several processes on one host) each rename a
    # complete file, so readers never see a partial one.
    os.replace(tmp, path)
    tmp = None
  except OSError as e:
    warn_no_cache(folder, str(e))
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
                         glob.escape(_cache_prefix(split)) + '*.np[yz]')
  for stale in glob.glob(pattern):
    if stale != path:
      try:
        os.remove(stale)
      except OSError:
        pass
  return True
