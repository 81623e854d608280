"""Orbax checkpoints of the train state and the host-side run state.

A checkpoint is taken at the end of an epoch and named by the number of
finished epochs. It holds the `TrainState` and a JSON item with everything the
host loop needs to continue exactly (the selector's state, the epoch). Orbax
writes into a temporary directory and renames it when complete, so a run
killed while saving leaves the previous checkpoint intact.

A checkpoint damaged afterwards (a truncated or deleted file, garbled
metadata, an empty step folder) is not fatal: `restore_latest` falls back to
the newest one that restores, and moves the damaged ones aside into
`WORKDIR/checkpoints_damaged/` (never deletes them), with a one-line warning
for each. So is one whose arrays restore but hold NaN or inf (damaged bytes
inside a data file): a run never saves such a state, it stops first.

Each save is waited for (`maybe_save`), so that a failed one, e.g. on a full
disk, stops the run with a one-line `UserError` before another epoch is
trained; the previous checkpoint stays intact.
"""
import asyncio
import contextlib
import dataclasses
import functools
import glob
import logging
import os
import re
import shutil
from typing import Any, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from localsgd_jax import disk
from localsgd_jax import local_phase
from localsgd_jax.errors import UserError
from localsgd_jax.errors import warn

DAMAGED_DIR = 'checkpoints_damaged'
# Leaves that hold NaN before the run's first step (train_step.TrainState:
# the loss average starts empty); in a checkpoint after step 0 they are
# checked like the rest.
NAN_BEFORE_FIRST_STEP = ('loss_ema',)


class DamagedArrays(Exception):
  """A checkpoint restored, but some of its arrays hold NaN or inf."""


def step_folders(checkpoints_dir: str) -> List[int]:
  """The epochs of the step folders on disk (complete or not), ascending.

  Orbax's own list misses folders it does not recognise; a left-over folder
  would block saving that epoch again.
  """
  try:
    names = os.listdir(checkpoints_dir)
  except OSError:
    return []
  return sorted(int(n) for n in names if n.isdigit()
                and os.path.isdir(os.path.join(checkpoints_dir, n)))


def _short(e: BaseException) -> str:
  """One line for a failed restore: the innermost cause (Orbax wraps
  TensorStore's error, which says what is wrong, in a generic one)."""
  if isinstance(e, DamagedArrays):
    return str(e)
  while e.__cause__ is not None:
    e = e.__cause__
  text = (str(e).strip().splitlines() or [''])[0]
  text = re.sub(r' in OCDBT database at local file "[^"]*"', '', text)
  if len(text) > 160:
    text = text[:157] + '...'
  return f'{type(e).__name__}: {text}' if text else type(e).__name__


def _restore(manager: ocp.CheckpointManager, epoch: int, template: Any
             ) -> Tuple[Any, Dict[str, Any]]:
  """(state, host) of checkpoint `epoch`; its 'local_start' item (the local
  units' kernels at the start of their local phase), where it has one, as
  host['local_start'], placed like the state's (replicated) leaves."""
  restored = manager.restore(epoch, args=_restore_args(_stored(template)))
  host = dict(restored['host'])
  units = host.pop('local_start_units', None)
  if units:
    # The copies have the shapes and shardings of those units' kernels.
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, {
        u: local_phase.kernels(template.params[u]) for u in units})
    host['local_start'] = manager.restore(epoch, args=ocp.args.Composite(
        local_start=ocp.args.StandardRestore(abstract)))['local_start']
  state = restored['state']
  if dataclasses.is_dataclass(template):
    state = template.replace(**state)
  bad = _non_finite(state, 'state')
  if 'local_start' in host:
    bad += _non_finite(host['local_start'], 'local_start', check_all=True)
  if bad:
    more = f' and {len(bad) - 3} more' if len(bad) > 3 else ''
    raise DamagedArrays(f'its arrays hold NaN/inf (damaged bytes): '
                        f'{", ".join(bad[:3])}{more}')
  return state, host


