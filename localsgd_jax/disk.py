"""Writes that a full disk cannot tear, and their one-line errors.

A write that fails (a full disk, a quota, a read-only filesystem) becomes a
`UserError` naming what was written, where, and the free space there
(`write_failed`); it leaves no half-written file behind: an append is cut
back to where it started, a rewrite goes through a temporary file. The
writers are metrics.jsonl and the JSON records (`metrics`), the TensorBoard
events (`tb_events`) and the checkpoints (`checkpointing`, whose Orbax
errors `os_error` reads).
"""
import errno
import os
import re
import shutil
from typing import Optional

from localsgd_jax.errors import UserError

# errno values that mean "no room" (free space is worth reporting).
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def free_bytes(path: str) -> Optional[int]:
  """Free space on the filesystem of `path` (or of its nearest existing
  parent folder), for a user's account; None if it cannot be read."""
  path = os.path.abspath(path)
  while not os.path.exists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  try:
    return shutil.disk_usage(path).free
  except OSError:
    return None


def size_text(num_bytes: Optional[float]) -> str:
  """1536 -> '1.5 KiB'; None -> 'an unknown amount'."""
  if num_bytes is None:
    return 'an unknown amount'
  if num_bytes < 1024:
    return f'{num_bytes:.0f} bytes'
  for unit in ('KiB', 'MiB', 'GiB'):
    num_bytes /= 1024
    if num_bytes < 1024:
      return f'{num_bytes:.1f} {unit}'
  return f'{num_bytes / 1024:.1f} TiB'


def write_failed(what: str, path: str, e: OSError,
                 size: str = '',
                 resumes: str = 'the last checkpoint') -> UserError:
  """The one-line UserError for an OSError writing `what` at `path`.

  Args:
    what: e.g. 'the metrics file', 'the checkpoint after epoch 3'.
    path: the file or folder written.
    e: the error; its errno and strerror (e.g. ENOSPC, 'No space left on
      device') say which fix to suggest.
    size: what sizes the write, e.g. 'the last checkpoint takes 2.1 MiB'.
    resumes: what the run resumes from when run again.
  """
  reason = e.strerror or str(e) or type(e).__name__
  if e.errno in _NO_ROOM:
    need = f'; {size}' if size else ''
    return UserError(
        f'cannot write {what} {path}: {reason} ({size_text(free_bytes(path))}'
        f' free there{need}). Free some space on that disk (or raise the '
        'quota, or use a --workdir on a larger disk) and run the same command '
        f'again: it resumes from {resumes}.')
  if e.errno == errno.EROFS:
    return UserError(f'cannot write {what} {path}: {reason}. Use a --workdir '
                     'on a writable filesystem (or remount it read-write).')
  return UserError(f'cannot write {what} {path}: {reason}. Check that folder '
                   '(permissions, the disk) and run the same command again.')


def append_durably(path: str, text: str, what: str) -> None:
  """Appends `text` durably; on an error cuts the file back to its old
  length (no torn line is left) and raises the UserError."""
  size = None
  try:
    size = os.path.getsize(path) if os.path.exists(path) else 0
    with open(path, 'a') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
  except OSError as e:
    _cut_back(path, size)
    raise write_failed(what, path, e) from None


def _cut_back(path: str, size: Optional[int]) -> None:
  if size is None:
    return
  try:
    if os.path.getsize(path) > size:
      os.truncate(path, size)
  except OSError:
    pass


def replace_atomically(path: str, text: str, what: str) -> None:
  """Writes `text` to `path` atomically (a temporary file, then a rename);
  on an error the old file stays and the temporary one goes."""
  tmp = path + '.tmp'
  try:
    with open(tmp, 'w') as f:
      f.write(text)
    os.replace(tmp, path)
  except OSError as e:
    try:
      os.remove(tmp)
    except OSError:
      pass
    raise write_failed(what, path, e) from None


def folder_bytes(path: str) -> int:
  """The bytes of the files under `path`."""
  total = 0
  for root, _, files in os.walk(path):
    for name in files:
      try:
        total += os.path.getsize(os.path.join(root, name))
      except OSError:
        pass
  return total


# TensorStore's message for an OS error ends in [os_error_code='28'].
_OS_ERROR_CODE = re.compile(r"\[os_error_code='?(\d+)'?\]")


def os_error(e: BaseException) -> Optional[OSError]:
  """The OSError behind a failure (e.g. Orbax's), if it is one: Python's
  own (e.g. writing a JSON item) or TensorStore's, which Orbax raises as a
  ValueError 'RESOURCE_EXHAUSTED: ... No space left on device
  [os_error_code='28']'; the same text in a log message counts too.
  """
  for _ in range(10):  # the chain of causes (`raise ... from`)
    if e is None:
      return None
    if isinstance(e, OSError) and e.errno is not None:
      return e
    match = _OS_ERROR_CODE.search(str(e))
    if match:
      code = int(match.group(1))
      return OSError(code, os.strerror(code))
    e = e.__cause__
  return None
