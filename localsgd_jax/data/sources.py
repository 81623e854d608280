"""Dataset loaders: turn `config.data` into a `Dataset`.

Sources and where their bytes come from:

* digits: scikit-learn's bundled 8x8 digits (1,797 images), upsampled; works
  offline, the default.
* cifar10 / cifar100 with `config.data.dir`: the original python-pickle files
  (`cifar-10-batches-py/`, `cifar-100-python/`), read without TensorFlow.
* cifar10 / cifar100 without `dir`: tfds, loaded whole into memory.
* image_folder: decoded once with PIL and cached (see `image_folder`), then
  held in memory when it fits (`config.data.storage`); else streamed.
* imagenet2012: streamed from disk by tf.data.

Every in-memory source can be cut down to a CPU-sized proxy of itself:
`train_per_class` keeps the first N training images of each class, and
`holdout_per_class` evaluates on a seeded per-class hold-out of training
images instead of the test split. Each dataset names what it evaluates on in
`dataset.eval_split` ('test', 'val', 'validation' or 'holdout').

TensorFlow is imported only on the tfds and streaming paths, which need the
`tf` extra (`pip install -e ".[tf]"`: TensorFlow and tensorflow-datasets);
the digits, CIFAR-directory and in-memory image-folder paths start fast,
never initialize TF and run on the default install.
"""

import hashlib
import os
import pickle
import re
from typing import Any, Optional, Sequence, Tuple

import ml_collections
import numpy as np

from localsgd_jax.data import image_folder
from localsgd_jax.data.dataset import Dataset
from localsgd_jax.data.in_memory import InMemoryDataset
from localsgd_jax.data.streaming import ReadFn
from localsgd_jax.data.streaming import StreamingDataset
from localsgd_jax.data.tf_import import TF_EXTRA
from localsgd_jax.data.tf_import import import_tf as _import_tf
from localsgd_jax.errors import UserError

VALID_NAMES = ('cifar10', 'cifar100', 'digits', 'image_folder',
               'imagenet2012')

# The digits train/test split is fixed independently of the run seed so that
# test accuracies of different runs are measured on the same 360 images.
DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2

_CIFAR_URL = 'https://www.cs.toronto.edu/~kriz/cifar.html'
_CIFAR_LAYOUT = {
    # name: (inner folder, train files pattern, test file, label key, classes)
    'cifar10': ('cifar-10-batches-py', r'data_batch_\d+', 'test_batch',
                b'labels', 10),
    'cifar100': ('cifar-100-python', r'train', 'test', b'fine_labels', 100),
}
_CIFAR_ARCHIVE = {'cifar10': 'cifar-10-python.tar.gz',
                  'cifar100': 'cifar-100-python.tar.gz'}

STORAGE_MODES = ('auto', 'memory', 'stream')


def load_dataset(data_cfg: ml_collections.ConfigDict, *,
                 seed: int) -> Dataset:
  """Builds the dataset that `data_cfg` names.

  Args:
    data_cfg: `config.data`, with fields `name`, `dir`, `image_size`,
      `augment`, `crop_padding`, `tfds_data_dir`, `shuffle_buffer`,
      `storage`, `max_memory_gb`, `cache_dir`, `train_per_class`,
      `holdout_per_class`, `holdout_seed` (missing optional fields take
      their defaults).
    seed: run seed; fixes the order and augmentation of every epoch.

  Returns:
    A `Dataset` with `eval_split` set to what its eval batches come from:
    'test', a folder's eval split name ('val', 'test', 'validation'),
    'validation' (imagenet2012) or 'holdout'.

  Raises:
    UserError: unknown name, bad field, or data that cannot be found or read.
  """
  name = str(data_cfg.get('name', ''))
  if name not in VALID_NAMES:
    raise UserError(f'Unknown dataset {name!r} (config.data.name). Valid '
                    f'names: {", ".join(VALID_NAMES)}.')
  opts = _Options.from_config(data_cfg)
  if name == 'digits':
    return _load_digits(opts, seed)
  if name in ('cifar10', 'cifar100'):
    if opts.dir:
      arrays = load_cifar_dir(name, opts.dir)
    else:
      arrays = _load_tfds_in_memory(name, opts.tfds_data_dir)
    return _in_memory(name, arrays, _CIFAR_LAYOUT[name][4], opts, seed,
                      flip=True)
  if name == 'imagenet2012':
    _check_no_subset(opts, 'imagenet2012 streams from disk')
    return _load_imagenet(opts, seed)
  return _load_image_folder(opts, seed)


