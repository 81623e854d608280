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
for each.
"""
import os
import shutil
import sys
from typing import Any, Dict, List, Optional, Tuple

import jax
import orbax.checkpoint as ocp

from localsgd_jax import local_phase
from localsgd_jax.errors import UserError

DAMAGED_DIR = 'checkpoints_damaged'


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
  text = (str(e).strip().splitlines() or [''])[0]
  if len(text) > 160:
    text = text[:157] + '...'
  return f'{type(e).__name__}: {text}' if text else type(e).__name__


def _restore(manager: ocp.CheckpointManager, epoch: int, template: Any
             ) -> Tuple[Any, Dict[str, Any]]:
  """(state, host) of checkpoint `epoch`; its 'local_start' item (the local
  units' kernels at the start of their local phase), where it has one, as
  host['local_start'], placed like the state's (replicated) leaves."""
  restored = manager.restore(epoch, args=_restore_args(template))
  host = dict(restored['host'])
  units = host.pop('local_start_units', None)
  if units:
    # The copies have the shapes and shardings of those units' kernels.
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, {
        u: local_phase.kernels(template.params[u]) for u in units})
    host['local_start'] = manager.restore(epoch, args=ocp.args.Composite(
        local_start=ocp.args.StandardRestore(abstract)))['local_start']
  return restored['state'], host


def _restore_args(template: Any) -> ocp.args.Composite:
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
  return ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                            host=ocp.args.JsonRestore())


class Checkpointer:
  """Saves every `every_epochs` epochs, keeps the last `keep`."""

  def __init__(self, workdir: str, every_epochs: int, keep: int,
               primary: bool = True):
    self.every_epochs = every_epochs
    self.workdir = workdir
    self.directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    # Only process 0 moves damaged checkpoints aside.
    self._primary = primary
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        item_names=('state', 'host', 'local_start'))

  def latest_epoch(self) -> Optional[int]:
    return self._manager.latest_step()

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
    items = {'state': ocp.args.StandardSave(state),
             'host': ocp.args.JsonSave(
                 {**host, 'local_start_units': sorted(local_start)})}
    if local_start:
      items['local_start'] = ocp.args.StandardSave(local_start)
    self._manager.save(epoch, args=ocp.args.Composite(**items), force=True)
    return True

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
      print(f'warning: the checkpoint after epoch {epoch} in '
            f'{self.directory} cannot be restored ({_short(e)}); {where}; '
            f'resuming from the one after epoch {resumed}.',
            file=sys.stderr, flush=True)
    self._manager.reload()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


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
