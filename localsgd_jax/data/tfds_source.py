"""tensorflow-datasets sources: builders prepared on disk, small sets
loaded whole, and readers of undecoded image bytes for streaming.

TensorFlow and tfds come from `tf_import` (the `tf` extra).
"""
from typing import Any, Optional, Tuple

import numpy as np

from localsgd_jax.data.files import CIFAR_LAYOUT
from localsgd_jax.data.files import CIFAR_URL
from localsgd_jax.data.streaming import ReadFn
from localsgd_jax.data.tf_import import TF_EXTRA
from localsgd_jax.data.tf_import import import_tf as _import_tf
from localsgd_jax.errors import UserError


def prepared_builder(name: str, tfds_data_dir: str, help_text: str,
                      manual_dir: str = '') -> Any:
  """A tfds builder whose data is on disk, preparing it if needed."""
  _, tfds = _import_tf()
  data_dir = tfds_data_dir or None
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
      download_config = tfds.download.DownloadConfig(
          manual_dir=manual_dir or None)
      builder.download_and_prepare(download_config=download_config)
  except ImportError as e:
    # A module tfds imports lazily (e.g. importlib_resources) is missing:
    # an install problem, not a network one.
    raise UserError(
        f'tensorflow-datasets could not prepare {name!r}: it needs a module '
        f'that is not installed ({type(e).__name__}: {e}). Install it '
        f'(pip install {getattr(e, "name", None) or "<module>"}) or '
        f'reinstall with {TF_EXTRA}.') from e
  except Exception as e:  # pylint: disable=broad-except
    # tfds fails in many ways (no network, missing manual files, a corrupt
    # download): show what it said, then the ways around it.
    where = data_dir or '~/tensorflow_datasets (the tfds default)'
    message = ' '.join(str(e).split())
    if len(message) > 500:
      message = message[:500] + '...'
    raise UserError(
        f'tensorflow-datasets could not load or prepare {name!r} in {where}: '
        f'{type(e).__name__}: {message}. {help_text}') from e
  return builder


def load_tfds_in_memory(name: str, tfds_data_dir: str
                         ) -> Tuple[np.ndarray, np.ndarray, np.ndarray,
                                    np.ndarray]:
  """Loads a small tfds image dataset whole, as numpy arrays."""
  _, tfds = _import_tf()
  help_text = (f'If the download failed (offline?), run once with internet '
               f'access to prepare it, or set config.data.dir to a local '
               f'folder holding the extracted CIFAR python files '
               f'({CIFAR_LAYOUT[name][0]}/, from {CIFAR_URL}), which needs '
               f'no TensorFlow.')
  builder = prepared_builder(name, tfds_data_dir, help_text)
  arrays = []
  for split in ('train', 'test'):
    # Chunks rather than `batch_size=-1`: the latter sizes its one batch from
    # the split metadata, which tfds' mock data lacks (TF then aborts), and
    # numpy concatenation costs the same.
    ds = builder.as_dataset(split=split, as_supervised=True).batch(8192)
    chunks = list(tfds.as_numpy(ds))
    if not chunks:
      raise UserError(f'The {name} {split} split from tensorflow-datasets is '
                      f'empty. {help_text}')
    arrays.append(np.concatenate([x for x, _ in chunks]).astype(np.uint8))
    arrays.append(np.concatenate([y for _, y in chunks]).astype(np.int32))
  return tuple(arrays)


def tfds_reader(builder: Any, shuffle_files: bool) -> ReadFn:
  """A `ReadFn` over a tfds builder that yields undecoded image bytes."""
  _, tfds = _import_tf()

  def read(split: str, shuffle_seed: Optional[int]):
    shuffle = shuffle_files and shuffle_seed is not None
    ds = builder.as_dataset(
        split=split, shuffle_files=shuffle,
        # Decoding happens after the crop window is known (see streaming.py).
        decoders={'image': tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(
            shuffle_seed=shuffle_seed if shuffle else None))
    return ds.map(lambda ex: (ex['image'], ex['label']))

  return read
