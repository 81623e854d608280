"""Trains a CNN with LoCal+SGD (or plain SGD).

  python train.py                                   # offline quickstart
  python train.py --config=configs/cifar10_resnet.py --workdir=/tmp/c10 \
      --config.data.dir=/path/with/cifar-10-batches-py
Running the same command again resumes from the workdir's latest checkpoint.
Every visible device is used (the batch is split over them). Several hosts:
run the same command on each, adding --coordinator_address=HOST:PORT
--num_processes=N --process_id=I (automatic under SLURM's srun); see README.
"""
from absl import flags

from localsgd_jax import cli

_WORKDIR = flags.DEFINE_string('workdir', 'workdirs/quickstart',
                               'Directory for checkpoints and metrics.')


def main(config):
  from localsgd_jax import train_lib  # pylint: disable=g-import-not-at-top
  train_lib.train_and_evaluate(config, _WORKDIR.value)


if __name__ == '__main__':
  cli.run(main)
