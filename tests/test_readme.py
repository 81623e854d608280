"""The README's commands: present as documented, pointing at real files, and
the offline quickstart's training command runs (one short epoch)."""
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETUP_COMMANDS = (
    'pip install -r requirements.txt && python train.py',
    'pip install -r requirements-dev.txt && python -m pytest -q tests',
)


def _readme() -> str:
  with open(os.path.join(ROOT, 'README.md')) as f:
    return f.read()


def bash_commands(markdown: str):
  """The commands of every ```bash block: continuations joined, comments off."""
  commands = []
  for block in re.findall(r'^```bash\n(.*?)^```', markdown, re.M | re.S):
    for line in block.replace('\\\n', ' ').splitlines():
      line = re.sub(r'(^|\s)#.*$', '', line).strip()
      if line:
        commands.append(re.sub(r'\s+', ' ', line))
  return commands


def test_bash_commands_parser():
  text = ('x\n```bash\n# a comment\npython a.py --x=1 \\\n    --y=2  # why\n'
          '```\n```python\nnot = bash\n```\n')
  assert bash_commands(text) == ['python a.py --x=1 --y=2']


@pytest.mark.parametrize('command', SETUP_COMMANDS)
def test_setup_command_is_in_readme(command):
  assert command in bash_commands(_readme())


def test_files_the_readme_names_exist():
  readme = _readme()
  configs = re.findall(r'--config=(configs/[\w.-]+\.py)', readme)
  assert 'configs/cifar10_resnet.py' in configs
  # Paths in the prose and tables, and the files the commands run or read.
  named = re.findall(r'(?<![\w/.])((?:configs|notebooks|benchmarks)/'
                     r'[\w.-]+\.(?:py|ipynb))', readme)
  for command in bash_commands(readme):
    named += [t for t in shlex.split(command) if not t.startswith('-')
              and re.fullmatch(r'[\w./-]+\.(py|ipynb|txt)', t)]
  missing = sorted({p for p in configs + named
                    if not os.path.isfile(os.path.join(ROOT, p))})
  assert not missing, f'README names missing files: {missing}'


def test_ci_runs_the_readme_test_command():
  test_command = SETUP_COMMANDS[1].split(' && ')[1]
  with open(os.path.join(ROOT, '.ci', 'run')) as f:
    ci = [line.strip() for line in f]
  assert test_command in ci
  assert any(re.fullmatch(r'python -m pip install (-q )?-r requirements-dev'
                          r'\.txt', line) for line in ci)


@pytest.mark.slow  # the training command, in a subprocess
def test_quickstart_train_command_runs(tmp_path):
  """The README's `python train.py`, cut to two epochs on 16x16 digits: SGD,
  then LoCal+SGD (k = 2); run again, it has nothing to train."""
  command = SETUP_COMMANDS[0].split(' && ')[1]
  argv = shlex.split(command)
  assert argv[0] == 'python'
  workdir = tmp_path / 'quickstart'
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)  # One host device, as a user has.
  run = lambda: subprocess.run(
      [sys.executable, *argv[1:], f'--workdir={workdir}',
       '--config.num_epochs=2', '--config.data.image_size=16',
       '--config.log.progress=false'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  proc = run()
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  with open(workdir / 'summary.json') as f:
    summary = json.load(f)
  assert summary['num_epochs'] == 2
  assert summary['config']['data']['name'] == 'digits'  # the offline default
  assert summary['final_eval_accuracy'] > 0.2  # learnt (chance is 0.1)
  with open(workdir / 'metrics.jsonl') as f:
    rows = [json.loads(line) for line in f]
  assert [r['transition'] for r in rows] == [0, 2]  # the method, k moving
  assert 'warning' not in proc.stderr  # an SGD epoch before the local one
  out = proc.stdout
  for stage in ('Loading data: digits', 'Compiling the step for k=0',
                'Compiling the step for k=2', 'epoch 2/2  k=2/4',
                'Done: 2 epochs', 'test accuracy: final',
                f'files in {workdir}: '):
    assert stage in out, (stage, out)
  again = run()
  assert again.returncode == 0, again.stderr[-3000:]
  assert 'Nothing to train: all 2 epochs are done' in again.stdout
  assert (f'test accuracy: final {summary["final_eval_accuracy"]:.4f}'
          in again.stdout)


@pytest.mark.parametrize('script,flags', [
    ('train.py', ('--config', '--workdir', '--coordinator_address')),
    ('compare.py', ('--config', '--workdir', '--modes', '--seeds')),
])
def test_help_lists_the_config_and_main_flags(script, flags):
  proc = subprocess.run([sys.executable, os.path.join(ROOT, script),
                         '--help'], capture_output=True, text=True,
                        cwd=ROOT, timeout=120)
  assert 'Traceback' not in proc.stderr, proc.stderr[-2000:]  # absl: exit 1
  for flag in flags:
    assert f'  {flag}:' in proc.stdout, (flag, proc.stdout)
  assert '--config.FIELD=VALUE' in proc.stdout
