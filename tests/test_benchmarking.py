"""The step benchmark's CLI writes one JSON object per k with XLA's counts;
the other benchmark scripts print their figures."""
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow  # a subprocess compiling the step for every k
def test_step_bench_cli(tmp_path):
  out = tmp_path / 'tiny.json'
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'benchmarks', 'step_bench.py'),
       '--model=tiny', '--channels=1', '--image_size=16', '--batch_size=8',
       '--repeats=1', '--steps=1', '--rule=oja', '--hebbian_every=2',
       f'--out={out}'], capture_output=True, text=True, timeout=600,
      env={**os.environ, 'XLA_FLAGS': ''})
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = json.loads(out.read_text())
  assert [r['k'] for r in rows] == [0, 1, 2, 3]
  for r in rows:
    for key in ('k', 'num_units', 'flops', 'temp_bytes', 'step_time_s',
                'images_per_s', 'flops_ratio', 'temp_ratio', 'time_ratio'):
      assert key in r
    assert r['num_units'] == 4
  assert rows[0]['flops_ratio'] == 1.0
  # XLA's own counters: the step with every unit but the head local costs
  # less than the SGD step in FLOPs and temporary memory.
  assert rows[-1]['flops'] < 0.8 * rows[0]['flops']
  assert rows[-1]['temp_bytes'] < 0.6 * rows[0]['temp_bytes']
  for r in rows[1:]:
    want = (r['step_time_s'] + r['frozen_step_time_s']) / 2
    assert abs(r['amortized_step_time_s'] - want) < 1e-12
  assert 'xflops' in proc.stdout  # the printed table


@pytest.mark.slow  # a subprocess training a few epochs of the tiny CNN
def test_loop_bench_prints_its_figures(tmp_path):
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'benchmarks', 'loop_bench.py'),
       '--repeats=1', '--batches=5'], capture_output=True, text=True,
      timeout=600, cwd=tmp_path, env={**os.environ, 'XLA_FLAGS': ''})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'input path, memory (digits):' in proc.stdout
  loop_ms, bare_ms = [float(x) for x in re.findall(
      r'loop ([\d.]+) ms/step, the same program back to back ([\d.]+)',
      proc.stdout)[0]]
  assert loop_ms > 0 and bare_ms > 0


@pytest.mark.slow  # a subprocess compiling the tiny CNN's step 5 times
def test_flop_count_check_prints_both_counts():
  """benchmarks/flop_count_check.py --small: a row per (rule, k), the
  compiled count beside the one as written; the tiny CNN has no depthwise
  convolution, so they agree within a few percent, and k lowers both."""
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'benchmarks',
                                    'flop_count_check.py'), '--small'],
      capture_output=True, text=True, timeout=600,
      env={**os.environ, 'XLA_FLAGS': ''})
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = [line.split(' | ') for line in proc.stdout.splitlines()
          if line.startswith('| tiny |')]
  assert [(r[2], int(r[3])) for r in rows] == [
      ('oja', 0), ('oja', 1), ('oja', 3), ('frozen', 1), ('frozen', 3)]
  written = [float(r[4]) for r in rows]
  assert all(0.97 < float(r[6]) < 1.05 for r in rows)
  assert written[2] < written[0] and written[4] < written[3] < written[0]


def test_model_flop_utilization_is_flops_over_time_over_the_peak():
  """MFU from the counted FLOPs, the measured step time and the datasheet
  peak of the device (none for a CPU: no MFU then)."""
  from localsgd_jax import benchmarking
  from localsgd_jax import hardware
  assert hardware.peak_flops('NVIDIA H200', 'bfloat16') == 989e12
  assert hardware.peak_flops('NVIDIA H100 PCIe', 'bfloat16') == 756e12
  assert hardware.peak_flops('NVIDIA H100 80GB HBM3', 'float32') == 495e12
  assert hardware.peak_flops('cpu', 'float32') is None
  rows = [{'k': 0, 'flops': 1492e9, 'temp_bytes': 1, 'step_time_s': 6.3e-3},
          {'k': 5, 'flops': 1198e9, 'temp_bytes': 1, 'step_time_s': 4.7e-3,
           'frozen_flops': 915e9, 'frozen_step_time_s': 3.6e-3}]
  rows = benchmarking._with_ratios(rows, 512, 1, peak=989e12)  # pylint: disable=protected-access
  assert rows[0]['mfu'] == pytest.approx(1492e9 / 6.3e-3 / 989e12)
  assert rows[0]['mfu'] == pytest.approx(0.2395, abs=1e-4)
  assert rows[1]['frozen_mfu'] == pytest.approx(915e9 / 3.6e-3 / 989e12)
  table = benchmarking.format_table(rows)
  assert 'MFU' in table.splitlines()[0] and '23.9%' in table.splitlines()[2]
  plain = benchmarking._with_ratios(  # pylint: disable=protected-access
      [{'k': 0, 'flops': 1e9, 'temp_bytes': 1, 'step_time_s': 1e-3}], 8, 1)
  assert 'mfu' not in plain[0]
  assert 'MFU' not in benchmarking.format_table(plain)
