"""benchmarks/gpu_suite.sh --small: the GPU suite's code, end to end on a CPU."""
import json
import os
import shutil
import subprocess
import sys
import tarfile

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
       f'--runs_dir={tmp_path / "runs"}',
       '--parts=smoke,step_bench,imagenet_bench,runs'],
      capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  with open(out / 'suite.json') as f:
    suite = json.load(f)
  assert suite['tensorflow_imported'] is False
  parts = suite['parts']
  assert set(suite['part_time_s']) == {'smoke', 'step_bench',
                                       'imagenet_bench', 'runs'}
  bench = parts['imagenet_bench']['tiny_32']
  assert [r['k'] for r in bench['rows']] == sorted(
      {0, bench['k_half'], 3})
  assert bench['k_half_forward_flop_share'] <= 0.5
  assert parts['smoke']['final_eval_accuracy'] > 0.3  # digits learns
  for setting in ('default', 'every_step'):
    rows = parts['step_bench'][setting]
    # k by the config's FLOP share (0.6: 1 of the tiny CNN's 4 units), all.
    assert [r['k'] for r in rows] == [0, 1, 3]
    assert rows[-1]['flops'] < rows[0]['flops']
  for mode in ('sgd', 'static', 'static_frozen'):
    assert parts[f'run_{mode}']['eval_split'] == 'val'
  for name in ('comparison.md', 'comparison.json', 'suite.log',
               'accuracy_vs_epoch.png'):
    assert (out / name).exists()


