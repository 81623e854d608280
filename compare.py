"""Compares LoCal+SGD with SGD and freezing peers: every mode, every seed.

  python compare.py --config=configs/quickstart.py --workdir=/tmp/cmp \
      --modes=sgd,static,dynamic,freeze --seeds=3
  python compare.py --workdir=/tmp/cmp --report_only   # redraw the report
Config overrides pass through as in train.py (--config.num_epochs=5). Runs go
to WORKDIR/<mode>/seed_<n>; the table is WORKDIR/comparison.md (and .json),
next to the plots. Running the same command again resumes unfinished runs.
Modes: see localsgd_jax.report.MODES.
"""
import os
import shlex
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_HERE = os.path.dirname(os.path.abspath(__file__))
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Directory for the runs and the report.', required=True)
_MODES = flags.DEFINE_list(
    'modes', ['sgd', 'static', 'dynamic', 'freeze'],
    'Comma-separated modes: sgd, static, dynamic, freeze, autofreeze.')
_SEEDS = flags.DEFINE_integer(
    'seeds', 3, 'Number of seeds, from config.seed on; the same seeds for '
    'every mode, so runs are paired.')
_REPORT_ONLY = flags.DEFINE_bool(
    'report_only', False, 'Only redraw the table and plots from the runs '
    'already in --workdir.')
config_flags.DEFINE_config_file(
    'config', os.path.join(_HERE, 'configs', 'quickstart.py'),
    'Path to a config file (get_config()).', lock_config=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    # Orbax logs every checkpoint step at INFO; -v 0 brings it back.
    logging.set_verbosity(logging.WARNING)
  from localsgd_jax import report  # pylint: disable=g-import-not-at-top
  from localsgd_jax.errors import UserError  # pylint: disable=g-import-not-at-top
  try:
    if _REPORT_ONLY.value:
      # The runs' own command line stays in the report, not this redraw's.
      report.write_report(_WORKDIR.value)
    else:
      command = shlex.join(['python'] + sys.argv)
      report.run_comparison(flags.FLAGS.config, _WORKDIR.value, _MODES.value,
                            _SEEDS.value, command=command)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  print(f'Report: {os.path.join(_WORKDIR.value, "comparison.md")}')


if __name__ == '__main__':
  app.run(main)
