"""What the command-line entry points (train.py, compare.py) share.

The --config flag (configs/quickstart.py by default, overrides as
--config.x=y), the multi-process flags, quiet library logging, and bad input
reported as one `error:` line with exit status 2 instead of a traceback.
"""
import os
import sys
from typing import Callable, List

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = config_flags.DEFINE_config_file(
    'config', os.path.join(_ROOT, 'configs', 'quickstart.py'),
    'Path to a config file (get_config()).', lock_config=True)
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', '',
    'Multi-process runs: HOST:PORT of process 0 (empty: single process, or '
    'read from a SLURM / Open MPI launcher).')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', 0, 'Multi-process runs: number of processes (0: unset).')
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', -1, 'Multi-process runs: index of this process (-1: unset).')


def run(body: Callable[[ml_collections.ConfigDict], None]) -> None:
  """Parses the flags and runs `body(config)` as the program's main."""

  def main(argv: List[str]) -> None:
    if len(argv) > 1:
      raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    if not flags.FLAGS['verbosity'].present:
      # Orbax logs every checkpoint step at INFO; -v 0 brings it back.
      logging.set_verbosity(logging.WARNING)
    # Imported here so that --help answers without loading JAX.
    from localsgd_jax import distributed  # pylint: disable=g-import-not-at-top
    from localsgd_jax.errors import UserError  # pylint: disable=g-import-not-at-top
    try:
      # Before any JAX computation: the backends read the process topology.
      distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value,
                             _PROCESS_ID.value)
      body(CONFIG.value)
    except UserError as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(2)

  app.run(main)
