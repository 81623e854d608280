"""A workdir you can trust: one run at a time, and the run it holds.

Besides the training outputs a workdir holds (process 0 writes them):

* `config.json`: the resolved config of its run. On resume the new config
  is compared with it (`resume_check.py`). A field that changes the result
  (model, data, batch size, optimizer and schedule, epochs, selection, local
  rule, seed, dtype, ...) stops the run with a one-line error that lists the
  changes and the ways on: a new workdir, or, for changes that can continue
  the run, `config.resume_allow` naming them (the change is then recorded).
  Fields that do not change the result (`resume_check.RESULT_NEUTRAL`:
  evaluation batch and cadence, logging, checkpointing, caches; the
  selection and local-rule fields of a plain-SGD run) pass, and so do the
  data's location fields (`DATA_LOCATION`) when the data itself is the same.
* `run.json`: the data's fingerprint (`Dataset.fingerprint`),
  the run it was forked from (`config.init_from`: parent workdir and epoch)
  and each change allowed on resume, with the epoch it took effect after.
* `run.lock` while a run uses the workdir (`workdir_lock.RunLock`): host,
  PID and start time. A second run on the workdir stops with a one-line
  error; a lock left by a run that died (same host and a dead PID, or no
  heartbeat for `STALE_AFTER_S`) is reported and taken over.

`open_run` does all of this before the first step, and only after the
config and the data were checked: a bad command creates nothing.
"""
import contextlib
import os
import shutil
from typing import Any, Dict, List, Optional, Tuple

import ml_collections
import numpy as np

from localsgd_jax import checkpointing
from localsgd_jax import metrics as metrics_lib
from localsgd_jax.config_fields import as_dict, matches, parse_init_from
from localsgd_jax.errors import UserError
from localsgd_jax.errors import warn
from localsgd_jax.resume_check import (
    CONFIG_FILE, DATA_CONTENTS, DATA_LOCATION, FIXED, RECORD_FILE,
    SUMMARY_FILE, Resume, check_resume, config_changes, fingerprint_change,
    read_json)
from localsgd_jax.workdir_lock import RunLock, create, now


# -------------------------------------------------------------------- forks


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
  parent_config = read_json(os.path.join(parent, CONFIG_FILE))
  parent_data = (read_json(os.path.join(parent, RECORD_FILE)) or {}).get(
      'data')
  changes = []
  if parent_config is not None:
    changes = [c for c in config_changes(parent_config, new)
               if c.field != 'init_from']
  if fingerprint is not None and parent_data is not None:
    changes = [c for c in changes if not matches(c.field, DATA_LOCATION)]
    data_change = fingerprint_change(parent_data, fingerprint)
    if data_change is not None:
      changes.append(data_change)
  # A fork may take another seed (its data order and augmentation from
  # the fork on; recorded below), which no resume may.
  fixed = [c for c in changes if c.field == DATA_CONTENTS
           or (matches(c.field, FIXED) and c.field != 'seed')]
  if fixed:
    raise UserError(
        f'config.init_from: cannot fork {parent!r} into this config: '
        f'{", ".join(map(str, fixed))}; a fork keeps the model, the data '
        'and the optimizer.')
  differs = {c.field: c.record() for c in changes}
  if parent_config is None:
    # A run of an older version: only its data (run.json) and, when it is
    # restored, its model (the checkpoint's shapes) can be checked.
    differs = None
    checked = ('its data matches the one in its run.json' if parent_data
               is not None and fingerprint is not None else
               'its data cannot be checked either (no run.json)')
    warn(f'config.init_from: {parent!r} has no {CONFIG_FILE} (a run of an '
         f'older version): its config cannot be compared with this one; '
         f'{checked}; forking it as the same model, data and optimizer.')
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


