"""What storing CIFAR-10 as JPEG costs: the same images, lossless and as JPEG.

  # the CPU proxy (../shared/data/cifar10-subset: 4,153 training images,
  # 1,017 test images), ResNet-20 with the proxy recipe of RESULTS.md:
  python benchmarks/jpeg_cost.py --out=OUT \
      --data_dir=../shared/data/cifar10-subset --seeds=4 \
      --reference_dir=../shared/data/cifar10-jpg \
      --config.model.name=resnet20 --config.batch_size=128 \
      --config.optim.learning_rate=0.1 --config.optim.schedule=cosine \
      --config.optim.warmup_epochs=1 --config.data.cutout=0 \
      --config.eval_tta=none --config.num_epochs=15
  # full scale, where the original CIFAR-10 is at hand (a GPU):
  python benchmarks/jpeg_cost.py --out=OUT --data_dir=DIR/cifar-10-batches-py
  python benchmarks/jpeg_cost.py --out=OUT --small   # the tests' check, ~20 s

../shared/data/cifar10-jpg holds CIFAR-10 as 32x32 JPEGs (quality 75, 4:2:0
chroma), so every accuracy measured on it pays for the compression, and the
public recipes it is compared with trained on the original pixels. This
script measures the price: from the original python-pickle files
(--data_dir), it writes the same images twice as an image folder (train/:
the training batches, val/: the test batch; nothing is chosen on it) under
OUT/images, once lossless (PNG) and once through that JPEG encoding (PIL,
quality 75, 4:2:0: the encoding of cifar10-jpg; --reference_dir checks that
against the folder's files of the same images), and trains the config's
plain SGD on each, --seeds seeds paired (the same seed: the same init, data
order and augmentation; only the pixels differ), each evaluated on its own
kind of test images: what the public figure measures, and what ours does. It
prints and writes to OUT/jpeg_cost.json each seed's accuracies and the
paired difference (JPEG minus lossless: mean, std, 95% interval, n), the
encoding's mean absolute pixel error, and the final training loss and
accuracy (does the compression make the training images harder to fit?).
Runs go to OUT/runs/<lossless|jpeg>/seed_<n>; a finished one is skipped, so
the same command goes on where it stopped.
"""
import glob
import io
import operator
import os
import sys
import time
from typing import Any, Dict

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags
import numpy as np
from PIL import Image

from localsgd_jax import metrics as metrics_lib
from localsgd_jax import modes as modes_lib
from localsgd_jax import run_stats
from localsgd_jax import runs as runs_lib
from localsgd_jax import train_lib
from localsgd_jax import workdir as workdir_lib
from localsgd_jax.data import load_cifar_dir
from localsgd_jax.errors import UserError

import suite_common  # benchmarks/suite_common.py  # pylint: disable=g-bad-import-order

_CONFIG = config_flags.DEFINE_config_file(
    'config', os.path.join(suite_common.ROOT, 'configs', 'cifar10_resnet.py'),
    'The run config (plain SGD of it is trained); overrides with '
    '--config.x=y.', lock_config=True)
_OUT = flags.DEFINE_string('out', None, 'Output folder.', required=True)
_DATA_DIR = flags.DEFINE_string(
    'data_dir', '', 'The folder holding cifar-10-batches-py/ (or that '
    'folder itself); default: ../shared/data/cifar10-subset.')
_SEEDS = flags.DEFINE_integer('seeds', 3, 'Paired seeds.')
_QUALITY = flags.DEFINE_integer('quality', 75, 'JPEG quality (cifar10-jpg: '
                                '75).')
_REFERENCE = flags.DEFINE_string(
    'reference_dir', '', 'An image folder holding the same images as JPEG '
    '(<split>/<class>/*.jpg, e.g. ../shared/data/cifar10-jpg): each '
    "training image's JPEG is compared with its class's nearest file there, "
    "to check that the encoding is the folder's.")
_SMALL = flags.DEFINE_bool(
    'small', False, 'A CPU check of the whole script: the tiny CNN on 12 '
    'images per class for 2 epochs, 2 seeds.')

# The CIFAR-10 label order; alphabetical, so the image folder's sorted
# class folders keep the labels.
CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog',
           'horse', 'ship', 'truck')
KINDS = ('lossless', 'jpeg')
MATCH_255 = 20.0


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
  """`image` (H, W, 3) uint8 as the JPEG bytes cifar10-jpg's encoding gives."""
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, 'JPEG', quality=quality,
                              subsampling=2)  # 4:2:0
  return buffer.getvalue()


def decode(data: bytes) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(data)).convert('RGB'))


