"""Plots of a comparison's runs: one line per mode, mean ± std over seeds.

Matplotlib's object API with the Agg canvas, not pyplot: it leaves the
global backend alone (a notebook's inline plots keep working) and needs no
display.
"""
import os
from typing import Any, Dict, List

import numpy as np

PLOTS = {
    'accuracy_vs_epoch': 'accuracy_vs_epoch.png',
    'accuracy_vs_time': 'accuracy_vs_time.png',
    'transition_vs_epoch': 'transition_vs_epoch.png',
}


def _curves(runs: List[Dict[str, Any]], x_key: str, y_field: str):
  """Mean x, mean y and std y over seeds, epoch by epoch.

  Args:
    runs: loaded runs; `run[x_key]` is a per-epoch list.
    x_key: 'epoch_number' or 'cumulative_time_s'.
    y_field: a metrics.jsonl field.
  """
  # Runs of one mode normally have the same epochs; if one is longer (a
  # later --config.num_epochs), only the epochs all runs have are averaged.
  num = min(len(r['rows']) for r in runs)
  xs = np.array([r[x_key][:num] for r in runs], dtype=float)
  ys = np.array([[row.get(y_field, np.nan) for row in r['rows'][:num]]
                 for r in runs], dtype=float)
  std = ys.std(axis=0, ddof=1) if len(runs) > 1 else np.zeros(num)
  return xs.mean(axis=0), ys.mean(axis=0), std


def _plot(path: str, runs_by_mode, x_key: str, y_field: str, xlabel: str,
          ylabel: str, title: str, steps: bool = False) -> None:
  """One line per mode (mean over seeds) with a ±std band.

  Args:
    path: the PNG to write.
    runs_by_mode: as for `aggregate`.
    x_key: per-epoch x values of a run, see `_curves`.
    y_field: the metrics.jsonl field to plot.
    xlabel: x axis label.
    ylabel: y axis label.
    title: plot title.
    steps: draw a step per epoch: k is constant within an epoch, a sloped
      line between epochs would suggest values it never took.
  """
  # The object API with the Agg canvas, not pyplot: it leaves the global
  # backend alone (a notebook's inline plots keep working) and needs no
  # display.
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  from matplotlib.ticker import MaxNLocator  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(6.4, 4.2), layout='constrained')
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  for mode, by_seed in runs_by_mode.items():
    runs = [r for r in by_seed.values() if r['rows']]
    if not runs:
      continue
    x, y, std = _curves(runs, x_key, y_field)
    line, = ax.plot(x, y, marker='o', markersize=3,
                    drawstyle='steps-mid' if steps else 'default',
                    label=f'{mode} (n={len(runs)})')
    if len(runs) > 1:
      ax.fill_between(x, y - std, y + std, color=line.get_color(), alpha=0.2,
                      linewidth=0, step='mid' if steps else None)
  if x_key == 'epoch_number':
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  if steps:
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  if ax.lines:
    ax.legend()
  fig.savefig(path, dpi=110)



def write_plots(workdir: str, runs_by_mode) -> None:
  """The PNGs of PLOTS, into `workdir`."""
  _plot(os.path.join(workdir, PLOTS['accuracy_vs_epoch']), runs_by_mode,
        'epoch_number', 'eval_accuracy', 'epoch', 'eval accuracy',
        'Eval accuracy by epoch (mean ± std over seeds)')
  _plot(os.path.join(workdir, PLOTS['accuracy_vs_time']), runs_by_mode,
        'cumulative_time_s', 'eval_accuracy',
        'wall time (s, compile and eval included)', 'eval accuracy',
        'Eval accuracy by wall time (mean ± std over seeds)')
  _plot(os.path.join(workdir, PLOTS['transition_vs_epoch']), runs_by_mode,
        'epoch_number', 'transition', 'epoch', 'transition index k',
        'Units trained locally (k) by epoch', steps=True)
