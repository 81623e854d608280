"""What the command-line entry points (train.py, compare.py) share.

The --config flag (configs/quickstart.py by default, overrides as
--config.x=y), the multi-process flags, quiet library logging, and bad input
reported as one `error:` line with exit status 2 instead of a traceback.
"""
import importlib
import os
import sys
from typing import Callable, List

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

from localsgd_jax import flag_errors

# localsgd_jax.configs is configs/ (pyproject.toml maps it; in an uninstalled
# checkout the symlink localsgd_jax/configs); light to import.
_DEFAULT_CONFIG = os.path.join(
    os.path.dirname(importlib.import_module('localsgd_jax.configs').__file__),
    'quickstart.py')
# Shown by --help next to the flags of train.py / compare.py themselves.
KEY_FLAGS = ('config', 'coordinator_address', 'num_processes', 'process_id')
try:
  CONFIG = config_flags.DEFINE_config_file(
      'config', _DEFAULT_CONFIG,
      'A config file: configs/NAME.py, a Python file with get_config() '
      '(default: configs/quickstart.py, the offline digits quickstart). '
      'Override any of its fields as --config.FIELD=VALUE, e.g. '
      '--config.num_epochs=5 --config.selection.mode=sgd; configs/default.py '
      'lists every field.', lock_config=True)
  _DEFINE_ERROR = None
except Exception as e:  # pylint: disable=broad-except
  # Without --config on the command line, ml_collections applies the
  # --config.x=y overrides right here, at import: run() reports the error.
  CONFIG, _DEFINE_ERROR = None, e
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
    from localsgd_jax.errors import Stopped, UserError  # pylint: disable=g-import-not-at-top
    try:
      # Before any JAX computation: the backends read the process topology.
      distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value,
                             _PROCESS_ID.value)
      body(CONFIG.value)
    except (UserError, Stopped) as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(e.exit_code)  # 2; 128 + N after signal N (Stopped)

  if _DEFINE_ERROR is not None:
    _fail(flag_errors.describe(sys.argv, _DEFINE_ERROR, _DEFAULT_CONFIG))
  # absl's --help lists the main module's key flags only (the script is
  # registered under sys.argv[0]): add the shared ones.
  for name in KEY_FLAGS:
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])
  app.run(main, flags_parser=_parse_flags)


def _fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def _parse_flags(argv: List[str]) -> List[str]:
  """absl's flag parsing, a failure reported as one `error:` line."""
  try:
    rest = flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    _fail(flag_errors.describe(argv, e, _DEFAULT_CONFIG))
  problem = flag_errors.load_problem(
      CONFIG.value, flags.FLAGS['config'].serialize().split('=', 1)[-1])
  if problem:
    _fail(problem)
  return rest
