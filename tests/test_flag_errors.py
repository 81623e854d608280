"""A bad command line is one `error:` line (exit status 2), no traceback.

The CLI is the subject here, so these run train.py / compare.py; they fail
while parsing flags, before JAX is imported, so each takes a fraction of a
second (a bad config value: in config validation, a second or two).
"""
import os
import subprocess
import sys

import pytest

from localsgd_jax import flag_errors
from localsgd_jax.configs import quickstart

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script, *args):
  return subprocess.run([sys.executable, os.path.join(ROOT, script), *args],
                        capture_output=True, text=True, cwd=ROOT, timeout=120)


def _error_line(out):
  assert out.returncode == 2, out.stderr
  assert 'Traceback' not in out.stderr
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), out.stderr
  return lines[0]


@pytest.mark.parametrize('args,expected', [
    # The default config: overrides are applied when cli.py is imported.
    (('--config.no_such_field=1',),
     "--config.no_such_field: the config has no field 'no_such_field'"),
    (('--config.selecton.mode=static',),
     'did you mean --config.selection.mode?'),
    # --config given: overrides are applied while absl parses the flags.
    (('--config=configs/quickstart.py', '--config.optim.lr=0.1'),
     'did you mean --config.optim.learning_rate or '
     '--config.local.learning_rate?'),
    (('--config.num_epochs=abc',),
     "flag --config.num_epochs=abc: invalid literal for int() with base 10: "
     "'abc'"),
    (('--config=no_such_config.py',),
     'cannot load --config=no_such_config.py ([Errno 2] No such file'),
    (('--no_such_flag',), "Unknown command line flag 'no_such_flag'"),
])
def test_train_py_bad_flags(tmp_path, args, expected):
  workdir = tmp_path / 'run'
  line = _error_line(_run('train.py', f'--workdir={workdir}', *args))
  assert expected in line
  assert not workdir.exists()


def test_train_py_bad_config_value(tmp_path):
  # Refused by config validation before anything is created.
  workdir = tmp_path / 'run'
  line = _error_line(_run('train.py', f'--workdir={workdir}',
                          '--config.selection.table=0:0,3:2,3:4'))
  assert line == ('error: config.selection.table: epoch 3 is given twice '
                  '(3:2 and 3:4); give each epoch once')
  assert not workdir.exists()


def test_compare_py_misspelt_field():
  line = _error_line(_run('compare.py', '--workdir=/nonexistent/cmp',
                          '--config.selection.rmp=cubic'))
  assert 'did you mean --config.selection.ramp?' in line


def test_unknown_field_suggestions():
  config = quickstart.get_config()
  assert flag_errors.unknown_field(config, 'optim.learning_rate') is None
  assert 'did you mean --config.data.name?' in flag_errors.unknown_field(
      config, 'data.nme')
