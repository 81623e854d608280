"""Small training runs for the tests: their config and their metrics file.

Imported by the test modules (pytest puts tests/ on sys.path).
"""
import json
import os

from localsgd_jax.configs import quickstart


def small_config(**overrides):
  """The digits quickstart at 16x16 without a progress bar or TensorBoard;
  `overrides` by dotted name ({'selection.mode': 'sgd'})."""
  config = quickstart.get_config()
  config.data.image_size = 16
  config.log.progress = False
  config.log.tensorboard = False
  config.update_from_flattened_dict(overrides)
  return config


def metrics_lines(workdir):
  """metrics.jsonl's rows as written, one per line (not `read_rows`'s one
  per epoch: the tests check what the file holds)."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]
