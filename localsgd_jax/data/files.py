"""Dataset files read without TensorFlow, as numpy arrays.

* digits: scikit-learn's bundled 8x8 digits, upsampled, with a fixed split.
* cifar10 / cifar100: the original python-pickle files
  (`cifar-10-batches-py/`, `cifar-100-python/`) under `config.data.dir`.
"""
import os
import pickle
import re
from typing import Tuple

import numpy as np

from localsgd_jax.errors import UserError

# The digits train/test split is fixed independently of the run seed so that
# test accuracies of different runs are measured on the same 360 images.
DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2

CIFAR_URL = 'https://www.cs.toronto.edu/~kriz/cifar.html'
CIFAR_LAYOUT = {
    # name: (inner folder, train files pattern, test file, label key, classes)
    'cifar10': ('cifar-10-batches-py', r'data_batch_\d+', 'test_batch',
                b'labels', 10),
    'cifar100': ('cifar-100-python', r'train', 'test', b'fine_labels', 100),
}
CIFAR_ARCHIVE = {'cifar10': 'cifar-10-python.tar.gz',
                  'cifar100': 'cifar-100-python.tar.gz'}


def load_digits_arrays(image_size: int = 32
                       ) -> Tuple[np.ndarray, np.ndarray, np.ndarray,
                                  np.ndarray]:
  """scikit-learn's digits as uint8 (N, S, S, 1) images, split 80/20.

  Args:
    image_size: side S of the upsampled square images.

  Returns:
    (train_images, train_labels, test_images, test_labels); labels int32.
    The split is stratified and fixed (`DIGITS_SPLIT_SEED`).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  from sklearn import model_selection  # pylint: disable=g-import-not-at-top

  digits = datasets.load_digits()
  # Values are ink counts 0..16; rescale to the usual 0..255 pixel range so
  # that every source feeds the same uint8 pipeline.
  images = digits.images.astype(np.float32) * (255.0 / 16.0)  # (N, 8, 8)
  images = images[..., None]  # (N, 8, 8, 1)
  if image_size != 8:
    images = np.asarray(jax.image.resize(
        images, (images.shape[0], image_size, image_size, 1), 'bilinear'))
  images = np.clip(np.round(images), 0, 255).astype(np.uint8)
  labels = digits.target.astype(np.int32)
  x_train, x_test, y_train, y_test = model_selection.train_test_split(
      images, labels, test_size=DIGITS_TEST_FRACTION,
      random_state=DIGITS_SPLIT_SEED, stratify=labels)
  return x_train, y_train, x_test, y_test


def _cifar_help(name: str) -> str:
  inner = CIFAR_LAYOUT[name][0]
  return (f'Download {CIFAR_ARCHIVE[name]} (python version) from '
          f'{CIFAR_URL} and extract it so that {inner}/ is inside '
          f'config.data.dir, or leave config.data.dir empty to load {name} '
          f'through tensorflow-datasets.')


def _find_cifar_folder(name: str, data_dir: str) -> str:
  """The folder holding the pickle files: DIR/<inner> or DIR itself."""
  inner, _, test_file, _, _ = CIFAR_LAYOUT[name]
  candidates = [os.path.join(data_dir, inner), data_dir]
  for folder in candidates:
    if os.path.isfile(os.path.join(folder, test_file)):
      return folder
  if not os.path.isdir(data_dir):
    raise UserError(f'config.data.dir {data_dir!r} does not exist. '
                    + _cifar_help(name))
  raise UserError(
      f'No {name} data found: looked for {test_file!r} in '
      f'{" and ".join(repr(c) for c in candidates)}. ' + _cifar_help(name))


def _read_pickle(path: str, label_key: bytes) -> Tuple[np.ndarray,
                                                       np.ndarray]:
  """Reads one CIFAR pickle file into uint8 (N, 32, 32, 3) and int32 (N,)."""
  problem = None
  try:
    with open(path, 'rb') as f:
      # The files were written by Python 2; 'bytes' keeps their str keys as
      # bytes instead of guessing an encoding.
      batch = pickle.load(f, encoding='bytes')
    data = np.asarray(batch[b'data'], dtype=np.uint8)
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072:
      problem = f'its data has shape {data.shape}, expected (N, 3072)'
    elif labels.shape != (data.shape[0],):
      problem = (f'it has {labels.size} labels for {data.shape[0]} '
                 f'images')
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError,
          AttributeError, IndexError, ImportError, MemoryError) as e:
    problem = f'it is not a readable pickle ({type(e).__name__}: {e})'
  except KeyError as e:
    problem = f'it has no {e} entry'
  except OSError as e:
    problem = f'it cannot be opened ({e})'
  if problem is not None:
    raise UserError(f'Corrupt or truncated CIFAR file {path!r}: {problem}. '
                    f'Download and extract the archive again from '
                    f'{CIFAR_URL}.')
  # Rows are stored channel-major (3 x 32 x 32); the pipeline wants HWC.
  images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels.astype(np.int32)


def _batch_number(filename: str) -> int:
  digits = re.findall(r'\d+', filename)
  return int(digits[-1]) if digits else 0


def load_cifar_dir(name: str, data_dir: str
                   ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Reads CIFAR-10/100 from the original python-pickle files.

  CIFAR-10 reads every `data_batch_*` present (a subset of the five is fine)
  plus `test_batch`; CIFAR-100 reads `train` and `test` with fine labels.

  Args:
    name: 'cifar10' or 'cifar100'.
    data_dir: the folder containing `cifar-10-batches-py/` (or
      `cifar-100-python/`), or that folder itself.

  Returns:
    (train_images, train_labels, test_images, test_labels); images uint8
    (N, 32, 32, 3), labels int32.

  Raises:
    UserError: the files are missing or unreadable.
  """
  inner, train_pattern, test_file, label_key, num_classes = CIFAR_LAYOUT[name]
  folder = _find_cifar_folder(name, data_dir)
  train_files = sorted(
      (f for f in os.listdir(folder)
       if re.fullmatch(train_pattern, f)
       and os.path.isfile(os.path.join(folder, f))),
      key=_batch_number)
  if not train_files:
    raise UserError(f'No {name} training files ({train_pattern!r}) in '
                    f'{folder!r}. ' + _cifar_help(name))
  train = [_read_pickle(os.path.join(folder, f), label_key)
           for f in train_files]
  x_test, y_test = _read_pickle(os.path.join(folder, test_file), label_key)
  x_train = np.concatenate([x for x, _ in train])
  y_train = np.concatenate([y for _, y in train])
  for path_hint, labels in ((inner + '/train', y_train),
                            (inner + '/' + test_file, y_test)):
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
      raise UserError(f'{path_hint} in {folder!r} has labels outside '
                      f'0..{num_classes - 1}: is it {name}? '
                      + _cifar_help(name))
  return x_train, y_train, x_test, y_test
