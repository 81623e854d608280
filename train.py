"""Trains a CNN with LoCal+SGD (or plain SGD).

  python train.py                                   # offline quickstart
  python train.py --config=configs/cifar10_resnet.py --workdir=/tmp/c10 \
      --config.data.dir=/path/with/cifar-10-batches-py
Running the same command again resumes from the workdir's latest checkpoint.
Every visible device is used (the batch is split over them). Several hosts:
run the same command on each, adding --coordinator_address=HOST:PORT
--num_processes=N --process_id=I (automatic under SLURM's srun); see README.
"""
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_HERE = os.path.dirname(os.path.abspath(__file__))
_WORKDIR = flags.DEFINE_string('workdir', 'workdirs/quickstart',
                               'Directory for checkpoints and metrics.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', '',
    'Multi-process runs: HOST:PORT of process 0 (empty: single process, or '
    'read from a SLURM / Open MPI launcher).')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', 0, 'Multi-process runs: number of processes (0: unset).')
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', -1, 'Multi-process runs: index of this process (-1: unset).')
config_flags.DEFINE_config_file(
    'config', os.path.join(_HERE, 'configs', 'quickstart.py'),
    'Path to a config file (get_config()).', lock_config=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    # Orbax logs every checkpoint step at INFO; -v 0 brings it back.
    logging.set_verbosity(logging.WARNING)
  from localsgd_jax import distributed  # pylint: disable=g-import-not-at-top
  from localsgd_jax import train_lib  # pylint: disable=g-import-not-at-top
  from localsgd_jax.errors import UserError  # pylint: disable=g-import-not-at-top
  try:
    # Before any JAX computation: the backends read the process topology.
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value,
                           _PROCESS_ID.value)
    train_lib.train_and_evaluate(flags.FLAGS.config, _WORKDIR.value)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)