class _Options:
  """The `config.data` fields, checked once."""

  def __init__(self, **fields):
    self.__dict__.update(fields)

  @classmethod
  def from_config(cls, data_cfg: ml_collections.ConfigDict) -> '_Options':
    opts = cls(
        dir=os.path.expanduser(str(data_cfg.get('dir', '') or '')),
        image_size=data_cfg.get('image_size', 32),
        augment=bool(data_cfg.get('augment', True)),
        crop_padding=data_cfg.get('crop_padding', 4),
        tfds_data_dir=os.path.expanduser(
            str(data_cfg.get('tfds_data_dir', '') or '')),
        shuffle_buffer=data_cfg.get('shuffle_buffer', 10_000),
        storage=data_cfg.get('storage', 'auto'),
        max_memory_gb=data_cfg.get('max_memory_gb', 4.0),
        cache_dir=os.path.expanduser(
            str(data_cfg.get('cache_dir', '') or '')),
        train_per_class=data_cfg.get('train_per_class', 0),
        holdout_per_class=data_cfg.get('holdout_per_class', 0),
        holdout_seed=data_cfg.get('holdout_seed', 0),
    )
    for field, minimum in (('image_size', 1), ('crop_padding', 0),
                           ('shuffle_buffer', 1), ('train_per_class', 0),
                           ('holdout_per_class', 0), ('holdout_seed', 0)):
      value = getattr(opts, field)
      if (not isinstance(value, (int, np.integer)) or isinstance(value, bool)
          or value < minimum):
        raise UserError(f'config.data.{field} must be an integer >= '
                        f'{minimum}, got {value!r}; fix it in the config or '
                        f'with --config.data.{field}=...')
    if opts.storage not in STORAGE_MODES:
      raise UserError(f'config.data.storage must be one of '
                      f'{", ".join(STORAGE_MODES)}, got {opts.storage!r}; '
                      f'fix it in the config or with '
                      f'--config.data.storage=...')
    value = opts.max_memory_gb
    if (not isinstance(value, (int, float, np.integer, np.floating))
        or isinstance(value, bool) or not value > 0):
      raise UserError(f'config.data.max_memory_gb must be a number > 0, got '
                      f'{value!r}; fix it in the config or with '
                      f'--config.data.max_memory_gb=...')
    return opts

  @property
  def subset(self) -> bool:
    """Whether train_per_class or holdout_per_class cuts the data down."""
    return bool(self.train_per_class or self.holdout_per_class)


def _check_no_subset(opts: _Options, why: str, fix: str = '') -> None:
  if opts.subset:
    raise UserError(
        f'config.data.train_per_class and holdout_per_class work on '
        f'in-memory datasets only, but {why}; {fix}set both to 0.')


