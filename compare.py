"""Compares LoCal+SGD with SGD and freezing peers: every mode, every seed.

  python compare.py --config=configs/quickstart.py --workdir=/tmp/cmp \
      --modes=sgd,static,dynamic,freeze --seeds=3
  python compare.py --config=configs/quickstart.py --workdir=/tmp/cmp \
      --modes=sgd,static,static_frozen,sgd_same_time --seeds=3
  python compare.py --config=configs/quickstart.py --workdir=/tmp/cmp \
      --modes=sgd,static --sgd_budgets=4,6,8,12 --seeds=3   # SGD's frontier
  python compare.py --workdir=/tmp/cmp --report_only   # redraw the report
Config overrides pass through as in train.py (--config.num_epochs=5). Runs go
to WORKDIR/<mode>/seed_<n>; the table is WORKDIR/comparison.md (and .json),
next to the plots. Running the same command again resumes unfinished runs.
Modes: see localsgd_jax.modes.MODES. Multi-process flags as in train.py.
"""
import os
import shlex
import sys

from absl import flags

from localsgd_jax import cli

_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Directory for the runs and the report.', required=True)
_MODES = flags.DEFINE_list(
    'modes', ['sgd', 'static', 'dynamic', 'freeze'],
    'Comma-separated modes: sgd, static, dynamic, freeze, autofreeze, '
    'static_frozen / static_oja (freezing / the Hebbian rule oja on the '
    'static schedule), sgd_same_time (SGD '
    'given the training time of --match_mode).')
_SGD_BUDGETS = flags.DEFINE_list(
    'sgd_budgets', [], 'Comma-separated epochs (fractional allowed: 12.6) '
    'at which SGD is also trained, same schedule shape compressed, in '
    'WORKDIR/sgd@<epochs>: SGD\'s accuracy-cost frontier, against which '
    'the report gives each mode\'s iso-accuracy speed-up.')
_MATCH_MODE = flags.DEFINE_string(
    'match_mode', 'static', 'The mode whose training cost sgd_same_time '
    'gets.')
_MATCH_COST = flags.DEFINE_enum(
    'match_cost', 'time', ['time', 'flops'], 'How sgd_same_time matches '
    'it: robust training time (median time per kind of epoch) or XLA FLOPs.')
_TARGET = flags.DEFINE_float(
    'target', None, 'Accuracy for time-to-accuracy, for every seed '
    '(default: per seed, that seed\'s sgd final accuracy minus '
    '--target_drop).')
_TARGET_DROP = flags.DEFINE_float(
    'target_drop', 0.005, 'See --target (0.005 = half a point).')
_SEEDS = flags.DEFINE_integer(
    'seeds', 3, 'Number of seeds, from config.seed on; the same seeds for '
    'every mode, so runs are paired.')
_REPORT_ONLY = flags.DEFINE_bool(
    'report_only', False, 'Only redraw the table and plots from the runs '
    'already in --workdir.')


def main(config):
  # pylint: disable=g-import-not-at-top
  import jax
  from localsgd_jax import comparison
  from localsgd_jax import distributed
  from localsgd_jax import report
  from localsgd_jax import report_md
  if _REPORT_ONLY.value:
    # The runs' own command line stays in the report, not this redraw's.
    entries = report.write_report(
        _WORKDIR.value, target=_TARGET.value, target_drop=_TARGET_DROP.value,
        this_device=jax.devices()[0].device_kind,
        writer=distributed.is_primary())
  else:
    command = shlex.join(['python'] + sys.argv)
    entries = comparison.run_comparison(
        config, _WORKDIR.value, _MODES.value, _SEEDS.value, command=command,
        match_mode=_MATCH_MODE.value, match_cost=_MATCH_COST.value,
        target=_TARGET.value, target_drop=_TARGET_DROP.value,
        sgd_budgets=_SGD_BUDGETS.value)
  print(report_md.headline_table(entries))
  print(f'Report (details and plots): '
        f'{os.path.join(_WORKDIR.value, "comparison.md")}')


if __name__ == '__main__':
  cli.run(main)