def write_folders(splits: Dict[str, tuple], root: str, quality: int,
                  source: str) -> Dict[str, float]:
  """root/<kind>/<split>/<class>/<i>.png|.jpg for both kinds; returns the
  JPEG's mean absolute pixel error (0-255 scale) per split. A folder that
  is complete (its `.done` marker, which also keeps its error) is kept if it
  was written from the same `source` files at the same `quality`, and
  refused otherwise."""
  made_from = {'source': os.path.abspath(source), 'quality': quality,
               **{split: len(images) for split, (images, _) in splits.items()}}
  errors = {}
  for kind in KINDS:
    folder = os.path.join(root, kind)
    done = os.path.join(folder, '.done')
    if os.path.exists(done):
      written = runs_lib.read_json(done)
      if written.get('made_from') != made_from:
        raise UserError(f'{folder} was written from '
                        f'{written.get("made_from")}, not {made_from}; pass '
                        'the same --data_dir and --quality, or another --out.')
      errors[kind] = written['error_255']
      continue
    errors[kind] = {}
    for split, (images, labels) in splits.items():
      total = 0.0
      for i, (image, label) in enumerate(zip(images, labels)):
        path = os.path.join(folder, split, CLASSES[label], f'{i:05d}')
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if kind == 'jpeg':
          data = encode_jpeg(image, quality)
          with open(path + '.jpg', 'wb') as f:
            f.write(data)
          total += float(np.abs(decode(data).astype(np.float32)
                                - image).mean())
        else:
          Image.fromarray(image).save(path + '.png')
      errors[kind][split] = total / len(images)
    metrics_lib.write_json(done, {'made_from': made_from,
                                  'error_255': errors[kind]})
  return errors['jpeg']


def compare_encoding(images: np.ndarray, labels: np.ndarray,
                     reference_dir: str, quality: int) -> Dict[str, float]:
  """Our JPEG of each training image against the reference folder's file of
  the same image: the nearest file of its class (train/ and val/) in pixel
  distance, taken as the same image where the two differ by less than
  MATCH_255 on average (a JPEG of it differs by ~5, another image by ~50).
  Returns how many matched, and over those the mean absolute difference of
  the decoded pixels (0-255 scale), the fraction of identical values, and
  each file's error against the original."""
  sums = {'ours_vs_reference_255': 0.0, 'identical_fraction': 0.0,
          'ours_vs_original_255': 0.0, 'reference_vs_original_255': 0.0}
  matched = 0
  for label, name in enumerate(CLASSES):
    paths = sorted(glob.glob(os.path.join(reference_dir, '*', name, '*.jpg')))
    mine = images[labels == label].astype(np.float32)
    if not paths or not len(mine):
      continue
    theirs = np.stack([np.asarray(Image.open(p).convert('RGB'))
                       for p in paths]).astype(np.float32)
    a, b = mine.reshape(len(mine), -1), theirs.reshape(len(theirs), -1)
    distance = ((a * a).sum(1)[:, None] + (b * b).sum(1)[None]
                - 2 * a @ b.T)
    for image, reference in zip(mine, theirs[distance.argmin(1)]):
      if np.abs(reference - image).mean() >= MATCH_255:
        continue
      ours = decode(encode_jpeg(image.astype(np.uint8), quality))
      sums['ours_vs_reference_255'] += float(np.abs(ours - reference).mean())
      sums['identical_fraction'] += float((ours == reference).mean())
      sums['ours_vs_original_255'] += float(np.abs(ours - image).mean())
      sums['reference_vs_original_255'] += float(
          np.abs(reference - image).mean())
      matched += 1
  if not matched:
    raise UserError(f'--reference_dir={reference_dir!r} holds none of these '
                    'training images as <split>/<class>/*.jpg; pass the JPEG '
                    'folder of the same images, or no --reference_dir.')
  return {'images': len(images), 'matched': matched,
          **{k: v / matched for k, v in sums.items()}}


def final_train(path: str) -> Dict[str, float]:
  """The last epoch's mean training loss and accuracy (augmented images)."""
  rows = [r for r in metrics_lib.read_rows(os.path.join(path, 'metrics.jsonl'))
          if 'train_loss' in r]
  return {'train_loss': rows[-1]['train_loss'],
          'train_accuracy': rows[-1]['train_accuracy']}