def _stored(state: Any) -> Any:
  """What is saved of a train state: its fields but the None ones, as a
  dict, so that a state without a weight average (TrainState.ema) keeps the
  layout the checkpoints had before that field existed."""
  if not dataclasses.is_dataclass(state):
    return state
  return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)
          if getattr(state, f.name) is not None}


def _non_finite(tree: Any, prefix: str, check_all: bool = False
                ) -> List[str]:
  """The names ('state.opt_state.units_0...') of the floating-point leaves
  of `tree` that hold NaN or inf.

  The test runs where the arrays are (one reduction over all of them, also
  across processes for sharded arrays); only the flags come to the host.
  A NAN_BEFORE_FIRST_STEP leaf may be NaN while tree.step is 0, unless
  `check_all`.
  """
  leaves = [(_name(prefix, path), x) for path, x
            in jax.tree_util.tree_leaves_with_path(tree)
            if hasattr(x, 'dtype') and jnp.issubdtype(x.dtype, jnp.inexact)]
  if not leaves:
    return []
  fresh = (not check_all and hasattr(tree, 'step')
           and int(jax.device_get(tree.step)) == 0)
  nan_ok = tuple(fresh and name.split('.')[-1] in NAN_BEFORE_FIRST_STEP
                 for name, _ in leaves)
  finite = jax.device_get(_finite_flags([x for _, x in leaves], nan_ok))
  return [name for (name, _), ok in zip(leaves, finite) if not ok]


@functools.partial(jax.jit, static_argnums=1)
def _finite_flags(leaves: List[jax.Array], nan_ok: Tuple[bool, ...]
                  ) -> jax.Array:
  return jnp.stack([jnp.all(jnp.isfinite(x) | jnp.isnan(x) if ok
                            else jnp.isfinite(x))
                    for x, ok in zip(leaves, nan_ok)])


def _name(prefix: str, path) -> str:
  keys = [getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))
          for k in path]
  return '.'.join([prefix, *map(str, keys)])


def _restore_args(template: Any) -> ocp.args.Composite:
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
  return ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                            host=ocp.args.JsonRestore())


