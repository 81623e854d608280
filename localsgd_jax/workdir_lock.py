"""One run per workdir: the path checks and `run.lock`.

`RunLock` is created atomically by the run that uses the workdir and holds
its host, PID and start time; a lock left by a run that died (same host and
a dead PID, or no heartbeat for `STALE_AFTER_S`) is reported and taken over.
`check_path` gives one-line errors for a workdir that cannot be used.
"""
import datetime
import json
import os
import socket
import sys
import threading
import time
from typing import Any, Dict, Optional

from localsgd_jax import disk
from localsgd_jax.errors import UserError
from localsgd_jax.errors import warn

LOCK_FILE = 'run.lock'
HEARTBEAT_S = 60.0        # the lock holder touches the lock this often
STALE_AFTER_S = 15 * 60.0  # a lock untouched for this long is stale


def now() -> str:
  return datetime.datetime.now().astimezone().isoformat(timespec='seconds')



# ----------------------------------------------------------- the workdir path


def check_path(workdir: str) -> None:
  """One-line errors for a workdir that cannot be used; creates nothing."""
  if not workdir:
    raise UserError('the workdir is empty; give a directory with --workdir')
  path = os.path.abspath(os.path.expanduser(workdir))
  if os.path.exists(path) and not os.path.isdir(path):
    raise UserError(f'the workdir {workdir!r} is a file, not a directory; '
                    'give a directory (a new one, or one of an earlier run)')
  parent = path
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise UserError(f'the workdir {workdir!r} would sit under {parent!r}, '
                    'which is a file; give a directory elsewhere')
  if not os.access(parent, os.W_OK | os.X_OK):
    what = 'in the workdir' if parent == path else 'to create the workdir in'
    raise UserError(f'cannot write {what} {parent!r} (read-only or no '
                    'permission); give a writable --workdir')


def create(workdir: str) -> None:
  check_path(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise UserError(f'cannot create the workdir {workdir!r} ({e.strerror}); '
                    'give a writable --workdir') from None


# ------------------------------------------------------------------ the lock


def _identity(stat: os.stat_result) -> tuple:
  """Which lock file this is: a removed file's inode number may be reused
  at once, its modification time (stale: long past) is not."""
  return stat.st_ino, stat.st_mtime_ns


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except OSError:
    return True  # e.g. another user's process
  return True


class RunLock:
  """`WORKDIR/run.lock`, created atomically by the run that uses it.

  It holds the host, PID, start time and command of the run; a thread
  touches it every `HEARTBEAT_S` seconds. Another run that finds it stops
  with a one-line error, unless the lock is stale: its process is gone (same
  host, dead PID) or it was not touched for `stale_after_s` (a crash on
  another host). A stale lock is reported and replaced.
  """

  def __init__(self, workdir: str, stale_after_s: float = STALE_AFTER_S,
               heartbeat_s: float = HEARTBEAT_S):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_FILE)
    self.stale_after_s = stale_after_s
    self.heartbeat_s = heartbeat_s
    self.info: Optional[Dict[str, Any]] = None
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None

  def acquire(self) -> None:
    info = {'host': socket.gethostname(), 'pid': os.getpid(),
            'started': now(), 'command': ' '.join(sys.argv)}
    for _ in range(5):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        self._replace_if_stale()
        continue
      except OSError as e:
        raise UserError(f'cannot write in the workdir {self.workdir!r} '
                        f'({e.strerror}); give a writable --workdir'
                        ) from None
      try:
        with os.fdopen(fd, 'w') as f:
          json.dump(info, f)
          f.write('\n')
      except OSError as e:  # a full disk: no half-written lock stays
        os.remove(self.path)
        raise disk.write_failed('the run lock', self.path, e,
                                resumes='its last checkpoint, if any'
                                ) from None
      self.info = info
      self._thread = threading.Thread(target=self._beat, daemon=True,
                                      name='run-lock-heartbeat')
      self._thread.start()
      return
    raise UserError(f'could not lock {self.path}: other runs keep starting '
                    'on this workdir; start one run at a time.')

  def _replace_if_stale(self) -> None:
    try:
      stat = os.stat(self.path)
    except FileNotFoundError:
      return
    age = time.time() - stat.st_mtime
    try:
      with open(self.path) as f:
        other = json.load(f)
    except (OSError, ValueError):
      other = {}  # being written just now, or garbled: judged by its age
    host, pid = other.get('host'), other.get('pid')
    why = None
    if host == socket.gethostname() and isinstance(pid, int):
      if pid == os.getpid():
        why = 'an earlier run in this process'
      elif not _pid_alive(pid):
        why = f'process {pid} on this host has exited'
    if why is None and age > self.stale_after_s:
      why = f'not touched for {age / 60:.0f} min'
    if why is None:
      who = (f'host {host}, PID {pid}, started {other.get("started")}'
             if other else 'a run starting just now')
      raise UserError(
          f'the workdir {self.workdir!r} is in use by another run ({who}); '
          'wait for it to finish or stop it, or use another --workdir. If '
          f'no run uses it any more, delete {self.path}.')
    aside = f'{self.path}.stale.{os.getpid()}'
    try:
      if _identity(os.stat(self.path)) != _identity(stat):
        return  # replaced meanwhile: judge the new one
      os.rename(self.path, aside)
    except FileNotFoundError:
      return  # another run took it over first
    if _identity(os.stat(aside)) != _identity(stat):
      # Another run took the stale lock over between the check and the
      # rename, and this moved its fresh lock: put it back (a link fails
      # rather than overwrite a third run's lock) and judge it again.
      try:
        os.link(aside, self.path)
      except FileExistsError:
        pass
      except OSError:  # no hard links on this filesystem
        os.replace(aside, self.path)
        return
      os.remove(aside)
      return
    os.remove(aside)
    warn(f'{self.path} was left by a run that is gone ({why}); taking it '
          'over.')

  def _beat(self) -> None:
    while not self._stop.wait(self.heartbeat_s):
      try:
        os.utime(self.path)
      except OSError:
        pass

  def release(self) -> None:
    if self.info is None:
      return
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    try:
      with open(self.path) as f:
        holder = json.load(f)
      if (holder.get('host'), holder.get('pid')) == (self.info['host'],
                                                     self.info['pid']):
        os.remove(self.path)
    except (OSError, ValueError):
      pass
    self.info = None
