"""Orbax checkpoints of the train state and the host-side run state.

A checkpoint is taken at the end of an epoch and named by the number of
finished epochs. It holds the `TrainState` and a JSON item with everything the
host loop needs to continue exactly (the selector's state, the epoch). Orbax
writes into a temporary directory and renames it when complete, so a run
killed while saving leaves the previous checkpoint intact.
"""
import os
from typing import Any, Dict, Optional, Tuple

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves every `every_epochs` epochs, keeps the last `keep`."""

  def __init__(self, workdir: str, every_epochs: int, keep: int):
    self.every_epochs = every_epochs
    self._manager = ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, 'checkpoints')),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        item_names=('state', 'host'))

  def latest_epoch(self) -> Optional[int]:
    return self._manager.latest_step()

  def maybe_save(self, epoch: int, state: Any, host: Dict[str, Any],
                 force: bool = False) -> bool:
    """Saves after `epoch` finished epochs if it is due (or `force`)."""
    if not force and epoch % self.every_epochs:
      return False
    self._manager.save(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), host=ocp.args.JsonSave(host)),
                       force=True)
    return True

  def restore_latest(self, template: Any
                     ) -> Optional[Tuple[int, Any, Dict[str, Any]]]:
    """(epoch, state, host) of the latest checkpoint, or None.

    `template` is a state with the right structure, shapes and shardings
    (e.g. the freshly initialised one); the restored arrays take its
    shardings.
    """
    epoch = self._manager.latest_step()
    if epoch is None:
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    restored = self._manager.restore(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), host=ocp.args.JsonRestore()))
    return epoch, restored['state'], restored['host']

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