class Checkpointer(contextlib.AbstractContextManager):
  """Saves every `every_epochs` epochs, keeps the last `keep`."""

  def __init__(self, workdir: str, every_epochs: int, keep: int,
               primary: bool = True):
    """Raises UserError if the checkpoints folder cannot be created."""
    self.every_epochs = every_epochs
    self.workdir = workdir
    self.directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    # Only process 0 moves damaged checkpoints aside.
    self._primary = primary
    self._failed = False  # a save failed (and was reported)
    _quiet_orbax_failures()
    try:
      self._manager = ocp.CheckpointManager(
          self.directory,
          options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
          item_names=('state', 'host', 'local_start'))
    except Exception as e:  # pylint: disable=broad-except
      error = disk.os_error(e)
      if error is None:
        raise
      raise disk.write_failed('the checkpoints folder', self.directory,
                                     error) from None

  def maybe_save(self, epoch: int, state: Any, host: Dict[str, Any],
                 force: bool = False,
                 local_start: Optional[Dict[str, Any]] = None) -> bool:
    """Saves after `epoch` finished epochs if it is due (or `force`).

    `local_start`: {unit: kernels} of the local units at the start of their
    local phase (loop.TrainLoop.local_phase), saved as the 'local_start'
    item; restored into host['local_start'].
    """
    if not force and epoch % self.every_epochs:
      return False
    local_start = local_start or {}
    items = {'state': ocp.args.StandardSave(_stored(state)),
             'host': ocp.args.JsonSave(
                 {**host, 'local_start_units': sorted(local_start)})}
    if local_start:
      items['local_start'] = ocp.args.StandardSave(local_start)
    try:
      self._manager.save(epoch, args=ocp.args.Composite(**items), force=True)
      # Orbax writes in the background: wait, so that a failed save stops
      # the run before it trains another epoch.
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      error = disk.os_error(e)
      if error is None:
        raise
      self._failed = _QUIET['save_failed'] = True
      raise self._save_failed(epoch, error, state) from None
    return True

  def _save_failed(self, epoch: int, error: OSError, state: Any
                   ) -> UserError:
    """The UserError of a save that failed on `error` (e.g. a full disk).

    Orbax's unfinished temporary folder of that save is removed (it never
    restores and holds the space); the checkpoints before it are intact.
    """
    if self._primary:
      for tmp in glob.glob(os.path.join(
          self.directory, f'{epoch}.orbax-checkpoint-tmp*')):
        shutil.rmtree(tmp, ignore_errors=True)
    kept = [e for e in step_folders(self.directory) if e != epoch]
    if kept:
      size = ('the last checkpoint takes ' + disk.size_text(disk.folder_bytes(
          os.path.join(self.directory, str(kept[-1])))))
    else:
      size = 'the state holds ' + disk.size_text(sum(
          x.nbytes for x in jax.tree.leaves(state) if hasattr(x, 'nbytes')))
    return disk.write_failed(
        f'the checkpoint after epoch {epoch} to', self.directory, error,
        size=size,
        resumes=(f'the checkpoint after epoch {kept[-1]}, kept intact' if kept
                 else 'the start: no checkpoint was written yet'))

  def restore_latest(self, template: Any
                     ) -> Optional[Tuple[int, Any, Dict[str, Any]]]:
    """(epoch, state, host) of the newest checkpoint that restores, or None.

    `template` is a state with the right structure, shapes and shardings
    (e.g. the freshly initialised one); the restored arrays take its
    shardings. Newer checkpoints that fail to restore are moved aside into
    `WORKDIR/checkpoints_damaged/` with a warning naming each.

    Raises:
      UserError: there are checkpoints but none restores (nothing is moved).
    """
    epochs = sorted(set(self._manager.all_steps())
                    | set(step_folders(self.directory)), reverse=True)
    failed = []
    for epoch in epochs:
      try:
        state, host = _restore(self._manager, epoch, template)
      except Exception as e:  # pylint: disable=broad-except
        failed.append((epoch, e))
        continue
      if failed:
        self._move_aside(failed, epoch)
      return epoch, state, host
    if failed:
      tried = '; '.join(f'after epoch {epoch}: {_short(e)}'
                        for epoch, e in failed)
      raise UserError(
          f'no checkpoint in {self.directory} can be restored ({tried}). '
          f'Move that folder aside (e.g. mv {self.directory} '
          f'{os.path.join(os.path.abspath(self.workdir), DAMAGED_DIR)}) to '
          'train this run again from the start, or use a new --workdir.')
    return None

  def _move_aside(self, failed: List[Tuple[int, Exception]],
                  resumed: int) -> None:
    damaged = os.path.join(os.path.dirname(self.directory), DAMAGED_DIR)
    for epoch, e in failed:
      source = os.path.join(self.directory, str(epoch))
      where = 'left in place (process 0 moves it)'
      if self._primary and os.path.isdir(source):
        os.makedirs(damaged, exist_ok=True)
        target = os.path.join(damaged, str(epoch))
        n = 1
        while os.path.exists(target):
          target = os.path.join(damaged, f'{epoch}.{n}')
          n += 1
        shutil.move(source, target)
        where = f'moved to {target}'
      warn(f'the checkpoint after epoch {epoch} in {self.directory} cannot '
           f'be restored ({_short(e)}); {where}; resuming from the one after '
           f'epoch {resumed}.')
    self._manager.reload()

  def __exit__(self, *exc_info) -> None:
    self.close()

  def close(self) -> None:
    """Waits for the last save and closes; after a failed save (already
    reported by `maybe_save`) without raising again."""
    for step in (self._manager.wait_until_finished, self._manager.close):
      try:
        step()
      except Exception:  # pylint: disable=broad-except
        if not self._failed:
          raise


