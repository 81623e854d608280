"""Cold decode and warm cache load of an image folder, with peak memory.

  python benchmarks/data_bench.py --dir=/path/to/cifar10-jpg

Each phase runs in a fresh process (so that its peak RSS is its own) on an
empty cache folder created under --cache_dir (default: the system temp
folder) and removed at the end:

* cold: scan, decode every train and eval image with PIL, write the cache;
* warm: scan and load both splits from that cache;
* dataset: `load_dataset` from the warm cache, as a training run sees it
  (adds the channel statistics and the copy to the default JAX device).

Peak RSS is the process's maximum resident set (it includes the Python,
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


def _phase(phase: str, root: str, cache_dir: str) -> None:
  """Runs one phase in this process and prints its figures as JSON."""
  # pylint: disable-next=g-import-not-at-top
  from localsgd_jax.data import image_folder
  eval_split = next((s for s in _EVAL_SPLITS
                     if os.path.isdir(os.path.join(root, s))), None)
  imports_mb = _rss_mb(resource.RUSAGE_SELF)
  start = time.perf_counter()
  if phase == 'dataset':
    import ml_collections  # pylint: disable=g-import-not-at-top
    from localsgd_jax import data  # pylint: disable=g-import-not-at-top
    dataset = data.load_dataset(ml_collections.ConfigDict(dict(
        name='image_folder', dir=root, cache_dir=cache_dir)), seed=0)
    images = dataset.num_train + dataset.num_test
    kind = type(dataset).__name__
  else:
    arrays = image_folder.load_image_folder(root, eval_split, cache_dir)
    images = len(arrays.train_images) + (
        0 if arrays.eval_images is None else len(arrays.eval_images))
    kind = f'uint8 {arrays.train_images.shape[1:]}'
  seconds = time.perf_counter() - start
  print(json.dumps(dict(
      phase=phase, seconds=seconds, images=images, kind=kind,
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
  parser.add_argument('--phase', default='', help=argparse.SUPPRESS)
  args = parser.parse_args()
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
      print(f'{phase:8s} {r["seconds"]:6.2f} s  {r["images"]} images '
            f'({r["kind"]}), {r["images"] / r["seconds"]:8.0f} images/s, '
            f'peak RSS {r["peak_mb"]:.0f} MB (after imports '
            f'{r["imports_mb"]:.0f} MB), decode workers peak '
            f'{r["workers_peak_mb"]:.0f} MB')
    cache_mb = sum(e.stat().st_size for e in os.scandir(cache_dir)) / 1e6
    print(f'cache files: {cache_mb:.0f} MB')
  finally:
    shutil.rmtree(cache_dir, ignore_errors=True)


if __name__ == '__main__':
  main()
