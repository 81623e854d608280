"""A workdir you can trust: one run at a time, and the run it holds.

Besides the training outputs a workdir holds (process 0 writes them):

* `config.json`: the resolved config of its run. On resume the new config
  is compared with it (`check_resume`). A field that changes the result
  (model, data, batch size, optimizer and schedule, epochs, selection, local
  rule, seed, dtype, ...) stops the run with a one-line error that lists the
  changes and the ways on: a new workdir, or, for changes that can continue
  the run, `config.resume_allow` naming them (the change is then recorded).
  Fields that do not change the result (`RESULT_NEUTRAL`: evaluation batch
  and cadence, logging, checkpointing, caches; the selection and local-rule
  fields of a plain-SGD run) pass, and so do the data's location fields
  (`DATA_LOCATION`) when the data itself is the same.
* `run.json`: the data's fingerprint (`data_fingerprint`), the run it was
  forked from (`config.init_from`: parent workdir and epoch) and each change
  allowed on resume, with the epoch it took effect after.
* `run.lock` while a run uses the workdir (`RunLock`): host, PID and start
  time. A second run on the workdir stops with a one-line error; a lock left
  by a run that died (same host and a dead PID, or no heartbeat for
  `STALE_AFTER_S`) is reported and taken over.

`open_run` does all of this before the first step, and only after the
config and the data were checked: a bad command creates nothing.
"""
import dataclasses
import datetime
import difflib
import json
import os
import socket
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import ml_collections
import numpy as np

from localsgd_jax import checkpointing
from localsgd_jax import metrics as metrics_lib
from localsgd_jax.errors import UserError

CONFIG_FILE = 'config.json'
RECORD_FILE = 'run.json'
LOCK_FILE = 'run.lock'
SUMMARY_FILE = 'summary.json'

# Fields (or groups, by prefix) that never change what a run computes.
RESULT_NEUTRAL = ('eval_batch_size', 'eval_every_epochs', 'compile_cache_dir',
                  'resume_allow', 'log', 'checkpoint', 'data.cache_dir')
# ...and, between two plain-SGD configs (selection.mode sgd), these.
SGD_NEUTRAL = ('selection', 'local')
# Where the data is read from: they pass when the data is the same (its
# fingerprint in run.json), else they count as changes.
DATA_LOCATION = ('data.dir', 'data.tfds_data_dir', 'data.storage',
                 'data.max_memory_gb')
# Changes that cannot continue a run, resume_allow or not: the checkpoint
# would not fit the model or the data, or it would be another run.
FIXED = ('model', 'data.name', 'data.image_size', 'data.train_per_class',
         'data.holdout_per_class', 'data.holdout_seed', 'optim.name',
         'init_from')
DATA_CONTENTS = 'data contents'  # a change of the data's fingerprint

HEARTBEAT_S = 60.0        # the lock holder touches the lock this often
STALE_AFTER_S = 15 * 60.0  # a lock untouched for this long is stale

_ABSENT = object()


def _now() -> str:
  return datetime.datetime.now().astimezone().isoformat(timespec='seconds')


def _warn(message: str) -> None:
  print(f'warning: {message}', file=sys.stderr, flush=True)


def _matches(key: str, names: Sequence[str]) -> bool:
  return any(key == n or key.startswith(n + '.') for n in names)


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


def _defaults() -> Dict[str, Any]:
  """configs/default.py, flattened ({} if it cannot be imported)."""
  try:
    from localsgd_jax.configs import default  # pylint: disable=g-import-not-at-top
  except ImportError:
    return {}
  return flatten(as_dict(default.get_config()))


@dataclasses.dataclass
class Change:
  """A config field that differs: `old` -> `new` (_ABSENT: not set)."""
  field: str
  old: Any
  new: Any

  def __str__(self) -> str:
    show = lambda v: '(unset)' if v is _ABSENT else repr(v)
    if self.field == DATA_CONTENTS:
      return f'{DATA_CONTENTS} ({self.new})'
    return f'{self.field} {show(self.old)} -> {show(self.new)}'

  def record(self) -> List[Any]:
    return [None if v is _ABSENT else v for v in (self.old, self.new)]


