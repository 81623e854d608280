"""Several processes: `distributed.initialize` and a 2-process training run.

Two `train.py` processes on loopback (one CPU device each, gloo collectives)
train the tiny model on digits into one shared workdir, as hosts on a shared
filesystem would; one process with 2 CPU devices runs the same command. Both
see the same global batches and run the same SPMD step, so they end with the
same parameters.
"""
import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from localsgd_jax import checkpointing
from localsgd_jax import data
from localsgd_jax import distributed
from localsgd_jax import models
from localsgd_jax import optim
from localsgd_jax import train_step as ts
from localsgd_jax.configs import quickstart
from localsgd_jax.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 300
# One epoch at a fixed k = 2: the step both all-reduces the SGD units'
# gradients and the local units' Hebbian correlations across processes.
OVERRIDES = {
    'data.image_size': 16, 'num_epochs': 1, 'batch_size': 32,
    'selection.mode': 'static', 'selection.table': '0:2',
    'log.tensorboard': False, 'log.progress': False,
}


# ------------------------------------------------------- initialize(): logic

_LAUNCHER_VARS = ('SLURM_JOB_ID', 'SLURM_NTASKS', 'SLURM_STEP_NODELIST',
                  'SLURM_PROCID', 'SLURM_LOCALID', 'OMPI_MCA_orte_hnp_uri',
                  'OMPI_COMM_WORLD_SIZE')


@pytest.fixture
def fake_jax_initialize(monkeypatch):
  """Records jax.distributed.initialize calls instead of making them."""
  for var in _LAUNCHER_VARS:
    monkeypatch.delenv(var, raising=False)
  calls = []
  monkeypatch.setattr(jax.distributed, 'initialize',
                      lambda **kwargs: calls.append(kwargs))
  return calls


def test_single_process_does_nothing(fake_jax_initialize):
  assert not distributed.initialize()
  assert not distributed.initialize(num_processes=1)
  assert not fake_jax_initialize


def test_explicit_values_are_passed(fake_jax_initialize):
  assert distributed.initialize('10.0.0.1:1234', 4, 3)
  assert fake_jax_initialize == [{'coordinator_address': '10.0.0.1:1234',
                                  'num_processes': 4, 'process_id': 3}]


@pytest.mark.parametrize('args', [('10.0.0.1:1234', 0, -1), ('', 2, 0),
                                  ('10.0.0.1:1234', 2, 2),
                                  ('10.0.0.1:1234', 2, -5)])
def test_incomplete_or_bad_values_are_user_errors(fake_jax_initialize, args):
  with pytest.raises(UserError, match='process'):
    distributed.initialize(*args)
  assert not fake_jax_initialize


def test_slurm_is_detected(fake_jax_initialize, monkeypatch):
  monkeypatch.setenv('SLURM_JOB_ID', '7')
  monkeypatch.setenv('SLURM_NTASKS', '1')
  # One task: a single-process run even inside an allocation.
  assert not distributed.initialize()
  monkeypatch.setenv('SLURM_NTASKS', '8')
  assert distributed.cluster_process_count() == 8
  assert distributed.initialize()
  # JAX reads the coordinator, count and index from SLURM itself...
  assert fake_jax_initialize[-1] == {}
  # ...and fills in what explicit flags leave out.
  assert distributed.initialize('node1:1234')
  assert fake_jax_initialize[-1] == {'coordinator_address': 'node1:1234',
                                     'num_processes': None,
                                     'process_id': None}


# ------------------------------------------------------ real processes, CPU


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _command(workdir, *extra):
  return ([sys.executable, os.path.join(ROOT, 'train.py'),
           '--config=' + os.path.join(ROOT, 'configs', 'quickstart.py'),
           f'--workdir={workdir}']
          + [f'--config.{k}={v}' for k, v in OVERRIDES.items()] + list(extra))


def _env(num_devices):
  env = dict(os.environ)
  for var in _LAUNCHER_VARS:
    env.pop(var, None)
  env.update(JAX_PLATFORMS='cpu', CUDA_VISIBLE_DEVICES='',
             TF_CPP_MIN_LOG_LEVEL='3',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={num_devices}')
  return env


def _run_all(commands, env, log_dir):
  """Runs the commands concurrently; kills all of them if one fails or hangs.

  Returns:
    The list of their outputs. Fails the test on a non-zero exit or timeout.
  """
  logs = [open(os.path.join(log_dir, f'proc{i}.log'), 'w+')
          for i in range(len(commands))]
  procs = [subprocess.Popen(c, env=env, cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT)
           for c, log in zip(commands, logs)]
  deadline = time.monotonic() + TIMEOUT_S
  try:
    while any(p.poll() is None for p in procs):
      # A process that died leaves its peers waiting in a collective.
      failed = any(p.poll() not in (None, 0) for p in procs)
      if failed or time.monotonic() > deadline:
        break
      time.sleep(0.5)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
      p.wait()
  outputs = []
  for log in logs:
    log.seek(0)
    outputs.append(log.read())
    log.close()
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, f'exit {p.returncode} (timeout {TIMEOUT_S}s '\
        f'or failure); output tail:\n{out[-3000:]}'
  return outputs


def _final_state(workdir):
  """The train state of the workdir's latest Orbax checkpoint, on the host."""
  config = quickstart.get_config()
  config.data.image_size = OVERRIDES['data.image_size']
  dataset = data.load_dataset(config.data, seed=config.seed)
  model = models.create_model('tiny', dataset.num_classes)
  template = ts.create_train_state(model, optim.direction(config.optim),
                                   jax.random.key(1), dataset.image_shape)
  checkpointer = checkpointing.Checkpointer(workdir, 1, 2)
  try:
    epoch, state, _ = checkpointer.restore_latest(template)
  finally:
    checkpointer.close()
  return epoch, jax.device_get(state)


def _metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow  # three training subprocesses
def test_two_processes_train_like_one(tmp_path):
  multi = str(tmp_path / 'two_processes')
  single = str(tmp_path / 'one_process')
  port = _free_port()
  outputs = _run_all(
      [_command(multi, f'--coordinator_address=127.0.0.1:{port}',
                '--num_processes=2', f'--process_id={i}') for i in (0, 1)],
      _env(1), str(tmp_path))
  assert all('epoch 1/1' in out for out in outputs)
  _run_all([_command(single)], _env(2), str(tmp_path))

  # Both runs used 2 devices; only process 0 wrote the run's files.
  rows_multi, rows_single = _metrics(multi), _metrics(single)
  assert [r['epoch'] for r in rows_multi] == [1]
  assert rows_multi[0]['transition'] == 2
  for workdir in (multi, single):
    with open(os.path.join(workdir, 'summary.json')) as f:
      assert json.load(f)['num_devices'] == 2
  np.testing.assert_allclose(rows_multi[0]['train_loss'],
                             rows_single[0]['train_loss'], rtol=1e-5)
  assert rows_multi[0]['eval_accuracy'] == pytest.approx(
      rows_single[0]['eval_accuracy'], abs=1 / 360)

  epoch_multi, state_multi = _final_state(multi)
  epoch_single, state_single = _final_state(single)
  assert epoch_multi == epoch_single == 1
  assert int(state_multi.step) == int(state_single.step) == 1437 // 32
  # Bit-identical on this CPU; a tolerance leaves room for collectives that
  # sum in another order.
  for tree in ('params', 'batch_stats', 'opt_state'):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                         atol=1e-6),
                 getattr(state_multi, tree), getattr(state_single, tree))
