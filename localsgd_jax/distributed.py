"""Starting JAX's multi-process runtime (several hosts, or one process per GPU).

One process per host (or per GPU) runs the same program. After
`jax.distributed.initialize`, `jax.devices()` lists the devices of every
process, so the trainer's mesh spans all of them and its jitted step runs as
one SPMD program; each process feeds only the rows of the global batch that
its own devices hold (`data/dataset.py`).

`initialize` must run before any JAX computation: the backends read the
process topology when they start.
"""
import os

import jax
from absl import logging

from localsgd_jax.errors import UserError

# Environments that `jax.distributed.initialize()` configures by itself
# (jax/_src/clusters): variable that marks the launcher -> its process count.
_CLUSTER_PROCESS_COUNTS = (
    ('SLURM_JOB_ID', 'SLURM_NTASKS'),                     # srun
    ('OMPI_MCA_orte_hnp_uri', 'OMPI_COMM_WORLD_SIZE'),    # Open MPI mpirun
)


def cluster_process_count() -> int:
  """Processes a cluster launcher started for this job (1 if none is seen).

  Only launchers that JAX can configure without arguments count; a SLURM
  allocation that runs a single task is a single-process run.
  """
  for marker, count in _CLUSTER_PROCESS_COUNTS:
    if marker in os.environ:
      try:
        return max(1, int(os.environ.get(count, '1')))
      except ValueError:
        return 1
  return 1


def initialize(coordinator_address: str = '', num_processes: int = 0,
               process_id: int = -1) -> bool:
  """Joins this process to a multi-process JAX run when there is one.

  Long because of its three cases and their one-line errors, below.

  Three cases:
    * explicit values (`coordinator_address`, with `num_processes` > 1): they
      are passed to `jax.distributed.initialize`; unset ones (0, -1) are left
      to JAX's own cluster detection;
    * none given but a cluster launcher started several processes (SLURM's
      `srun`, Open MPI's `mpirun`): `jax.distributed.initialize()` reads
      everything from the environment (`JAX_COORDINATOR_PORT` or
      `JAX_COORDINATOR_ADDRESS` still override the coordinator);
    * otherwise: a single-process run, nothing is done.

  On the CPU backend, cross-process collectives need an implementation
  (gloo); it is selected here when this JAX version has none by default.

  Args:
    coordinator_address: 'host:port' of process 0 ('' = not given).
    num_processes: total processes (0 = not given).
    process_id: this process's index in [0, num_processes) (-1 = not given).

  Returns:
    True if JAX's distributed runtime is initialized after the call.

  Raises:
    UserError: the values are inconsistent.
  """
  if jax.distributed.is_initialized():
    return True
  explicit = bool(coordinator_address) or num_processes > 0 or process_id >= 0
  if explicit:
    if num_processes == 1:
      return False  # Asked for a single process: nothing to coordinate.
    if process_id < -1 or (num_processes > 1 and process_id >= num_processes):
      raise UserError(f'--process_id={process_id} must be in [0, '
                      f'{num_processes}) for --num_processes={num_processes}.')
    complete = coordinator_address and num_processes > 1 and process_id >= 0
    # Under a cluster launcher JAX fills in whatever is missing.
    if not complete and cluster_process_count() <= 1:
      raise UserError(
          'a multi-process run needs --coordinator_address=HOST:PORT, '
          '--num_processes=N (> 1) and --process_id=I on every process '
          '(or a SLURM/Open MPI launcher that sets them); got '
          f'coordinator_address={coordinator_address!r}, '
          f'num_processes={num_processes}, process_id={process_id}.')
    kwargs = {'coordinator_address': coordinator_address or None,
              'num_processes': num_processes if num_processes > 0 else None,
              'process_id': process_id if process_id >= 0 else None}
  elif cluster_process_count() > 1:
    kwargs = {}
  else:
    return False
  # Older JAX versions have no CPU collectives by default, and without them a
  # CPU mesh that spans processes cannot all-reduce.
  if jax.config.jax_cpu_collectives_implementation is None:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(**kwargs)
  logging.info('JAX distributed: process %d of %d, %d local / %d devices',
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  return True


def is_primary() -> bool:
  """Whether this process writes the run's files (metrics, summaries)."""
  return jax.process_index() == 0