def main(argv):
  del argv
  t0 = time.perf_counter()
  logging.set_verbosity(logging.ERROR)  # Orbax's notes on every save
  out = _OUT.value
  data_dir = _DATA_DIR.value or suite_common.default_data_dir(
      'cifar10-subset')
  if not data_dir:
    raise UserError('No CIFAR-10 pickle folder: pass --data_dir=DIR holding '
                    'cifar-10-batches-py/ (../shared/data/cifar10-subset '
                    'is the default where it exists).')
  x_train, y_train, x_test, y_test = load_cifar_dir('cifar10', data_dir)
  if int(y_train.max()) >= len(CLASSES):
    raise UserError(f'{data_dir!r} holds labels up to {y_train.max()}: '
                    'CIFAR-10 has 10 classes; pass a CIFAR-10 folder.')
  seeds = 2 if _SMALL.value else _SEEDS.value
  if seeds < 2:
    raise UserError(f'--seeds={seeds}: a paired difference needs at least 2 '
                    'seeds; pass --seeds=2 or more.')
  images = os.path.join(out, 'images')
  error = write_folders({'train': (x_train, y_train), 'val': (x_test, y_test)},
                        images, _QUALITY.value, data_dir)
  print(f'JPEG quality {_QUALITY.value}, 4:2:0: mean absolute pixel error '
        + ', '.join(f'{s} {e:.2f}/255' for s, e in error.items()), flush=True)
  if _REFERENCE.value:
    check = compare_encoding(x_train, y_train, _REFERENCE.value,
                             _QUALITY.value)
    print(f'against {_REFERENCE.value}, {check["matched"]} of '
          f'{check["images"]} training images found there: '
          f'ours {check["ours_vs_reference_255"]:.2f}/255 from its files '
          f'({100 * check["identical_fraction"]:.0f}% of the values '
          f'identical); from the originals: ours '
          f'{check["ours_vs_original_255"]:.2f}/255, its '
          f'{check["reference_vs_original_255"]:.2f}/255', flush=True)
  record = suite_common.Record(
      out, 'jpeg_cost.json', data_dir=os.path.abspath(data_dir),
      train_images=len(x_train), test_images=len(x_test),
      quality=_QUALITY.value, mean_abs_error_255=error,
      reference=({'dir': os.path.abspath(_REFERENCE.value), **check}
                 if _REFERENCE.value else None),
      command=' '.join(sys.argv))
  runs: Dict[str, Dict[int, Dict[str, Any]]] = {k: {} for k in KINDS}
  for seed in range(seeds):
    for kind in KINDS:
      config = suite_common.prepare_config(
          _CONFIG.value, os.path.join(images, kind), _SMALL.value)
      cfg = modes_lib.mode_config(config, modes_lib.BASELINE, seed)
      cfg.checkpoint.every_epochs = cfg.num_epochs
      path = os.path.join(out, 'runs', kind, f'seed_{seed}')
      if not workdir_lib.finished_run(path, cfg):
        print(f'=== {path} ({time.perf_counter() - t0:.0f}s)', flush=True)
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, 'train.log'), 'a') as log:
          with suite_common.redirect(log):
            train_lib.train_and_evaluate(cfg, path)
      summary = runs_lib.read_json(os.path.join(path, 'summary.json'))
      fit = final_train(path)
      runs[kind][seed] = {'summary': summary, **fit}
      record(f'{kind}/seed_{seed}', {
          'eval_accuracy': summary['final_eval_accuracy'],
          'eval_accuracy_tta': summary.get('final_eval_accuracy_tta'),
          **fit, 'total_time_s': summary['total_time_s']})
      print(f'{kind} seed {seed}: accuracy '
            f'{summary["final_eval_accuracy"]:.4f}', flush=True)
  diff = run_stats.paired_difference(runs['jpeg'], runs['lossless'])
  record('jpeg_minus_lossless', diff)
  print(f'\nJPEG minus lossless, n = {len(diff["seeds"])} paired seeds: '
        f'{100 * diff["mean"]:+.2f} +/- {100 * diff["std"]:.2f} points '
        f'(95% CI +/- {100 * diff["ci95"]:.2f}); per seed '
        + ', '.join(f'{100 * d:+.2f}' for d in diff['diffs']))
  for kind in KINDS:
    accs = [run_stats.final_acc(r) for r in runs[kind].values()]
    print(f'{kind}: {100 * run_stats.mean(accs):.2f} +/- '
          f'{100 * run_stats.std(accs):.2f}%')
  # Is the JPEG training set harder to fit? The last epoch's training loss
  # and accuracy, paired the same way.
  for field in ('train_loss', 'train_accuracy'):
    paired = run_stats.paired_difference(runs['jpeg'], runs['lossless'],
                                         value=operator.itemgetter(field))
    record(f'{field}_jpeg_minus_lossless', paired)
    print(f'{field}, JPEG minus lossless: {paired["mean"]:+.4f} +/- '
          f'{paired["std"]:.4f} (95% CI +/- {paired["ci95"]:.4f})')
  print(f'{out}/jpeg_cost.json ({time.perf_counter() - t0:.0f}s)')


def _main(argv):
  try:
    main(argv)
  except UserError as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  app.run(_main)