def restore_from(workdir: str, epoch: Optional[int], template: Any
                 ) -> Tuple[int, Any, Dict[str, Any]]:
  """(epoch, state, host) of another run's checkpoint, read-only (a fork).

  Args:
    workdir: the other run's workdir.
    epoch: which checkpoint (finished epochs); None: its latest.
    template: as in `Checkpointer.restore_latest`.

  Raises:
    UserError: there is no such checkpoint, or it does not restore.
  """
  directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
  available = step_folders(directory)
  if epoch is None and available:
    epoch = available[-1]
  if epoch not in available:
    have = (f'it has the ones after epochs '
            f'{", ".join(map(str, available))}' if available
            else 'it has none')
    raise UserError(f'config.init_from: {directory} has no checkpoint after '
                    f'epoch {epoch} ({have}); choose one of those (a run '
                    'keeps the last config.checkpoint.keep).')
  _quiet_orbax_failures()
  manager = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(read_only=True,
                                                      create=False),
      item_names=('state', 'host', 'local_start'))
  try:
    state, host = _restore(manager, epoch, template)
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f'config.init_from: the checkpoint after epoch {epoch} '
                    f'in {directory} cannot be restored ({_short(e)}); fork '
                    'from another epoch of that run.') from None
  finally:
    manager.close()
  return epoch, state, host


# Process-wide: whether `_quiet_orbax_failures` is installed, and whether a
# save has failed (then Orbax's later errors are its consequences).
_QUIET = {'installed': False, 'save_failed': False}


def _quiet_orbax_failures() -> None:
  """Keeps a failed Orbax read or write to the one line this module prints.

  * When one of the reads of a restore (or the writes of a save) fails,
    Orbax's event loop stops and closes with its sibling reads still
    pending: as they finish they print 'RuntimeError: Event loop is closed'
    tracebacks, and their coroutines, collected later (or at exit), print
    more. Orbax's loop runner is wrapped so that, on a failure, it lets the
    pending tasks finish before it closes the loop.
  * Orbax logs a failed save's out-of-space (or read-only, quota) error, with
    tracebacks, from each thread it passes through, and its threads still
    pending at exit log more; `maybe_save` raises it as one line, so those
    log records are dropped (after a failed save, all of Orbax's errors).

  Installed once per process.
  """
  if _QUIET['installed']:
    return
  _QUIET['installed'] = True
  try:
    from orbax.checkpoint._src import asyncio_utils  # pylint: disable=g-import-not-at-top
  except ImportError:
    asyncio_utils = None
  if getattr(asyncio_utils, '_run_sync_via_new_loop', None) is not None:
    asyncio_utils._run_sync_via_new_loop = _run_draining  # pylint: disable=protected-access
  logging.getLogger('absl').addFilter(_drop_orbax_disk_errors)


def _run_draining(coro):
  """Orbax's asyncio_utils._run_sync_via_new_loop, but when `coro` fails the
  loop's other tasks are awaited before it closes."""
  loop = asyncio.new_event_loop()
  try:
    asyncio.set_event_loop(loop)
    try:
      return loop.run_until_complete(coro)
    except Exception:
      pending = asyncio.all_tasks(loop)
      if pending:
        loop.run_until_complete(
            asyncio.gather(*pending, return_exceptions=True))
      raise
  finally:
    asyncio.set_event_loop(None)
    loop.close()


def _drop_orbax_disk_errors(record: logging.LogRecord) -> bool:
  """False (drop) for Orbax's log records of a disk error, and for all
  its errors after a failed save."""
  if os.sep + 'orbax' + os.sep not in record.pathname:
    return True
  if _QUIET['save_failed'] and record.levelno >= logging.ERROR:
    return False
  exc = record.exc_info[1] if record.exc_info else None
  return (exc is None or disk.os_error(exc) is None) and disk.os_error(
      Exception(record.getMessage())) is None
