"""Tests run on the CPU backend with 4 host devices (for the sharding tests).

These must be set before JAX is imported anywhere.
"""
import os
import shutil

import pytest

os.environ['JAX_PLATFORMS'] = 'cpu'
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=4')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')



@pytest.fixture
def run_copy(finished, tmp_path):
  """A copy of the test module's `finished` run, free to damage or extend."""
  workdir = str(tmp_path / 'run')
  shutil.copytree(finished, workdir)
  return workdir