def config_changes(saved: Dict[str, Any], new: Dict[str, Any]
                   ) -> List[Change]:
  """The fields of `new` that differ from `saved`, but the neutral ones.

  A field `saved` lacks (added to the code after that run started) counts
  only if `new` sets it away from its default; a field `new` lacks (gone
  from the code) is ignored.
  """
  old_flat, new_flat = flatten(saved), flatten(new)
  neutral = RESULT_NEUTRAL
  if old_flat.get('selection.mode') == new_flat.get('selection.mode') == 'sgd':
    # Plain SGD: k stays 0, no unit ever learns locally.
    neutral += SGD_NEUTRAL
  defaults = None
  out = []
  for key in sorted(set(old_flat) | set(new_flat)):
    if _matches(key, neutral):
      continue
    old, value = old_flat.get(key, _ABSENT), new_flat.get(key, _ABSENT)
    if value is _ABSENT:
      continue
    if old is _ABSENT:
      defaults = _defaults() if defaults is None else defaults
      if key in defaults and defaults[key] == value:
        continue
    elif old == value:
      continue
    out.append(Change(key, old, value))
  return out


def data_fingerprint(dataset) -> Dict[str, Any]:
  """What identifies a dataset's contents: sizes, classes, shape, a hash."""
  fp = {'name': dataset.name, 'num_train': dataset.num_train,
        'num_eval': getattr(dataset, 'num_test', None),
        'num_classes': dataset.num_classes,
        'image_shape': list(dataset.image_shape),
        'eval_split': getattr(dataset, 'eval_split', 'test')}
  names = getattr(dataset, 'class_names', None)
  if names:
    fp['class_names'] = list(names)
  digest = getattr(dataset, 'content_digest', None)
  if callable(digest):
    fp['storage'], fp['content'] = 'memory', digest()
  else:
    fp['storage'] = 'stream'
    if getattr(dataset, 'files_digest', None):
      fp['files'] = dataset.files_digest
  return fp


def _fingerprint_change(old: Dict[str, Any], new: Dict[str, Any]
                        ) -> Optional[Change]:
  diff = []
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key), new.get(key)
    if a == b:
      continue
    if key in ('content', 'files', 'class_names'):
      diff.append(f'{key} differ')
    else:
      diff.append(f'{key} {a!r} -> {b!r}')
  if not diff:
    return None
  return Change(DATA_CONTENTS, None, ', '.join(diff))


def _read_json(path: str) -> Optional[Dict[str, Any]]:
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError) as e:
    raise UserError(f'{path} cannot be read ({e}); restore it, or move it '
                    'aside to resume without the check it serves.') from None


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


