"""benchmarks/gpu_suite.sh --small: the GPU suite's code, end to end on a CPU."""
import json
import os
import subprocess

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow  # the suite end to end, in a subprocess


def _image_folder(root, per_class):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for split, n in per_class.items():
    for label in range(10):
      folder = root / split / f'class{label}'
      folder.mkdir(parents=True)
      for i in range(n):
        pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f'{i:04d}.png')


def test_small_suite_writes_every_part(tmp_path):
  _image_folder(tmp_path / 'cifar', {'train': 20, 'val': 4})
  out = tmp_path / 'out'
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': '',
         'XDG_CACHE_HOME': str(tmp_path / 'cache')}
  proc = subprocess.run(
      ['bash', os.path.join(ROOT, 'benchmarks', 'gpu_suite.sh'), str(out),
       '--small', f'--data_dir={tmp_path / "cifar"}',
       f'--runs_dir={tmp_path / "runs"}'],
      capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  with open(out / 'suite.json') as f:
    suite = json.load(f)
  assert suite['tensorflow_imported'] is False
  parts = suite['parts']
  assert set(suite['part_time_s']) == {'smoke', 'step_bench', 'runs'}
  assert parts['smoke']['final_eval_accuracy'] > 0.3  # digits learns
  for setting in ('default', 'every_step'):
    rows = parts['step_bench'][setting]
    # k by the config's FLOP share (0.6: 1 of the tiny CNN's 4 units), all.
    assert [r['k'] for r in rows] == [0, 1, 3]
    assert rows[-1]['flops'] < rows[0]['flops']
  for mode in ('sgd', 'static', 'static_oja'):
    assert parts[f'run_{mode}']['eval_split'] == 'val'
  for name in ('comparison.md', 'comparison.json', 'suite.log',
               'accuracy_vs_epoch.png'):
    assert (out / name).exists()
