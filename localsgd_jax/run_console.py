"""What a run prints: the start-up lines, one line per epoch, the summary.

Start-up and summary lines come from process 0 only (`say`); the epoch line
from every process, as before the split (each host's log is complete).
"""
import os
from typing import Any, Dict

import jax
import ml_collections
import numpy as np

from localsgd_jax import distributed
from localsgd_jax import selection
from localsgd_jax.errors import warn


def print_epoch(row: Dict[str, Any], result, num_epochs: int) -> None:
  """The console line of a finished epoch (`result`: a loop.EpochResult)."""
  ks = '->'.join(str(k) for _, k in result.segments)
  evaluation = (f'{row["eval_split"]}_acc {row["eval_accuracy"]:.4f}  '
                if 'eval_accuracy' in row else '')
  if 'eval_accuracy_tta' in row:
    evaluation += f'tta_acc {row["eval_accuracy_tta"]:.4f}  '
  print(f'epoch {row["epoch"]}/{num_epochs}  k={ks}/{row["num_units"]}  '
        f'train_loss {row["train_loss"]:.4f}  '
        f'train_acc {row["train_accuracy"]:.4f}  {evaluation}'
        f'{row["epoch_time_s"]:.1f}s (+{row["compile_time_s"]:.1f}s compile)  '
        f'{row["images_per_s"]:.0f} img/s  next k: {row["selection"]}',
        flush=True)


def say(message: str) -> None:
  """A start-up or summary line, from process 0 only."""
  if distributed.is_primary():
    print(message, flush=True)


def data_source(data_cfg: ml_collections.ConfigDict) -> str:
  name, folder = data_cfg.name, data_cfg.dir
  if name == 'digits':
    return "digits (scikit-learn's bundled copy)"
  if folder:
    return f'{name} from {folder}'
  if name in ('cifar10', 'cifar100', 'imagenet2012'):
    return f'{name} through tensorflow-datasets'
  return name


def describe_data(dataset, seconds: float) -> str:
  shape = 'x'.join(str(s) for s in dataset.image_shape)
  eval_split = dataset.eval_split
  return (f'Data: {dataset.num_train} training images, {dataset.num_test} '
          f'{eval_split} images ({shape}, {dataset.num_classes} classes) in '
          f'{seconds:.1f}s')


def _ranges(ks, first: int = 0) -> str:
  """[0, 0, 2, 2, 2] -> 'k=0 in epochs 1-2, k=2 in epochs 3-5'; the k of
  epochs `first + 1` on (`ks` holds every epoch's)."""
  parts, start = [], first
  for e in range(first + 1, len(ks) + 1):
    if e == len(ks) or ks[e] != ks[start]:
      epochs = (f'epoch {start + 1}' if e == start + 1 else
                f'epochs {start + 1}-{e}')
      parts.append(f'k={ks[start]} in {epochs}')
      start = e
  return ', '.join(parts)


def describe_selection(config: ml_collections.ConfigDict,
                       selector: selection.Selector,
                       start_epoch: int = 0) -> str:
  """What k will do, in one line: 'k' units [0, k) learn locally.

  A resumed run's line describes the epochs still to train: the ones done
  may have followed another schedule (config.resume_allow).
  """
  sel = config.selection
  done = (f'epochs 1-{start_epoch} done; ' if 0 < start_epoch
          < config.num_epochs else '')
  if sel.mode == 'sgd':
    return 'Selection: sgd: k=0 (plain SGD) in every epoch'
  if selector.adaptive:
    when = (f'every {selector.every_steps} steps' if selector.every_steps
            else 'after each epoch')
    start = 'k goes on from the checkpoint' if done else 'k starts at 0'
    return (f'Selection: {sel.mode}: {done}{start} and is decided {when} '
            f'from the training statistics (at most {selector.k_max}; SGD '
            f'warm-up {sel.warmup_epochs} epochs)')
  ks = [selector.transition(e) for e in range(config.num_epochs)]
  share = ('' if selector.k_max_flops is None else
           f'; k_max {selector.k_max}: units 0..{selector.k_max - 1} hold '
           f'{selector.k_max_flops:.0%} of the forward FLOPs, at most '
           f'k_max_flop_share {sel.k_max_flop_share:g}')
  first = start_epoch if done else 0
  return (f'Selection: {sel.mode}: {done}{_ranges(ks, first)} (units 0..k-1 '
          f'learn locally{share})')


def announce_run(config: ml_collections.ConfigDict, model, state,
                 selector: selection.Selector, steps_per_epoch: int,
                  num_devices: int, start_epoch: int) -> None:
  """The model and schedule lines; the finished-run and local-from-init
  notes."""
  params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
  platform = jax.devices()[0].platform
  say(f'Model: {config.model.name}, {model.num_units} units, '
       f'{params / 1e6:.2f}M parameters; batch {config.batch_size} on '
       f'{num_devices} {platform} device{"s" if num_devices > 1 else ""}, '
       f'{steps_per_epoch} steps per epoch')
  say(describe_selection(config, selector, start_epoch))
  if config.optim.ema_decay > 0:
    say(f'Evaluation: a moving average of the weights and BatchNorm '
        f'statistics (optim.ema_decay {config.optim.ema_decay:g}), not the '
        'trained weights')
  if start_epoch >= config.num_epochs:
    say(f'Nothing to train: all {config.num_epochs} epochs are done; a new '
         '--workdir starts a new run.')
  elif start_epoch == 0:
    reason = selector.local_from_init()
    if reason and distributed.is_primary():
      warn(f'local learning from random initialization: {reason}; the '
           'shipped configs train by SGD first (an SGD warm-up: '
           '--config.selection.warmup_epochs=1, or a table starting 0:0).')


def print_summary(summary: Dict[str, Any], rows, workdir: str,
                  tensorboard: bool) -> None:
  """The end of a run: accuracy on the named split, time, the files."""
  split = summary['eval_split']
  evaluated = [r for r in rows if 'eval_accuracy' in r]
  lines = [f'Done: {summary["num_epochs"]} epochs, '
           f'{summary["total_time_s"]:.1f}s of training and evaluation '
           f'({summary["compile_time_s"]:.1f}s of it compiling)']
  if evaluated:
    best = max(evaluated, key=lambda r: r['eval_accuracy'])
    lines.append(f'  {split} accuracy: final '
                 f'{summary["final_eval_accuracy"]:.4f}, best '
                 f'{best["eval_accuracy"]:.4f} (after epoch {best["epoch"]})')
  tta = [r for r in evaluated if 'eval_accuracy_tta' in r]
  if tta:
    best = max(tta, key=lambda r: r['eval_accuracy_tta'])
    lines.append(f'  {split} accuracy with test-time augmentation: final '
                 f'{summary["final_eval_accuracy_tta"]:.4f}, best '
                 f'{best["eval_accuracy_tta"]:.4f} (after epoch '
                 f'{best["epoch"]})')
  files = [name + ('/' if os.path.isdir(os.path.join(workdir, name)) else '')
           for name in sorted(os.listdir(workdir))
           if not name.endswith(('.tmp', '.lock'))]
  lines.append(f'  files in {workdir}: {", ".join(files)}')
  if tensorboard:
    lines.append(f'  TensorBoard: tensorboard --logdir {workdir}')
  for line in lines:
    say(line)


