"""The Colab notebooks: valid, stored with their small run, and they run.

Both are stored with the outputs of their small CPU run (LOCALSGD_SMALL=1;
the CIFAR-10 one on digits, without CIFAR-10), regenerated with
  LOCALSGD_SMALL=1 LOCALSGD_WORKDIR=localsgd-jax/small \
      jupyter execute --inplace notebooks/NAME.ipynb
The quickstart is executed headless here in small mode (about a minute on 2
CPU cores); run the CIFAR-10 one on CIFAR-10 by hand with
  LOCALSGD_SMALL=1 LOCALSGD_CIFAR_DIR=DIR jupyter execute notebooks/cifar10.ipynb
"""
import json
import os
import re

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(ROOT, 'notebooks')
NAMES = ('quickstart.ipynb', 'cifar10.ipynb')
_REPO = re.compile(r"^REPO = '(https://github\.com/([^/']+/[^/']+))'", re.M)


def _read(name: str) -> nbformat.NotebookNode:
  return nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)


def _source(nb, cell_type: str) -> str:
  return '\n'.join(c.source for c in nb.cells if c.cell_type == cell_type)


@pytest.mark.parametrize('name', NAMES)
def test_notebook_is_valid_v4(name):
  with open(os.path.join(NOTEBOOKS, name)) as f:
    raw = json.load(f)
  assert raw['nbformat'] == 4
  nb = _read(name)
  nbformat.validate(nb)
  assert nb.metadata.kernelspec.name == 'python3'


@pytest.mark.parametrize('name', NAMES)
def test_notebook_is_stored_with_its_small_run(name):
  """Stored with the outputs of one top-to-bottom small CPU run, so that a
  reader on the web sees results:
    LOCALSGD_SMALL=1 jupyter execute --inplace notebooks/NAME.ipynb
  (README); small: a few plots, no errors."""
  code = [c for c in _read(name).cells if c.cell_type == 'code']
  assert code
  assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
  outputs = [o for c in code for o in c.outputs]
  assert not [o for o in outputs if o.output_type == 'error']
  assert any('image/png' in o.get('data', {}) for o in outputs)
  text = ''.join(o.get('text', '') for o in outputs)
  assert 'epochs; ' in text or ' 2 epochs' in text  # the config cell's line
  assert 'Done: 2 epochs' in text  # LOCALSGD_SMALL's 2-epoch runs
  assert os.path.getsize(os.path.join(NOTEBOOKS, name)) < 400_000


@pytest.mark.parametrize('name', NAMES)
def test_notebook_has_colab_badge_for_its_repo(name):
  nb = _read(name)
  setup = nb.cells[[c.cell_type for c in nb.cells].index('code')].source
  match = _REPO.search(setup)
  assert match, 'the first code cell must start with the REPO constant'
  url, slug = match.groups()
  badge = (f'https://colab.research.google.com/github/{slug}/blob/main/'
           f'notebooks/{name}')
  assert f'(https://colab.research.google.com/assets/colab-badge.svg)]' \
         f'({badge})' in _source(nb, 'markdown')
  # One repository everywhere: the badge, the install cell, the README.
  with open(os.path.join(ROOT, 'README.md')) as f:
    assert url in f.read()


@pytest.mark.parametrize('name', NAMES)
def test_notebook_has_no_machine_paths(name):
  with open(os.path.join(NOTEBOOKS, name)) as f:
    text = f.read()
  for path in ('/work/', '/tmp/', '/home/', '/content/'):
    assert path not in text, f'{name} hard-codes {path}'


@pytest.mark.slow  # every cell, in a kernel
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
  """Executes every cell of the quickstart in small mode; any error fails."""
  workdir = tmp_path / 'runs'
  monkeypatch.setenv('LOCALSGD_SMALL', '1')
  monkeypatch.setenv('LOCALSGD_WORKDIR', str(workdir))
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  # One host device, as on a laptop (conftest asks for 4 for sharding tests).
  monkeypatch.delenv('XLA_FLAGS', raising=False)
  nb = _read('quickstart.ipynb')
  client = NotebookClient(
      nb, kernel_name='python3', timeout=600,
      resources={'metadata': {'path': NOTEBOOKS}})
  client.execute()  # Raises CellExecutionError on the first failing cell.

  errors = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs
            if o.output_type == 'error']
  assert not errors
  # It trained through the library and drew the report's plots.
  for mode in ('sgd', 'static'):
    assert (workdir / mode / 'seed_0' / 'summary.json').is_file()
  assert (workdir / 'comparison.json').is_file()
  images = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs
            if 'image/png' in o.get('data', {})]
  assert len(images) >= 4  # three report plots and the benchmark's
  with open(workdir / 'comparison.json') as f:
    entries = {e['mode']: e for e in json.load(f)['entries']}
  assert entries['static']['mean_transition'] > 0
  assert entries['sgd']['mean_transition'] == 0