class Run(contextlib.AbstractContextManager):
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
    self.created = False  # whether open_run made the workdir (process 0)
    self._record: Dict[str, Any] = {}
    self._start_epoch = 0
    self._committed = False

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
    changes = self.fork['differs_from_parent']
    differs = ('unknown: it has no config.json' if changes is None else
               ', '.join(f'{k} {v[0]!r} -> {v[1]!r}' for k, v in
                         changes.items()) or 'nothing')
    if self.primary:
      print(f'Forking {parent} after epoch {restored[0]} (differs from it '
            f'in: {differs}); recorded in '
            f'{os.path.join(self.workdir, RECORD_FILE)}', flush=True)
    return restored, rows

  def started(self, start_epoch: int) -> None:
    """Prepares the run's record (config, data, history) before its first
    step; `commit` writes it after the run's first checkpoint.

    Nothing is written here: a run that stops before its first checkpoint
    (a NaN, a signal, a full disk) leaves config.json, run.json and
    summary.json as it found them, so the command that made them still
    resumes.
    """
    self._start_epoch = start_epoch
    if not self.primary:
      return
    path = os.path.join(self.workdir, RECORD_FILE)
    # A run started afresh (or forked) has no history yet.
    record = {} if self.resume.epoch is None else (read_json(path) or {})
    record['data'] = self.fingerprint
    if self.fork is not None:
      record['fork'] = dict(self.fork, time=now())
    if self.resume.allowed:
      fields = {c.field: c.record() for c in self.resume.allowed}
      record.setdefault('resumed_with_changes', []).append(
          {'after_epoch': start_epoch, 'changes': fields, 'time': now()})
      print(f'Resuming after epoch {start_epoch} with '
            f'{", ".join(map(str, self.resume.allowed))} '
            f'(config.resume_allow); recorded in {path} with the next '
            'checkpoint', flush=True)
    self._record = record

  def commit(self, git_commit: str) -> None:
    """Writes config.json, run.json and git_commit.txt, and removes the
    summary.json the epochs since `started` supersede (an extended run is
    unfinished until it ends). Called once the run's first checkpoint is
    saved (a save that fails leaves the old record); later calls do
    nothing.

    From then on the workdir holds this run's config and checkpoints.
    """
    if self._committed:
      return
    self._committed = True
    if not self.primary:
      return
    metrics_lib.write_json(os.path.join(self.workdir, RECORD_FILE),
                           self._record)
    metrics_lib.write_json(os.path.join(self.workdir, CONFIG_FILE),
                           self.config)
    with open(os.path.join(self.workdir, 'git_commit.txt'), 'w') as f:
      f.write(git_commit + '\n')
    summary = os.path.join(self.workdir, SUMMARY_FILE)
    if (self._start_epoch < self.config['num_epochs']
        and os.path.exists(summary)):
      os.remove(summary)

  def summary_fields(self) -> Dict[str, Any]:
    """The fork and resume history, for summary.json."""
    return {key: self._record[key] for key in ('fork', 'resumed_with_changes')
            if key in self._record}

  def __exit__(self, exc_type, *exc_info) -> None:
    self.close(failed=exc_type is not None)

  def close(self, failed: bool = False) -> None:
    """Releases the lock. `failed` (the run stopped on an error) in a
    workdir this run created, before it saved a checkpoint, removes the
    workdir again (a fork that diverges, a full disk): a command that fails
    before it has anything to resume from leaves nothing behind."""
    if self.lock is not None:
      self.lock.release()
    if (failed and self.created and not self._committed
        and not checkpointing.step_folders(
            os.path.join(self.workdir, 'checkpoints'))):
      shutil.rmtree(self.workdir, ignore_errors=True)


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
      run.created = not os.path.exists(workdir)
      create(workdir)
      run.lock.acquire()
  except UserError as e:
    error = e
  if not _all_agree(error is None):
    if run is not None:
      run.close(failed=True)  # a workdir made here goes again
    raise error or UserError(f'another process could not start the run in '
                             f'{workdir!r}; see the error of process 0')
  return run


def finished_run(workdir: str, config: ml_collections.ConfigDict) -> bool:
  """Whether `workdir` holds a finished run of `config` (compare.py skips
  it); raises the UserError of a resume for a changed config."""
  return check_resume(workdir, as_dict(config)).finished