def test_small_frontier_runs_every_stage_and_resumes(tmp_path):
  """benchmarks/frontier.py --small: recipe, grid, frontier and report,
  then the same command with the runs' records alone skips every run."""
  _image_folder(tmp_path / 'cifar', {'train': 16, 'val': 2})
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': '',
         'XDG_CACHE_HOME': str(tmp_path / 'cache')}

  def frontier(out, runs, *flags):
    proc = subprocess.run(
        ['python', os.path.join(ROOT, 'benchmarks', 'frontier.py'),
         f'--out={out}', '--small', f'--data_dir={tmp_path / "cifar"}',
         f'--runs_dir={runs}', *flags],
        capture_output=True, text=True, env=env, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    with open(out / 'stages.json') as f:
      return json.load(f)['parts']

  parts = frontier(tmp_path / 'out', tmp_path / 'runs')
  recipe = parts['recipe']
  plain = {'recipe_lr1x_cutout12', 'recipe_lr2x_cutout12'}
  assert plain < set(recipe['runs'])
  # The other init is tried on the better of the two learning rates (the
  # config's is torchvision's), the moving average on the better of those;
  # a trial is better only by more than the margin (0.5 points).
  runs = recipe['runs']

  def better(trial, given):
    accs = runs[trial]['holdout_accuracy'], runs[given]['holdout_accuracy']
    return trial if accs[0] > accs[1] + 0.005 else given

  lr = better('recipe_lr2x_cutout12', 'recipe_lr1x_cutout12')
  torch = f'{lr}_torch_default'
  assert runs[lr]['init'] == 'he_fan_out'
  assert runs[torch]['init'] == 'torch_default'
  assert runs[torch]['lr_scale'] == runs[lr]['lr_scale']
  best = better(torch, lr)
  ema = f'{best}_ema0.99'
  assert set(runs) - plain == {torch, ema}
  assert runs[ema]['ema_decay'] == 0.99
  assert runs[ema]['init'] == runs[best]['init']
  assert recipe['chosen'] == better(ema, best)
  for field in ('ema_decay', 'init'):
    assert recipe[field] == runs[recipe['chosen']][field]
  grid = parts['grid']
  assert grid['mode'] in ('static_w50_k1_frozen', 'static_w50_k1_oja')
  assert grid['cost'] in ('time', 'flops')
  # 18 runs: 4 recipe, 6 grid (sgd, 2 schedules, 2 peers, sgd@1) and
  # 4 + 4 frontier (sgd, the pair, sgd@1 per seed).
  assert parts['runs']['trained'] == 18
  with open(tmp_path / 'out' / 'comparison.json') as f:
    entries = {e['mode']: e for e in json.load(f)['entries']}
  assert set(entries) == {'sgd', 'static_w50_k1_frozen', 'static_w50_k1_oja'}
  assert entries['sgd']['num_runs'] == 2
  assert (tmp_path / 'out' / 'accuracy_vs_cost.png').exists()
  # Finished runs lose their checkpoints.
  assert not (tmp_path / 'runs' / 'frontier' / 'sgd' / 'seed_0' /
              'checkpoints').exists()
  # OUT is what a device call brings back: at most 8 files, no subfolders,
  # plain names; the records travel in one archive.
  out = sorted(p.name for p in (tmp_path / 'out').iterdir())
  assert out == ['accuracy_vs_cost.png', 'comparison.json', 'comparison.md',
                 'compile_cache.tgz', 'records.tgz', 'stages.json',
                 'stages.log']
  with tarfile.open(tmp_path / 'out' / 'compile_cache.tgz') as tar:
    programs = tar.getnames()
  # JAX's cache entries, flat.
  assert any(n.endswith('-cache') for n in programs)
  assert not [n for n in programs if '/' in n]
  with tarfile.open(tmp_path / 'out' / 'records.tgz') as tar:
    names = tar.getnames()
  assert 'frontier/sgd/seed_1/summary.json' in names
  assert 'frontier/accuracy_vs_epoch.png' in names
  assert not [n for n in names if 'checkpoints' in n
              or n.startswith('compile_cache/')]
  # A fresh machine: another runs folder, the archive only.
  again = frontier(tmp_path / 'out2', tmp_path / 'runs2',
                   f'--resume_from={tmp_path / "out" / "records.tgz"}')
  assert again['runs']['trained'] == 0
  assert again['runs']['skipped'] == 18
  assert again['stopped_before'] is None and parts['stopped_before'] is None
  # The programs came along, into the new runs folder's cache.
  assert sorted(p.name for p in (tmp_path / 'runs2' / 'compile_cache').iterdir()
                if p.is_file()) == sorted(programs)
  assert again['grid']['mode'] == grid['mode']
  # A lend that stopped between a seed's full-budget run and one of its
  # forks: the next machine has that run's records but not the checkpoints
  # the fork starts from, so it trains the run again, then the fork.
  runs3 = tmp_path / 'runs3'
  with tarfile.open(tmp_path / 'out' / 'records.tgz') as tar:
    tar.extractall(runs3, filter='data')
  shutil.rmtree(runs3 / 'frontier' / 'static_w50_k1_oja' / 'seed_1')
  with open(runs3 / 'stages.json') as f:
    stages = json.load(f)
  stages['parts']['stopped_before'] = 'the call that stopped there'
  with open(runs3 / 'stages.json', 'w') as f:
    json.dump(stages, f)
  third = frontier(tmp_path / 'out3', runs3)
  assert (third['runs']['trained'], third['runs']['skipped']) == (2, 16)
  assert third['stopped_before'] is None  # that call's record replaced
  with open(tmp_path / 'out3' / 'stages.log') as f:
    assert 'frontier/sgd/seed_1: finished elsewhere' in f.read()
  assert (runs3 / 'frontier' / 'static_w50_k1_oja' / 'seed_1' /
          'summary.json').exists()



def test_frontier_packs_the_newest_programs_that_fit(tmp_path):
  """pack_compile_cache: a cache larger than a device call brings back
  travels as its newest programs (a smaller older one fills the rest);
  the archive stays under the limit; an empty cache packs nothing."""
  script = f"""
import os, sys, tarfile
sys.path.insert(0, {os.path.join(ROOT, 'benchmarks')!r})
import frontier
cache = os.path.join(sys.argv[1], 'runs', 'compile_cache')
os.makedirs(os.path.join(cache, 'subfolder'))  # not a program: skipped
sizes = {{'oldest': 40_000, 'old': 60_000, 'new': 60_000, 'newest': 50_000}}
for age, (name, size) in enumerate(reversed(list(sizes.items()))):
  path = os.path.join(cache, name + '-cache')
  with open(path, 'wb') as f:
    f.write(os.urandom(size))  # incompressible
  os.utime(path, (1e9 - age, 1e9 - age))
out = os.path.join(sys.argv[1], 'out')
os.makedirs(out)
path = frontier.pack_compile_cache(os.path.dirname(cache), out, 160_000)
assert os.path.getsize(path) <= 160_000
with tarfile.open(path) as tar:
  print(sorted(tar.getnames()))
empty = os.path.join(sys.argv[1], 'empty')
print(frontier.pack_compile_cache(empty, out), os.listdir(out))
"""
  proc = subprocess.run([sys.executable, '-c', script, str(tmp_path)],
                        capture_output=True, text=True, timeout=300,
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.strip().splitlines()
  assert 'the newest 3 of its 4 programs packed' in lines[0]
  # 'old' (60 kB) no longer fits after 'newest' and 'new'; 'oldest' does.
  assert lines[1] == "['new-cache', 'newest-cache', 'oldest-cache']"
  assert lines[2] == 'None []'  # and the earlier archive is gone


@pytest.mark.parametrize('archive', ['missing', 'damaged'])
def test_frontier_refuses_records_it_cannot_unpack(tmp_path, archive):
  """--resume_from a file that is not there, or cut short: one line that
  names it, exit 2, nothing trained."""
  path = tmp_path / 'records.tgz'
  if archive == 'damaged':
    path.write_bytes(b'\x1f\x8b\x08\x00cut short')
  proc = subprocess.run(
      ['python', os.path.join(ROOT, 'benchmarks', 'frontier.py'),
       f'--out={tmp_path / "out"}', '--small', f'--data_dir={tmp_path}',
       f'--runs_dir={tmp_path / "runs"}', f'--resume_from={path}'],
      capture_output=True, text=True, timeout=300, cwd=ROOT,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': ''})
  assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
  assert proc.stderr.strip().splitlines()[-1].startswith(
      f'error: --resume_from={path}')
  assert 'Traceback' not in proc.stderr
  assert not list((tmp_path / 'runs').rglob('summary.json'))


def test_frontier_dry_run_makes_its_images_and_runs_the_stages(tmp_path):
  """benchmarks/frontier.py through frontier_dry_run.py: the recipe stage
  on the script's own random 8x8 images. The second learning rate's run
  compiles nothing: its step is the first run's program (the rates are
  data), loaded from the compilation cache."""
  proc = subprocess.run(
      ['python', os.path.join(ROOT, 'benchmarks', 'frontier_dry_run.py'),
       f'--out={tmp_path / "out"}', f'--runs_dir={tmp_path / "runs"}',
       '--stages=recipe', '--recipe_lr_scales=1,2', '--recipe_ema=',
       '--time_limit_s=0', '--config.model.name=resnet20',
       '--config.num_epochs=1', '--config.batch_size=20',
       '--config.eval_batch_size=20', '--config.data.cutout=0'],
      capture_output=True, text=True, timeout=600, cwd=ROOT,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': ''})
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  assert (tmp_path / 'runs_data' / 'val' / 'class9').is_dir()
  summaries = []
  for name in ('recipe_lr1x_cutout0', 'recipe_lr2x_cutout0'):
    with open(tmp_path / 'runs' / 'recipe' / name / 'seed_0' /
              'summary.json') as f:
      summaries.append(json.load(f))
  first, second = summaries
  assert first['compile_cache_requests'] > first['compile_cache_hits']
  assert second['compile_cache_requests'] == second['compile_cache_hits'] > 0


def test_run_budget_starts_no_run_expected_to_outlast_the_limit():
  """suite_common.RunBudget: a run's expected time is its own earlier
  one, else the median of the call's runs; the records are saved after
  every run in the last `closing_s`; limit 0 is no limit."""
  sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
  import suite_common  # pylint: disable=g-import-not-at-top
  budget = suite_common.RunBudget(100, closing_s=30)
  assert budget.may_start('sgd', 99.0) and not budget.may_start('sgd', 100.5)
  for key, seconds in (('sgd', 10.0), ('fork', 2.0), ('freeze', 40.0)):
    budget.finished(key, seconds)
  assert budget.expected_s('freeze') == 40.0
  assert budget.expected_s('new') == 10.0  # the median of 2, 10, 40
  assert budget.may_start('fork', 98.0) and not budget.may_start('sgd', 91.0)
  assert budget.may_start('new', 90.0) and not budget.may_start('freeze', 61)
  assert not budget.closing(69.0) and budget.closing(70.0)
  free = suite_common.RunBudget(0)
  free.finished('sgd', 1e6)
  assert free.may_start('sgd', 1e9) and not free.closing(1e9)


def _cifar_pickles(folder, sizes):
  """folder/<name>: CIFAR-10 python-pickle batches of random images, every
  class in each; returns their (N, 32, 32, 3) images and labels."""
  import pickle  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  folder.mkdir(parents=True)
  arrays = {}
  for name, n in sizes.items():
    labels = [i % 10 for i in range(n)]
    # Blocks of 4x4 pixels: smooth enough for JPEG to keep each image
    # nearer to itself than to the others (random pixels it does not keep).
    blocks = rng.integers(0, 256, (n, 3, 8, 8), dtype=np.uint8)
    pixels = np.kron(blocks, np.ones((1, 1, 4, 4), np.uint8)).reshape(n, -1)
    with open(folder / name, 'wb') as f:
      pickle.dump({b'data': pixels, b'labels': labels}, f)
    arrays[name] = (pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1),
                    labels)
  return arrays


def test_jpeg_cost_trains_both_kinds_paired_and_resumes(tmp_path):
  """benchmarks/jpeg_cost.py --small: the same images as PNG (bit-exact)
  and as JPEG (the recorded error is the files'), both trained with the
  same seeds, the difference paired by seed; again: no run is retrained;
  bad input: one line."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  arrays = _cifar_pickles(tmp_path / 'cifar-10-batches-py',
                          {'data_batch_1': 130, 'test_batch': 20})
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': ''}
  out = tmp_path / 'out'

  def jpeg_cost(*flags):
    return subprocess.run(
        ['python', os.path.join(ROOT, 'benchmarks', 'jpeg_cost.py'),
         f'--out={out}', '--small', *flags], capture_output=True, text=True,
        env=env, timeout=600, cwd=ROOT)

  proc = jpeg_cost(f'--data_dir={tmp_path}')
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  assert proc.stdout.count('=== ') == 4
  with open(out / 'jpeg_cost.json') as f:
    record = json.load(f)
  images, labels = arrays['test_batch']
  classes = sorted(os.listdir(out / 'images' / 'lossless' / 'val'))
  assert len(classes) == 10
  error = []
  for i, (image, label) in enumerate(zip(images, labels)):
    stem = f'{classes[label]}/{i:05d}'
    png = np.asarray(Image.open(out / 'images/lossless/val' / f'{stem}.png'))
    np.testing.assert_array_equal(png, image)
    jpg = np.asarray(Image.open(out / 'images/jpeg/val' / f'{stem}.jpg'))
    error.append(np.abs(jpg.astype(np.float32) - image).mean())
  assert record['mean_abs_error_255']['val'] == pytest.approx(
      np.mean(error), rel=1e-5)
  assert np.mean(error) > 0.5
  parts = record['parts']
  diff = parts['jpeg_minus_lossless']
  assert diff['seeds'] == [0, 1]
  assert diff['diffs'] == pytest.approx(
      [parts[f'jpeg/seed_{s}']['eval_accuracy']
       - parts[f'lossless/seed_{s}']['eval_accuracy'] for s in (0, 1)])
  fit = parts['train_loss_jpeg_minus_lossless']
  assert fit['diffs'] == pytest.approx(
      [parts[f'jpeg/seed_{s}']['train_loss']
       - parts[f'lossless/seed_{s}']['train_loss'] for s in (0, 1)])
  configs = {}
  for kind in ('lossless', 'jpeg'):
    for seed in (0, 1):
      with open(out / 'runs' / kind / f'seed_{seed}' / 'config.json') as f:
        config = json.load(f)
      assert config['seed'] == seed
      assert config['data']['dir'] == str(out / 'images' / kind)
      config['data'].pop('dir')
      configs[kind, seed] = config
  # Paired: the two kinds of a seed differ in their images only.
  assert configs['lossless', 0] == configs['jpeg', 0]
  assert configs['lossless', 0] != configs['lossless', 1]

  # Again, checking the encoding against a JPEG folder of the same images
  # under other names (ours, renamed): each is found, and is ours exactly.
  reference = tmp_path / 'reference'
  for path in (out / 'images' / 'jpeg').glob('*/*/*.jpg'):
    target = reference / path.parent.relative_to(out / 'images' / 'jpeg')
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, target / f'x{path.name}')
  again = jpeg_cost(f'--data_dir={tmp_path}', f'--reference_dir={reference}')
  assert again.returncode == 0, again.stderr[-3000:]
  assert '=== ' not in again.stdout
  result = lambda p: [l for l in p.stdout.splitlines() if 'minus' in l]
  assert len(result(proc)) == 3 and result(again) == result(proc)
  with open(out / 'jpeg_cost.json') as f:
    check = json.load(f)['reference']
  assert check['images'] == check['matched'] == 130
  assert check['ours_vs_reference_255'] == 0
  assert check['identical_fraction'] == 1
  assert check['ours_vs_original_255'] == pytest.approx(
      check['reference_vs_original_255'])

  for flags, message in (
      ([f'--data_dir={tmp_path / "missing"}'], 'does not exist'),
      ([f'--data_dir={tmp_path}', '--seeds=1', '--nosmall'], '--seeds=1'),
      ([f'--data_dir={tmp_path}', f'--reference_dir={out / "images"}'],
       'holds none of these'),
      ([f'--data_dir={tmp_path}', '--quality=50'], 'was written from')):
    bad = jpeg_cost(*flags)
    assert bad.returncode == 1
    lines = bad.stderr.strip().splitlines()
    assert lines[-1].startswith('error: ') and message in lines[-1], lines
    assert 'Traceback' not in bad.stderr
