"""The comparison's report: read the runs, aggregate, render, plot.

`write_report` reads the run directories of a comparison (`runs`), gets
per-mode statistics (`aggregate`) and writes `comparison.json`,
`comparison.md` and the PNG plots (`plots`) into the workdir. It only reads
files and imports no JAX, so a report can be redrawn at any time
(`compare.py --report_only`), also while runs are missing or unfinished.
Training the runs is `comparison`'s job.
"""
import datetime
import os
from typing import Any, Dict, List, Optional, Tuple

from localsgd_jax import metrics as metrics_lib
from localsgd_jax import plots as plots_lib
from localsgd_jax import report_md
from localsgd_jax import runs as runs_lib
from localsgd_jax.aggregate import analyze
from localsgd_jax.aggregate import step_utilization
from localsgd_jax.errors import UserError
from localsgd_jax.errors import warn
from localsgd_jax.modes import SAME_TIME


def write_report(workdir: str, command: Optional[str] = None,
                 device: Optional[str] = None, target: Optional[float] = None,
                 target_drop: float = 0.005, this_device: Optional[str] = None,
                 writer: bool = True) -> List[Dict[str, Any]]:
  """Reads the runs under `workdir` and writes the comparison files.

  Writes `comparison.json` ({'command', 'date', 'device', 'git_commit',
  'unfinished_runs', 'entries': [...], 'frontier': SGD's budget points or
  None, 'step_utilization': each kind of step's MFU where the device's
  peak is known, else []}), `comparison.md` and the PNGs in PLOTS, and
  warns (one line each) of the unfinished runs and of each folder holding
  another seed's run (`runs.other_seed`), which the report leaves out. The entries are
  `aggregate.analyze`'s, one per mode (the `sgd@B` budget runs make up
  'frontier' instead).

  Args:
    workdir: the comparison's directory (`workdir/<mode>/seed_<s>/`).
    command: the command line; None keeps the one of an earlier report.
    device: the accelerator the runs used; None keeps the one of an earlier
      report (a redraw may happen on another machine), else `this_device`.
    target: the accuracy for time-to-accuracy; None: per seed, that
      seed's sgd final accuracy minus `target_drop`.
    target_drop: see `target` (0.005 = half a point).
    this_device: this machine's accelerator, for a first report made by a
      redraw (the caller asks JAX; this module does not import it).
    writer: whether this process writes the files (one writer when several
      processes share them: callers pass distributed.is_primary()).

  Returns:
    The entries.

  Raises:
    UserError: when `workdir` holds no finished run.
  """
  if not os.path.isdir(workdir):
    raise UserError(f'{workdir} does not exist; run compare.py without '
                    '--report_only first to train the runs')
  found, unfinished, other_seed = runs_lib.find_runs(workdir)
  if writer:  # what the report leaves out, on the console too
    _warn_left_out(unfinished, other_seed)
  if not found:
    raise UserError(
        f'{workdir} holds no finished run (expected <mode>/seed_<n>/'
        'summary.json); run compare.py without --report_only first')
  runs_by_mode = runs_lib.load_runs(workdir)
  entries, points = analyze(runs_by_mode, target=target,
                            target_drop=target_drop)
  match_path = os.path.join(workdir, SAME_TIME, 'match.json')
  for e in entries:
    if e['mode'] == SAME_TIME and os.path.exists(match_path):
      e['match'] = runs_lib.read_json(match_path)
  json_path = os.path.join(workdir, 'comparison.json')
  meta = _meta(runs_lib.read_json(json_path) or {}, runs_by_mode, command,
               device, this_device, unfinished)
  if not writer:
    return entries  # One writer: every host sees the same files.
  utilization = step_utilization(runs_by_mode, meta['device'])
  metrics_lib.write_json(json_path, {
      **meta, 'entries': entries,
      'frontier': None if points is None else [
          {k: v for k, v in p.items() if k != 'runs'} for p in points],
      'step_utilization': utilization})
  with open(os.path.join(workdir, 'comparison.md'), 'w') as f:
    f.write(report_md.markdown(meta, entries, points, utilization))
  plots_lib.write_plots(workdir, runs_by_mode, entries, points)
  return entries


def _warn_left_out(unfinished: List[str],
                   other_seed: List[Tuple[str, str]]) -> None:
  for what, move in other_seed:
    warn(f'{what}: left out of the report; move it aside ({move}) and run '
         'compare.py again to train the folder\'s own seed')
  if unfinished:
    many = len(unfinished) > 1
    warn(f'{len(unfinished)} run{"s are" if many else " is"} unfinished (no '
         f'summary.json yet: {", ".join(unfinished)}): the report covers the '
         'finished ones; run compare.py with '
         f'{"their" if many else "its"} mode and seed, without '
         f'--report_only, to finish {"them" if many else "it"}')


def _meta(previous: Dict[str, Any], runs_by_mode, command: Optional[str],
          device: Optional[str], this_device: Optional[str],
          unfinished: List[str]) -> Dict[str, Any]:
  """comparison.json's header; a redraw keeps the command and the device
  of the report before it (`previous`), which may come from another
  machine."""
  return {
      'command': command if command is not None else previous.get('command'),
      'date': datetime.datetime.now().astimezone().isoformat(
          timespec='seconds'),
      'device': device or previous.get('device') or this_device or 'unknown',
      # The runs' commits (several if the runs span commits).
      'git_commit': ', '.join(sorted(
          {run['summary'].get('git_commit') or 'unknown'
           for by_seed in runs_by_mode.values()
           for run in by_seed.values()})),
      'unfinished_runs': unfinished,
  }
