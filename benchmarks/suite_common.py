"""What the benchmark scripts share: the data folder, the config as they
run it, the log tee, the JSON record.

Used by gpu_suite.py, frontier.py and jpeg_cost.py (run as
`python benchmarks/<script>.py`, which puts this folder on sys.path).
"""
import contextlib
import copy
import datetime
import io
import json
import os
import statistics
import sys
from typing import Any, Dict, List

import jax

from localsgd_jax import metrics as metrics_lib
from localsgd_jax import train_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_data_dir(name: str) -> str:
  """.gpu/<name> (the bundle a GPU machine gets), else ../shared/data/<name>,
  else ''."""
  for path in (os.path.join(ROOT, '.gpu', name),
               os.path.join(ROOT, '..', 'shared', 'data', name)):
    if os.path.isdir(path):
      return os.path.normpath(path)
  return ''


def prepare_config(config, data_dir: str, small: bool):
  """The config as the benchmarks run it: the image folder, one evaluation
  (after the last epoch), no progress bars; bf16 on GPUs; `small`: the
  tiny CNN on 12 images per class for 2 epochs."""
  config = copy.deepcopy(config)  # its references resolve at the end
  config.data.name = 'image_folder'
  config.data.dir = data_dir
  config.log.progress = False
  config.eval_every_epochs = 1000  # only after the last epoch
  if small:
    config.model.name = 'tiny'
    config.num_epochs = 2
    config.batch_size = 32
    config.eval_batch_size = 64
    config.data.train_per_class = 12
    config.selection.k_max_flop_share = 0.0
    config.optim.warmup_epochs = min(config.optim.warmup_epochs, 1)
  elif jax.default_backend() == 'gpu':
    config.dtype = 'bfloat16'
  return config.copy_and_resolve_references()


class _Tee(io.TextIOBase):
  """Writes to the console and to a log file."""

  def __init__(self, *streams):
    self._streams = streams

  def write(self, text):
    for s in self._streams:
      s.write(text)
      s.flush()
    return len(text)


@contextlib.contextmanager
def tee(log_path: str):
  """Everything printed inside also goes to `log_path` (appended)."""
  with open(log_path, 'a') as log:
    with contextlib.redirect_stdout(_Tee(sys.__stdout__, log)):
      yield


@contextlib.contextmanager
def redirect(stream):
  """Standard output and error of the block go to `stream` (a run's log)."""
  with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
    yield


class Record:
  """A JSON file of a script's results, rewritten after every part, so a
  timeout leaves every finished part; an existing file is continued (its
  parts are kept until a part of the same name is recorded again)."""

  def __init__(self, out_dir: str, name: str, **meta: Any):
    self.path = os.path.join(out_dir, name)
    previous = {}
    if os.path.exists(self.path):
      with open(self.path) as f:
        previous = json.load(f)
    self.results = {
        'date': datetime.datetime.now().astimezone().isoformat(
            timespec='seconds'),
        'device': jax.devices()[0].device_kind,
        'device_count': jax.device_count(),
        'jax': jax.__version__,
        'git_commit': train_lib.git_commit(),
        **meta,
        'parts': previous.get('parts', {}),
    }

  def __call__(self, part: str, value: Any) -> None:
    self.results['parts'][part] = value
    self.write()

  def get(self, part: str, default: Any = None) -> Any:
    return self.results['parts'].get(part, default)

  def __contains__(self, part: str) -> bool:
    return part in self.results['parts']

  def write(self) -> None:
    metrics_lib.write_json(self.path, self.results)


class RunBudget:
  """Whether a time-limited call may start another run, and when it should
  save its records after every run.

  A device call is killed at its own limit, and with it whatever the call
  had not yet written out. So no run starts once `limit_s` has passed, nor
  where it is expected to outlast it: its expected duration is that of the
  same run (`key`, e.g. its mode's folder) earlier in this call, else the
  median of this call's runs. From `limit_s - closing_s` on, the caller
  saves its records after each run (`closing`), so that a run that
  overruns all the same loses only itself. limit_s 0: no limit.
  """

  def __init__(self, limit_s: float, closing_s: float = 180.0):
    self.limit_s, self.closing_s = limit_s, closing_s
    self._by_key: Dict[str, float] = {}
    self._all: List[float] = []

  def expected_s(self, key: str) -> float:
    if key in self._by_key:
      return self._by_key[key]
    return statistics.median(self._all) if self._all else 0.0

  def may_start(self, key: str, elapsed_s: float) -> bool:
    return not self.limit_s or elapsed_s + self.expected_s(key) <= self.limit_s

  def finished(self, key: str, duration_s: float) -> None:
    self._by_key[key] = duration_s
    self._all.append(duration_s)

  def closing(self, elapsed_s: float) -> bool:
    return bool(self.limit_s) and elapsed_s >= self.limit_s - self.closing_s