def _in_memory(name: str, arrays: Tuple[Optional[np.ndarray], ...],
               num_classes: int, opts: _Options, seed: int, flip: bool,
               eval_split: str = 'test',
               class_names: Optional[Sequence[str]] = None
               ) -> InMemoryDataset:
  """An `InMemoryDataset`, cut down by train_per_class / holdout_per_class.

  Args:
    name: config name of the dataset.
    arrays: (train images, train labels, test images, test labels); the
      test arrays may be None when `opts.holdout_per_class` replaces them.
    num_classes: number of labels.
    opts: the data options.
    seed: run seed.
    flip: whether horizontal flips suit this data.
    eval_split: what the test arrays are, for `dataset.eval_split`.
    class_names: label names for error messages (and `class_names`).
  """
  x_train, y_train, x_test, y_test = arrays
  train_idx, holdout_idx = select_per_class(
      y_train, num_classes, train_per_class=opts.train_per_class,
      holdout_per_class=opts.holdout_per_class,
      holdout_seed=opts.holdout_seed, class_names=class_names)
  if holdout_idx is not None:
    x_test, y_test = x_train[holdout_idx], y_train[holdout_idx]
    eval_split = 'holdout'
  if train_idx is not None:
    x_train, y_train = x_train[train_idx], y_train[train_idx]
  dataset = InMemoryDataset(
      name=name, train_images=x_train, train_labels=y_train,
      test_images=x_test, test_labels=y_test, num_classes=num_classes,
      seed=seed, augment=opts.augment, crop_padding=opts.crop_padding,
      flip=flip)
  dataset.eval_split = eval_split
  if class_names is not None:
    dataset.class_names = tuple(class_names)
  return dataset


def select_per_class(labels: np.ndarray, num_classes: int, *,
                     train_per_class: int = 0, holdout_per_class: int = 0,
                     holdout_seed: int = 0,
                     class_names: Optional[Sequence[str]] = None
                     ) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
  """Training and hold-out indices for `train_per_class` / `holdout_per_class`.

  Training keeps the first `train_per_class` images of each class in data
  order (all when 0). The hold-out draws `holdout_per_class` images of each
  class, seeded by (holdout_seed, class), from the images training does not
  keep: with `train_per_class` the ones past the first N, else all of them
  (and training then loses the drawn ones). It is a pure function of the
  seed and the labels, so every run and every process holds out the same
  images, and never overlaps training.

  Args:
    labels: integer (N,) training labels, in data order.
    num_classes: number of labels; every class must have enough images.
    train_per_class: images kept per class (0 = all).
    holdout_per_class: images held out per class (0 = no hold-out).
    holdout_seed: seed of the hold-out draw, independent of the run seed.
    class_names: names used in errors (default 'class <i>').

  Returns:
    (train indices, hold-out indices), each sorted int64 into `labels`, or
    None for "all training images" / "no hold-out".

  Raises:
    UserError: a class has fewer than train_per_class + holdout_per_class
      images.
  """
  if not train_per_class and not holdout_per_class:
    return None, None
  labels = np.asarray(labels)
  members = [np.flatnonzero(labels == c) for c in range(num_classes)]
  need = train_per_class + holdout_per_class
  counts = [len(m) for m in members]
  if min(counts) < need:
    c = int(np.argmin(counts))
    name = (repr(class_names[c]) if class_names is not None
            else f'class {c}')
    asked = ' + '.join(
        f'config.data.{field} ({value})' for field, value in
        (('train_per_class', train_per_class),
         ('holdout_per_class', holdout_per_class)) if value)
    raise UserError(
        f'The training set has {counts[c]} images of {name}, fewer than '
        f'{asked} = {need}; lower them to at most {counts[c]} images per '
        f'class in all.')
  keep = np.zeros(labels.shape, bool)
  hold = np.zeros(labels.shape, bool)
  for c, idx in enumerate(members):
    if train_per_class:
      keep[idx[:train_per_class]] = True
      pool = idx[train_per_class:]
    else:
      keep[idx] = True
      pool = idx
    if holdout_per_class:
      # Seeded per class: a class's draw does not depend on the others.
      rng = np.random.default_rng([holdout_seed, c])
      drawn = rng.choice(pool, holdout_per_class, replace=False)
      hold[drawn] = True
      keep[drawn] = False
  return (np.flatnonzero(keep),
          np.flatnonzero(hold) if holdout_per_class else None)


# ----------------------------------------------------------------- digits


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


