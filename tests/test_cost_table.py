"""benchmarks/cost_table.py on the tiny CNN: composed and full-step counts."""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'benchmarks'))
import cost_table  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope='module')
def result(tmp_path_factory):
  out = str(tmp_path_factory.mktemp('cost_table'))
  return cost_table.run(
      ['tiny'], [32], out,
      verify_cases=[('tiny', 32, 0, 'oja'), ('tiny', 32, 2, 'frozen'),
                    ('tiny', 32, 2, 'oja')])


def test_gradient_all_reduce_is_4_bytes_per_sgd_parameter(result):
  table, = result['tables']
  for row in table['rows']:
    assert row['allreduce_grad_bytes'] == pytest.approx(
        row['sgd_param_bytes'], rel=0.01), row
  for check in result['checks']:  # the real train step, compiled whole
    assert abs(check['grad_rel_to_4x_sgd_params']) < 0.01, check
  # Frozen local units all-reduce their BatchNorm statistics only; the
  # Hebbian ones also their kernel-sized directions.
  frozen, hebbian = result['checks'][1:]
  assert frozen['full_allreduce_local_bytes'] < 1000
  assert hebbian['full_allreduce_local_bytes'] > 4 * 16 * 3 * 9


def test_flops_fall_with_k_and_composition_matches_full_steps(result):
  rows = result['tables'][0]['rows']
  frozen = [r['frozen_flops_per_image'] for r in rows]
  assert all(b < a for a, b in zip(frozen, frozen[1:])), frozen
  # Oja's rule on the tiny CNN's last conv (64 channels at 4x4) costs about
  # what the backward pass it removes did (tests/test_train_step.py).
  hebbian = [r['hebbian_flops_per_image'] for r in rows]
  assert all(b <= a * 1.01 for a, b in zip(hebbian, hebbian[1:])), hebbian
  assert hebbian[-1] < 0.8 * hebbian[0]
  assert all(r['frozen_flops_per_image'] <= r['hebbian_flops_per_image']
             for r in rows)
  shares = [r['local_forward_flop_share'] for r in rows]
  assert shares[0] == 0 and shares == sorted(shares) and shares[-1] < 1
  for check in result['checks']:
    assert abs(check['flops_rel_diff']) < 0.05, check


def test_files_are_written(result):
  paths = result['paths']
  assert all(os.path.getsize(p) > 0 for p in paths.values())
  with open(paths['json']) as f:
    data = json.load(f)
  assert data['tables'][0]['network'] == 'tiny'
  assert len(data['tables'][0]['rows']) == 4
  with open(paths['md']) as f:
    assert '## tiny at 32 px' in f.read()
