"""Run outputs: metrics.jsonl, summary.json, TensorBoard events, progress.

`metrics.jsonl` holds one JSON object per finished epoch (`epoch` counts
completed epochs from 1, as the console does); on resume the lines
of epochs after the restored checkpoint are dropped, so the file always
describes one consistent run.
"""
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional

import tqdm


def _jsonable(value: Any) -> Any:
  if hasattr(value, 'item'):
    return value.item()
  return value


class MetricsWriter:
  """Writes per-epoch metrics to metrics.jsonl and TensorBoard."""

  def __init__(self, workdir: str, tensorboard: bool = True):
    self.workdir = workdir
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._tb = None
    if tensorboard:
      import tensorboardX  # pylint: disable=g-import-not-at-top
      self._tb = tensorboardX.SummaryWriter(os.path.join(workdir, 'tb'))

  def read(self) -> List[Dict[str, Any]]:
    if not os.path.exists(self.path):
      return []
    with open(self.path) as f:
      return [json.loads(line) for line in f if line.strip()]

  def truncate(self, num_epochs: int) -> List[Dict[str, Any]]:
    """Keeps the records of epochs 1..num_epochs; returns them."""
    rows = [r for r in self.read() if r['epoch'] <= num_epochs]
    tmp = self.path + '.tmp'
    with open(tmp, 'w') as f:
      f.writelines(json.dumps(r) + '\n' for r in rows)
    os.replace(tmp, self.path)
    return rows

  def write(self, row: Dict[str, Any]) -> None:
    row = {k: _jsonable(v) for k, v in row.items()}
    with open(self.path, 'a') as f:
      f.write(json.dumps(row) + '\n')
      f.flush()
      os.fsync(f.fileno())
    if self._tb is not None:
      for key, value in row.items():
        if (isinstance(value, (int, float)) and not isinstance(value, bool)
            and key not in ('epoch', 'step')):
          self._tb.add_scalar(key, value, row['step'])
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def write_json(path: str, obj: Any) -> None:
  """Writes JSON atomically (temporary file, then rename)."""
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2, default=_jsonable)
    f.write('\n')
  os.replace(tmp, path)


class Progress:
  """A progress bar per epoch on a terminal, plain lines otherwise."""

  def __init__(self, epoch: int, num_epochs: int, steps: int, enabled: bool):
    self.tty = enabled and sys.stderr.isatty()
    self.steps = steps
    self.desc = f'epoch {epoch + 1}/{num_epochs}'
    self._bar: Optional[tqdm.tqdm] = None
    self._next_line = 0
    self._t0 = time.perf_counter()
    if self.tty:
      self._bar = tqdm.tqdm(total=steps, desc=self.desc, leave=False,
                            dynamic_ncols=True)

  def update(self, step_in_epoch: int, loss: Optional[float] = None) -> None:
    if self._bar is not None:
      self._bar.update(1)
      if loss is not None:
        self._bar.set_postfix(loss=f'{loss:.4f}')
    elif step_in_epoch + 1 >= self._next_line and loss is not None:
      # Plain logs get about four lines per epoch, not one per step.
      print(f'{self.desc} step {step_in_epoch + 1}/{self.steps} '
            f'loss {loss:.4f} ({time.perf_counter() - self._t0:.1f}s)',
            flush=True)
      self._next_line = step_in_epoch + 1 + max(1, self.steps // 4)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
