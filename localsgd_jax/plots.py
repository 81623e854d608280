"""Plots of a comparison's runs: one line per mode, mean ± std over seeds.

Matplotlib's object API with the Agg canvas, not pyplot: it leaves the
global backend alone (a notebook's inline plots keep working) and needs no
display.
"""
import os
from typing import Any, Dict, List, Optional

import numpy as np

from localsgd_jax.modes import parse_budget_mode

PLOTS = {
    'accuracy_vs_epoch': 'accuracy_vs_epoch.png',
    'accuracy_vs_time': 'accuracy_vs_time.png',
    'transition_vs_epoch': 'transition_vs_epoch.png',
    'accuracy_vs_cost': 'accuracy_vs_cost.png',
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



def _figure():
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(6.4, 4.2), layout='constrained')
  FigureCanvasAgg(fig)
  return fig, fig.add_subplot()


def plot_accuracy_vs_cost(path: str, entries: List[Dict[str, Any]],
                          points: Optional[List[Dict[str, Any]]]) -> None:
  """Final accuracy against cost (robust training time): SGD's budgets
  (mean ± std over seeds), its monotone frontier as interpolated, and every
  mode at its mean (error bars: std over seeds of accuracy and cost)."""
  fig, ax = _figure()
  if points:
    cost = [p['time_s_mean'] for p in points]
    acc = np.array([p['accuracy_mean'] for p in points])
    std = np.array([p['accuracy_std'] or 0.0 for p in points])
    ax.errorbar(cost, acc, yerr=std, fmt='o', color='0.35', capsize=3,
                label='sgd budgets (mean ± std)')
    ax.plot(cost, [p['monotone_accuracy'] for p in points], color='0.35',
            linestyle='--', label='sgd frontier (monotone, interpolated)')
    for p, c, a in zip(points, cost, acc):
      ax.annotate(f'{p["epochs"]:g} ep', (c, a), textcoords='offset points',
                  xytext=(4, -10), fontsize=7, color='0.35')
  for e in entries:
    if e.get('robust_train_time_s_mean') is None:
      continue
    runs_std = e.get('robust_train_time_s_std')
    ax.errorbar([e['robust_train_time_s_mean']], [e['eval_accuracy_mean']],
                yerr=[e['eval_accuracy_std'] or 0.0],
                xerr=[runs_std or 0.0], fmt='s', capsize=3,
                label=f'{e["mode"]} (n={e["num_runs"]})')
  ax.set_xlabel('cost: robust training time (s; eval and compile excluded)')
  ax.set_ylabel('final eval accuracy')
  ax.set_title('Accuracy against cost: modes on SGD\'s budget frontier')
  ax.grid(alpha=0.3)
  if ax.lines or ax.collections:
    ax.legend(fontsize=7)
  fig.savefig(path, dpi=110)


def write_plots(workdir: str, runs_by_mode,
                entries: Optional[List[Dict[str, Any]]] = None,
                points: Optional[List[Dict[str, Any]]] = None) -> None:
  """The PNGs of PLOTS, into `workdir` (accuracy against cost from the
  aggregate's `entries` and frontier `points`)."""
  plot_accuracy_vs_cost(os.path.join(workdir, PLOTS['accuracy_vs_cost']),
                        entries or [], points)
  # SGD's budgets are the frontier's points, not lines of their own.
  runs_by_mode = {m: by_seed for m, by_seed in runs_by_mode.items()
                  if parse_budget_mode(m) is None}
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
