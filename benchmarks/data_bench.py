"""Cold decode and warm cache load of an image folder, with peak memory,
and the cost of each on-device augmentation per batch.

  python benchmarks/data_bench.py --dir=/path/to/cifar10-jpg

Each phase runs in a fresh process (so that its peak RSS is its own) on an
empty cache folder created under --cache_dir (default: the system temp
folder) and removed at the end:

* cold: scan, decode every train and eval image with PIL, write the cache;
* warm: scan and load both splits from that cache;
* dataset: `load_dataset` from the warm cache, as a training run sees it
  (adds the channel statistics and the copy to the default JAX device);
* augment: one training batch (--batch_size) built by the jitted
  `augment.make_batch` with each augmentation (none, pad_crop,
  random_resized_crop, each + cutout), on the default JAX device: compile
  time apart, then the median of --repeats timed batches.

CPU s adds the user and system time of the phase's process and its decode
workers: on a shared machine it measures the work where wall time also
counts the other loads. Peak RSS is the process's maximum resident set (it includes the Python,
NumPy and JAX imports, listed as 'after imports'); decode workers are forked
processes and are reported separately. The image files are only read; a
first run may include reading them from disk, later ones find them in the
page cache.
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

_EVAL_SPLITS = ('test', 'val', 'validation')  # As in data/sources.py.


def _rss_mb(who: int) -> float:
  return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux.


def _cpu_s() -> float:
  """User + system CPU seconds of this process and its finished children
  (the decode workers): the work done, whatever else loads the cores."""
  return sum(r.ru_utime + r.ru_stime for r in (
      resource.getrusage(resource.RUSAGE_SELF),
      resource.getrusage(resource.RUSAGE_CHILDREN)))


def _augment_phase(root: str, cache_dir: str, batch_size: int,
                   repeats: int) -> None:
  """Times one batch of each augmentation; prints one JSON line each."""
  # pylint: disable=g-import-not-at-top
  import jax
  import numpy as np
  from localsgd_jax import data
  from localsgd_jax.configs import default
  from localsgd_jax.data import augment
  # pylint: enable=g-import-not-at-top
  cfg = default.get_config().data
  cfg.update(dict(name='image_folder', dir=root, cache_dir=cache_dir))
  dataset = data.load_dataset(cfg, seed=0)
  arrays = dataset._arrays_on(None)  # pylint: disable=protected-access
  idx = jax.numpy.arange(batch_size, dtype=np.int32) % dataset.num_train
  side = min(dataset.image_shape[:2])
  cutout = max(1, side * 3 // 8)  # airbench's 12 of 32 pixels
  for crop in ('none', 'pad_crop', 'random_resized_crop'):
    for cut in (0, cutout):
      aug = augment.Augmentation(crop=crop, crop_padding=4, flip=True,
                                   cutout=cut)
      build = lambda step, aug=aug: augment.make_batch(
          arrays['images'], arrays['labels'], idx,
          jax.random.fold_in(jax.random.key(0), step), arrays['mean'],
          arrays['inv_std'], augmentation=aug)[0].block_until_ready()
      start = time.perf_counter()
      build(0)
      compile_s = time.perf_counter() - start
      times = []
      for step in range(1, repeats + 1):
        start = time.perf_counter()
        build(step)
        times.append(time.perf_counter() - start)
      print(json.dumps(dict(
          phase='augment', crop=crop, cutout=cut, batch_size=batch_size,
          shape=list(dataset.image_shape), compile_s=compile_s,
          batch_ms=1000 * sorted(times)[len(times) // 2],
          device=str(jax.devices()[0].platform))))


def _phase(phase: str, root: str, cache_dir: str) -> None:
  """Runs one phase in this process and prints its figures as JSON."""
  # pylint: disable-next=g-import-not-at-top
  from localsgd_jax.data import image_folder
  eval_split = next((s for s in _EVAL_SPLITS
                     if os.path.isdir(os.path.join(root, s))), None)
  imports_mb = _rss_mb(resource.RUSAGE_SELF)
  cpu_start = _cpu_s()
  start = time.perf_counter()
  if phase == 'dataset':
    # pylint: disable=g-import-not-at-top
    from localsgd_jax import data
    from localsgd_jax.configs import default
    # pylint: enable=g-import-not-at-top
    cfg = default.get_config().data
    cfg.update(dict(name='image_folder', dir=root, cache_dir=cache_dir))
    dataset = data.load_dataset(cfg, seed=0)
    images = dataset.num_train + dataset.num_test
    kind = type(dataset).__name__
  else:
    arrays = image_folder.load_image_folder(root, eval_split, cache_dir)
    images = len(arrays.train_images) + (
        0 if arrays.eval_images is None else len(arrays.eval_images))
    kind = f'uint8 {arrays.train_images.shape[1:]}'
  seconds = time.perf_counter() - start
  print(json.dumps(dict(
      phase=phase, seconds=seconds, cpu_s=_cpu_s() - cpu_start,
      images=images, kind=kind,
      imports_mb=imports_mb, peak_mb=_rss_mb(resource.RUSAGE_SELF),
      workers_peak_mb=_rss_mb(resource.RUSAGE_CHILDREN))))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--dir', required=True,
                      help='Image folder: DIR/train/<class>/*.jpg and '
                      'DIR/val/<class>/... (or test/, validation/).')
  parser.add_argument('--cache_dir', default='',
                      help='Where the temporary cache folder is made '
                      '(default: the system temp folder).')
  parser.add_argument('--batch_size', type=int, default=128,
                      help='Batch of the augment phase.')
  parser.add_argument('--repeats', type=int, default=20,
                      help='Timed batches per augmentation.')
  parser.add_argument('--phase', default='', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.phase == 'augment':
    _augment_phase(args.dir, args.cache_dir, args.batch_size, args.repeats)
    return
  if args.phase:
    _phase(args.phase, args.dir, args.cache_dir)
    return

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  cache_dir = tempfile.mkdtemp(prefix='data_bench_',
                               dir=args.cache_dir or None)
  try:
    print(f'{args.dir}: cache in {cache_dir}, {os.cpu_count()} CPUs')
    for phase in ('cold', 'warm', 'dataset'):
      result = subprocess.run(
          [sys.executable, os.path.abspath(__file__), '--phase', phase,
           '--dir', args.dir, '--cache_dir', cache_dir],
          cwd=root, capture_output=True, text=True, check=False,
          env=dict(os.environ, PYTHONPATH=root))
      if result.returncode != 0:
        sys.exit(f'{phase} failed:\n{result.stderr[-3000:]}')
      r = json.loads(result.stdout.strip().splitlines()[-1])
      print(f'{phase:8s} {r["seconds"]:6.2f} s ({r["cpu_s"]:5.1f} CPU s)  '
            f'{r["images"]} images '
            f'({r["kind"]}), {r["images"] / r["seconds"]:8.0f} images/s, '
            f'peak RSS {r["peak_mb"]:.0f} MB (after imports '
            f'{r["imports_mb"]:.0f} MB), decode workers peak '
            f'{r["workers_peak_mb"]:.0f} MB')
    cache_mb = sum(e.stat().st_size for e in os.scandir(cache_dir)) / 1e6
    print(f'cache files: {cache_mb:.0f} MB')
    result = subprocess.run(
        [sys.executable, os.path.abspath(__file__), '--phase', 'augment',
         '--dir', args.dir, '--cache_dir', cache_dir,
         '--batch_size', str(args.batch_size),
         '--repeats', str(args.repeats)],
        cwd=root, capture_output=True, text=True, check=False,
        env=dict(os.environ, PYTHONPATH=root))
    if result.returncode != 0:
      sys.exit(f'augment failed:\n{result.stderr[-3000:]}')
    for line in result.stdout.strip().splitlines():
      r = json.loads(line)
      name = r['crop'] + (f' + cutout {r["cutout"]}' if r['cutout'] else '')
      print(f'augment  {name:32s} {r["batch_ms"]:7.1f} ms per batch of '
            f'{r["batch_size"]} {"x".join(map(str, r["shape"]))} '
            f'({r["device"]}; compile {r["compile_s"]:.1f} s)')
  finally:
    shutil.rmtree(cache_dir, ignore_errors=True)


if __name__ == '__main__':
  main()