def _create(workdir: str) -> None:
  check_path(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise UserError(f'cannot create the workdir {workdir!r} ({e.strerror}); '
                    'give a writable --workdir') from None


# ------------------------------------------------------------------ the lock


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
            'started': _now(), 'command': ' '.join(sys.argv)}
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
      with os.fdopen(fd, 'w') as f:
        json.dump(info, f)
        f.write('\n')
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
      if os.stat(self.path).st_ino != stat.st_ino:
        return  # replaced meanwhile: judge the new one
      os.rename(self.path, aside)
      os.remove(aside)
    except FileNotFoundError:
      return  # another run took it over first
    _warn(f'{self.path} was left by a run that is gone ({why}); taking it '
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


# ------------------------------------------------------------------- resume


@dataclasses.dataclass
class Resume:
  """What `check_resume` found in a workdir."""
  epoch: Optional[int] = None   # its latest checkpoint folder; None: none
  saved_config: Optional[Dict[str, Any]] = None
  allowed: List[Change] = dataclasses.field(default_factory=list)
  data_unverified: bool = False  # location changed, fingerprint not checked
  summary: Optional[Dict[str, Any]] = None

  @property
  def finished(self) -> bool:
    """A finished run of the very same config (nothing left to train)."""
    return (self.summary is not None and self.saved_config is not None
            and not self.allowed and not self.data_unverified
            and self.summary.get('num_epochs') == self.epoch)


def _learning_rate(cfg: Dict[str, Any], steps_per_epoch: int,
                   epoch: int) -> float:
  from localsgd_jax import optim  # pylint: disable=g-import-not-at-top
  schedule = optim.learning_rate_schedule(
      ml_collections.ConfigDict(cfg['optim']), steps_per_epoch,
      cfg['num_epochs'])
  return float(schedule(epoch * steps_per_epoch))


def _schedule_note(saved: Dict[str, Any], new: Dict[str, Any], epoch: int,
                   steps_per_epoch: Optional[int]) -> str:
  """How the learning rate at the resume step changes, or ''."""
  if not steps_per_epoch:
    return ''
  try:
    old = _learning_rate(saved, steps_per_epoch, epoch)
    now = _learning_rate(new, steps_per_epoch, epoch)
  except Exception:  # pylint: disable=broad-except
    return ''  # an unreadable old config: no statement
  if old == now:
    return ''
  return (f'the learning-rate schedule is recomputed for '
          f'{new["num_epochs"]} epochs: the learning rate after epoch '
          f'{epoch} goes from {old:.4g} to {now:.4g}')


def check_resume(workdir: str, new: Dict[str, Any], *,
                 fingerprint: Optional[Dict[str, Any]] = None,
                 steps_per_epoch: Optional[int] = None,
                 quiet: bool = False) -> Resume:
  """Checks that `new` (as_dict) may continue the run in `workdir`.

  Args:
    workdir: the run's directory.
    new: the new config.
    fingerprint: the new data's `data_fingerprint`; None (compare.py's
      check before loading any data): changed location fields are left to
      the check at the start of the run (`data_unverified`).
    steps_per_epoch: for the learning-rate statement of the error.
    quiet: no warnings (processes other than 0).

  Raises:
    UserError: a change that resume_allow does not name, one that cannot
      continue the run, or fewer epochs than the checkpoint has.
  """
  epochs = checkpointing.step_folders(os.path.join(workdir, 'checkpoints'))
  if not epochs:
    return Resume()
  resume = Resume(epoch=epochs[-1])
  # Its later epochs cannot be undone: never relabelled as a shorter run.
  if new['num_epochs'] < resume.epoch:
    raise UserError(
        f'{workdir} holds a checkpoint after epoch {resume.epoch}, past '
        f'config.num_epochs={new["num_epochs"]}. Train a '
        f'{new["num_epochs"]}-epoch run in a new --workdir, or fork this '
        'one from an earlier checkpoint into a new --workdir: '
        f'--config.init_from={workdir}:{new["num_epochs"]}.')
  resume.saved_config = _read_json(os.path.join(workdir, CONFIG_FILE))
  resume.summary = _read_json(os.path.join(workdir, SUMMARY_FILE))
  if resume.saved_config is None:
    if not quiet:
      _warn(f'{workdir} has no {CONFIG_FILE} (a run of an older version): '
            'resuming without checking that the config is the one it was '
            'trained with.')
    return resume
  saved = resume.saved_config
  record = _read_json(os.path.join(workdir, RECORD_FILE)) or {}
  changes = config_changes(saved, new)
  location = [c for c in changes if _matches(c.field, DATA_LOCATION)]
  others = [c for c in changes if c not in location]
  if fingerprint is not None and record.get('data') is not None:
    data_change = _fingerprint_change(record['data'], fingerprint)
    if data_change is None:
      location = []  # the same data, wherever it is read from now
    else:
      others.append(data_change)
  elif fingerprint is None and location and record.get('data') is not None:
    resume.data_unverified, location = True, []
  changes = others + location
  allow = [a.strip() for a in str(new.get('resume_allow') or '').split(',')
           if a.strip()]
  fixed = [c for c in changes
           if c.field == DATA_CONTENTS or _matches(c.field, FIXED)]
  blocked = [c for c in changes
             if c in fixed or not _matches(c.field, allow)]
  listed = ', '.join(str(c) for c in changes)
  if fixed:
    raise UserError(
        f'{workdir} holds a run of another config: {listed}. '
        f'{", ".join(c.field for c in fixed)} cannot change within a run: '
        'train this config in a new --workdir.')
  if blocked:
    note = _schedule_note(saved, new, resume.epoch, steps_per_epoch)
    fields = ','.join(c.field for c in changes)
    raise UserError(
        f'{workdir} holds a run of another config: {listed}. Train this '
        'config in a new --workdir, or continue that run with the change '
        f'on purpose: --config.resume_allow={fields} (recorded in '
        f'{RECORD_FILE}{"; " + note if note else ""}).')
  resume.allowed = changes
  return resume


# -------------------------------------------------------------------- forks


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


def _check_fork(workdir: str, parent: str, new: Dict[str, Any],
                fingerprint: Optional[Dict[str, Any]]) -> Dict[str, Any]:
  """The fork's record so far; raises UserError for a parent that cannot
  be forked into this config."""
  if os.path.realpath(parent) == os.path.realpath(workdir):
    raise UserError(f'config.init_from names this run\'s own workdir '
                    f'{workdir!r}; a fork goes into a new --workdir')
  if not os.path.isdir(os.path.join(parent, 'checkpoints')):
    raise UserError(f'config.init_from: {parent!r} is not the workdir of a '
                    'run (it has no checkpoints/)')
  differs = {}
  parent_config = _read_json(os.path.join(parent, CONFIG_FILE))
  if parent_config is not None:
    changes = [c for c in config_changes(parent_config, new)
               if c.field != 'init_from']
    parent_record = _read_json(os.path.join(parent, RECORD_FILE)) or {}
    if fingerprint is not None and parent_record.get('data') is not None:
      changes = [c for c in changes if not _matches(c.field, DATA_LOCATION)]
      data_change = _fingerprint_change(parent_record['data'], fingerprint)
      if data_change is not None:
        changes.append(data_change)
    fixed = [c for c in changes
             if c.field == DATA_CONTENTS or _matches(c.field, FIXED)]
    if fixed:
      raise UserError(
          f'config.init_from: cannot fork {parent!r} into this config: '
          f'{", ".join(map(str, fixed))}; a fork keeps the model, the data '
          'and the optimizer.')
    differs = {c.field: c.record() for c in changes}
  commit = ''
  try:
    with open(os.path.join(parent, 'git_commit.txt')) as f:
      commit = f.read().strip()
  except OSError:
    pass
  return {'parent': os.path.abspath(parent), 'epoch': None,
          'parent_git_commit': commit, 'differs_from_parent': differs}


# ---------------------------------------------------------------- the run


def _all_agree(ok: bool) -> bool:
  """Whether every process got `ok` (one process: `ok`)."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


class Run:
  """The run in a workdir, as `open_run` found and locked it."""

  def __init__(self, workdir: str, config: Dict[str, Any],
               fingerprint: Dict[str, Any], resume: Resume,
               fork: Optional[Dict[str, Any]], primary: bool):
    self.workdir = workdir
    self.config = config
    self.fingerprint = fingerprint
    self.resume = resume
    self.fork = fork
    self.primary = primary
    self.lock = RunLock(workdir) if primary else None
    self._record: Dict[str, Any] = {}

  @property
  def forks(self) -> bool:
    """Whether this start is a fork (init_from, no checkpoint of its own)."""
    return self.fork is not None

  def restore_fork(self, template: Any
                   ) -> Tuple[Tuple[int, Any, Dict[str, Any]],
                              List[Dict[str, Any]]]:
    """((epoch, state, host), the parent's metrics rows up to epoch)."""
    parent, epoch = self.fork['parent'], self.fork['epoch']
    restored = checkpointing.restore_from(parent, epoch, template)
    self.fork['epoch'] = restored[0]
    rows = [r for r in metrics_lib.read_rows(
        os.path.join(parent, 'metrics.jsonl')) if r['epoch'] <= restored[0]]
    differs = ', '.join(f'{k} {v[0]!r} -> {v[1]!r}' for k, v in
                        self.fork['differs_from_parent'].items()) or 'nothing'
    if self.primary:
      print(f'Forking {parent} after epoch {restored[0]} (differs from it '
            f'in: {differs}); recorded in '
            f'{os.path.join(self.workdir, RECORD_FILE)}', flush=True)
    return restored, rows

  def started(self, start_epoch: int) -> None:
    """Records the run's config, data and history before its first step.

    Writes config.json and run.json and removes a summary.json the epochs
    to come will supersede (an extended run is unfinished until it ends).
    """
    if not self.primary:
      return
    path = os.path.join(self.workdir, RECORD_FILE)
    # A run started afresh (or forked) has no history yet.
    record = {} if self.resume.epoch is None else (_read_json(path) or {})
    record['data'] = self.fingerprint
    if self.fork is not None:
      record['fork'] = dict(self.fork, time=_now())
    if self.resume.allowed:
      fields = {c.field: c.record() for c in self.resume.allowed}
      record.setdefault('resumed_with_changes', []).append(
          {'after_epoch': start_epoch, 'changes': fields, 'time': _now()})
      print(f'Resuming after epoch {start_epoch} with '
            f'{", ".join(map(str, self.resume.allowed))} '
            f'(config.resume_allow); recorded in {path}', flush=True)
    self._record = record
    metrics_lib.write_json(path, record)
    metrics_lib.write_json(os.path.join(self.workdir, CONFIG_FILE),
                           self.config)
    summary = os.path.join(self.workdir, SUMMARY_FILE)
    if start_epoch < self.config['num_epochs'] and os.path.exists(summary):
      os.remove(summary)

  def summary_fields(self) -> Dict[str, Any]:
    """The fork and resume history, for summary.json."""
    return {key: self._record[key] for key in ('fork', 'resumed_with_changes')
            if key in self._record}

  def close(self) -> None:
    if self.lock is not None:
      self.lock.release()


def open_run(workdir: str, config: ml_collections.ConfigDict, *,
             fingerprint: Dict[str, Any], steps_per_epoch: int,
             primary: bool) -> Run:
  """Checks, creates and locks `workdir` for `config`; call `close()`.

  Every process checks the saved config (and the fork's parent); process 0
  creates the workdir and takes the lock. All processes stop with the same
  one-line error if any of this fails.
  """
  new = as_dict(config)
  run, error = None, None
  try:
    resume = check_resume(workdir, new, fingerprint=fingerprint,
                          steps_per_epoch=steps_per_epoch,
                          quiet=not primary)
    fork = None
    target = parse_init_from(new.get('init_from') or '', new['seed'])
    if resume.epoch is None and target is not None:
      fork = _check_fork(workdir, target[0], new, fingerprint)
      fork['epoch'] = target[1]
    run = Run(workdir, new, fingerprint, resume, fork, primary)
    if primary:
      _create(workdir)
      run.lock.acquire()
  except UserError as e:
    error = e
  if not _all_agree(error is None):
    if run is not None:
      run.close()
    raise error or UserError(f'another process could not start the run in '
                             f'{workdir!r}; see the error of process 0')
  return run


def finished_run(workdir: str, config: ml_collections.ConfigDict) -> bool:
  """Whether `workdir` holds a finished run of `config` (compare.py skips
  it); raises the UserError of a resume for a changed config."""
  return check_resume(workdir, as_dict(config)).finished


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks config.init_from and config.resume_allow (no file access)."""
  parse_init_from(config.get('init_from', '') or '', config.seed)
  fields = flatten(as_dict(config))
  for name in str(config.get('resume_allow', '') or '').split(','):
    name = name.strip()
    if name and not any(_matches(key, [name]) for key in fields):
      close = difflib.get_close_matches(name, list(fields), n=1)
      hint = f' (did you mean {close[0]}?)' if close else ''
      raise UserError(f'config.resume_allow names {name!r}, which is no '
                      f'config field{hint}; give dotted names such as '
                      'num_epochs,optim.learning_rate')