def _load_digits(opts: _Options, seed: int) -> InMemoryDataset:
  # Digits are not flip-invariant (a mirrored 2 or 7 is not a digit).
  return _in_memory('digits', load_digits_arrays(opts.image_size), 10, opts,
                    seed, flip=False)


# ------------------------------------------------------- CIFAR directories


def _cifar_help(name: str) -> str:
  inner = _CIFAR_LAYOUT[name][0]
  return (f'Download {_CIFAR_ARCHIVE[name]} (python version) from '
          f'{_CIFAR_URL} and extract it so that {inner}/ is inside '
          f'config.data.dir, or leave config.data.dir empty to load {name} '
          f'through tensorflow-datasets.')


def _find_cifar_folder(name: str, data_dir: str) -> str:
  """The folder holding the pickle files: DIR/<inner> or DIR itself."""
  inner, _, test_file, _, _ = _CIFAR_LAYOUT[name]
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
                    f'{_CIFAR_URL}.')
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
  inner, train_pattern, test_file, label_key, num_classes = _CIFAR_LAYOUT[name]
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


# --------------------------------------------------------------- tfds paths


def _prepared_builder(name: str, tfds_data_dir: str, help_text: str,
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


def _load_tfds_in_memory(name: str, tfds_data_dir: str
                         ) -> Tuple[np.ndarray, np.ndarray, np.ndarray,
                                    np.ndarray]:
  """Loads a small tfds image dataset whole, as numpy arrays."""
  _, tfds = _import_tf()
  help_text = (f'If the download failed (offline?), run once with internet '
               f'access to prepare it, or set config.data.dir to a local '
               f'folder holding the extracted CIFAR python files '
               f'({_CIFAR_LAYOUT[name][0]}/, from {_CIFAR_URL}), which needs '
               f'no TensorFlow.')
  builder = _prepared_builder(name, tfds_data_dir, help_text)
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


def _tfds_reader(builder: Any, shuffle_files: bool) -> ReadFn:
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


def _load_imagenet(opts: _Options, seed: int) -> StreamingDataset:
  help_text = (
      'ImageNet cannot be downloaded automatically: place '
      'ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in the tfds '
      'manual_dir (config.data.dir, or <tfds data dir>/downloads/manual/ '
      'when config.data.dir is empty), then run again (or `tfds build '
      'imagenet2012 --manual_dir=...`).')
  builder = _prepared_builder('imagenet2012', opts.tfds_data_dir, help_text,
                              manual_dir=opts.dir)
  splits = builder.info.splits
  if 'train' not in splits or 'validation' not in splits:
    raise UserError('tensorflow-datasets reports no train/validation splits '
                    'for imagenet2012: it is not fully prepared. ' + help_text)
  dataset = StreamingDataset(
      name='imagenet2012', read=_tfds_reader(builder, shuffle_files=True),
      train_split='train', test_split='validation',
      num_train=splits['train'].num_examples,
      num_test=splits['validation'].num_examples,
      num_classes=builder.info.features['label'].num_classes,
      image_size=opts.image_size, seed=seed, augment=opts.augment, flip=True,
      shuffle_buffer=opts.shuffle_buffer)
  dataset.eval_split = 'validation'
  return dataset


_FOLDER_TEST_SPLITS = ('test', 'val', 'validation')
_FOLDER_LAYOUT = (
    'config.data.dir must contain train/<class>/*.jpg|png and '
    'test/<class>/... (or val/<class>/...), one subfolder per class.')


def _load_image_folder(opts: _Options, seed: int) -> Dataset:
  """Images under DIR/train/<class>/ and DIR/test/<class>/ (or val/).

  storage 'memory' decodes the folder once (cached) and holds it in memory,
  at its own image size; 'stream' reads it with tf.data every epoch,
  random-resized-cropped to image_size; 'auto' holds it in memory when its
  uint8 pixels (file count x the first image's H*W*3) fit max_memory_gb.
  """
  if not opts.dir:
    raise UserError('config.data.dir is empty but image_folder needs a '
                    'folder. ' + _FOLDER_LAYOUT)
  if not os.path.isdir(os.path.join(opts.dir, 'train')):
    raise UserError(f'No train/ folder in {opts.dir!r}. ' + _FOLDER_LAYOUT)
  test_split = next((s for s in _FOLDER_TEST_SPLITS
                     if os.path.isdir(os.path.join(opts.dir, s))), None)
  if opts.storage == 'stream':
    _check_no_subset(opts, 'config.data.storage is stream',
                     'use --config.data.storage=memory or ')
  # The hold-out replaces the eval folder, which then is never read.
  use_eval = not opts.holdout_per_class
  if test_split is None and use_eval:
    raise UserError(f'No test/, val/ or validation/ folder in {opts.dir!r}. '
                    + _FOLDER_LAYOUT + ' Or evaluate on held-out training '
                    'images: set config.data.holdout_per_class.')
  # Both storages: empty class folders and class sets that differ between
  # the splits are errors (tf.data's ImageFolder would take the union).
  splits = [image_folder.scan_split(opts.dir, 'train')]
  if use_eval:
    splits.append(image_folder.scan_split(opts.dir, test_split))
    image_folder.check_same_classes(splits[0], splits[1])
  if opts.storage == 'stream':
    return _stream_image_folder(opts, seed, test_split, splits)
  if opts.storage == 'auto':
    shape = image_folder.read_image_shape(splits[0].path(0))
    count = sum(len(split.files) for split in splits)
    size_gb = count * int(np.prod(shape)) / 1e9
    if size_gb > opts.max_memory_gb:
      _check_no_subset(
          opts, f'{opts.dir!r} would take {size_gb:.1f} GB, over '
          f'config.data.max_memory_gb={opts.max_memory_gb}, so it streams',
          'raise max_memory_gb, use --config.data.storage=memory, or ')
      return _stream_image_folder(opts, seed, test_split, splits)
  images = image_folder.load_splits(splits, opts.cache_dir or '')
  arrays = (images[0], splits[0].labels) + (
      (images[1], splits[1].labels) if use_eval else (None, None))
  names = splits[0].class_names
  return _in_memory('image_folder', arrays, len(names), opts, seed,
                    flip=True, eval_split=test_split, class_names=names)


def _stream_image_folder(opts: _Options, seed: int, test_split: str,
                         folders: Sequence[image_folder.FolderSplit]
                         ) -> StreamingDataset:
  """An image folder read by tf.data every epoch (ImageNet-sized folders).

  `folders` (train, eval) were scanned and checked by the caller; their
  file lists name the data in `dataset.files_digest`.
  """
  _, tfds = _import_tf()
  builder = tfds.ImageFolder(opts.dir)
  splits = builder.info.splits
  counts = {s: (splits[s].num_examples if s in splits else 0)
            for s in ('train', test_split)}
  for split, count in counts.items():
    if count == 0:
      raise UserError(f'{os.path.join(opts.dir, split)!r} holds no .jpg, '
                      f'.jpeg or .png images in class subfolders. '
                      + _FOLDER_LAYOUT)
  names = builder.info.features['label'].names
  # ImageFolder's own file shuffle is unseeded; the seeded tf.data shuffle
  # in streaming.py is the only one, so that epochs are reproducible.
  dataset = StreamingDataset(
      name='image_folder', read=_tfds_reader(builder, shuffle_files=False),
      train_split='train', test_split=test_split,
      num_train=counts['train'], num_test=counts[test_split],
      num_classes=len(names), image_size=opts.image_size, seed=seed,
      augment=opts.augment, flip=True, shuffle_buffer=opts.shuffle_buffer)
  dataset.class_names = tuple(names)
  dataset.eval_split = test_split
  digest = hashlib.blake2b(digest_size=16)
  for folder in folders:
    digest.update('\n'.join(folder.files).encode('utf-8', 'surrogateescape'))
  dataset.files_digest = digest.hexdigest()
  return dataset
