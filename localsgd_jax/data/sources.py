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
from typing import Optional, Sequence, Tuple

import ml_collections
import numpy as np

from localsgd_jax.data import image_decode
from localsgd_jax.data import image_folder
from localsgd_jax.data import image_scan
from localsgd_jax.data.dataset import Dataset
from localsgd_jax.data.files import CIFAR_LAYOUT
from localsgd_jax.data.files import load_cifar_dir
from localsgd_jax.data.files import load_digits_arrays
from localsgd_jax.data.in_memory import InMemoryDataset
from localsgd_jax.data.per_class import select_per_class
from localsgd_jax.data.streaming import StreamingDataset
from localsgd_jax.data.tfds_source import load_tfds_in_memory
from localsgd_jax.data.tfds_source import prepared_builder
from localsgd_jax.data.tfds_source import tfds_reader
from localsgd_jax.data.tf_import import import_tf as _import_tf
from localsgd_jax.errors import UserError

VALID_NAMES = ('cifar10', 'cifar100', 'digits', 'image_folder',
               'imagenet2012')

STORAGE_MODES = ('auto', 'memory', 'stream')


def load_dataset(data_cfg: ml_collections.ConfigDict, *,
                 seed: int) -> Dataset:
  """Builds the dataset that `data_cfg` names.

  Args:
    data_cfg: `config.data`, with fields `name`, `dir`, `image_size`,
      `augment`, `augmentation`, `crop_padding`, `rrc_scale`, `train_size`,
      `cutout`, `tfds_data_dir`, `shuffle_buffer`,
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
  name = str(data_cfg.name)
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
      arrays = load_tfds_in_memory(name, opts.tfds_data_dir)
    return _in_memory(name, arrays, CIFAR_LAYOUT[name][4], opts, seed,
                      flip=True)
  if name == 'imagenet2012':
    _check_no_subset(opts, 'imagenet2012 streams from disk')
    return _load_imagenet(opts, seed)
  return _load_image_folder(opts, seed)


class _Options:
  """The `config.data` fields, paths expanded (their values were checked by
  `config_validation.validate_data`)."""

  def __init__(self, **fields):
    self.__dict__.update(fields)

  @classmethod
  def from_config(cls, d: ml_collections.ConfigDict) -> '_Options':
    return cls(
        dir=os.path.expanduser(d.dir or ''), image_size=d.image_size,
        augment=bool(d.augment), augmentation=d.augmentation,
        crop_padding=d.crop_padding, rrc_scale=tuple(d.rrc_scale),
        train_size=d.train_size, cutout=d.cutout,
        tfds_data_dir=os.path.expanduser(d.tfds_data_dir or ''),
        shuffle_buffer=d.shuffle_buffer, storage=d.storage,
        max_memory_gb=d.max_memory_gb,
        cache_dir=os.path.expanduser(d.cache_dir or ''),
        train_per_class=d.train_per_class,
        holdout_per_class=d.holdout_per_class, holdout_seed=d.holdout_seed)

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
  return InMemoryDataset(
      name=name, train_images=x_train, train_labels=y_train,
      test_images=x_test, test_labels=y_test, num_classes=num_classes,
      seed=seed, augment=opts.augment, crop_padding=opts.crop_padding,
      flip=flip, augmentation=opts.augmentation, rrc_scale=opts.rrc_scale,
      train_size=opts.train_size, cutout=opts.cutout, eval_split=eval_split,
      class_names=class_names)


def _load_digits(opts: _Options, seed: int) -> InMemoryDataset:
  # Digits are not flip-invariant (a mirrored 2 or 7 is not a digit).
  return _in_memory('digits', load_digits_arrays(opts.image_size), 10, opts,
                    seed, flip=False)


def _load_imagenet(opts: _Options, seed: int) -> StreamingDataset:
  help_text = (
      'ImageNet cannot be downloaded automatically: place '
      'ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in the tfds '
      'manual_dir (config.data.dir, or <tfds data dir>/downloads/manual/ '
      'when config.data.dir is empty), then run again (or `tfds build '
      'imagenet2012 --manual_dir=...`).')
  builder = prepared_builder('imagenet2012', opts.tfds_data_dir, help_text,
                              manual_dir=opts.dir)
  splits = builder.info.splits
  if 'train' not in splits or 'validation' not in splits:
    raise UserError('tensorflow-datasets reports no train/validation splits '
                    'for imagenet2012: it is not fully prepared. ' + help_text)
  return StreamingDataset(
      name='imagenet2012', read=tfds_reader(builder, shuffle_files=True),
      train_split='train', test_split='validation',
      num_train=splits['train'].num_examples,
      num_test=splits['validation'].num_examples,
      num_classes=builder.info.features['label'].num_classes,
      seed=seed, flip=True, shuffle_buffer=opts.shuffle_buffer,
      **_streaming_augmentation(opts, 'imagenet2012'),
      eval_split='validation')


def _streaming_augmentation(opts: _Options, what: str) -> dict:
  """The StreamingDataset arguments of the augmentation fields.

  The fields mean what they mean in memory: train_size (when set) is the
  output size, else image_size; 'auto' and random_resized_crop are the
  random-resized crop (area in rrc_scale), 'none' the eval crop; pad_crop
  needs images of one size and is refused.
  """
  if opts.augmentation not in ('auto', 'random_resized_crop', 'none'):
    raise UserError(
        f'config.data.augmentation={opts.augmentation!r} works on in-memory '
        f'datasets only, but {what} from disk: use random_resized_crop (or '
        f'auto) or none with --config.data.augmentation=...')
  image_size = opts.train_size or opts.image_size
  if opts.cutout > image_size:
    raise UserError(
        f'config.data.cutout={opts.cutout} is larger than the training images '
        f'({image_size}x{image_size} pixels); set it to at most {image_size}, '
        f'or 0 for no cutout, with --config.data.cutout=...')
  return dict(image_size=image_size,
              augment=opts.augment and opts.augmentation != 'none',
              rrc_scale=opts.rrc_scale, cutout=opts.cutout)


_FOLDER_TEST_SPLITS = ('test', 'val', 'validation')
_FOLDER_LAYOUT = (
    'config.data.dir must contain train/<class>/*.jpg|png and '
    'test/<class>/... (or val/<class>/...), one subfolder per class.')


def _load_image_folder(opts: _Options, seed: int) -> Dataset:
  """Images under DIR/train/<class>/ and DIR/test/<class>/ (or val/).

  storage 'memory' decodes the folder once (cached) and holds it in memory,
  at its own image size (train_size resizes the batches); 'stream' reads it
  with tf.data every epoch, random-resized-cropped to train_size or
  image_size; 'auto' holds it in memory when its
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
  splits = [image_scan.scan_split(opts.dir, 'train')]
  if use_eval:
    splits.append(image_scan.scan_split(opts.dir, test_split))
    image_scan.check_same_classes(splits[0], splits[1])
  if opts.storage == 'stream':
    return _stream_image_folder(opts, seed, test_split, splits)
  if opts.storage == 'auto':
    shape = image_decode.read_image_shape(splits[0].path(0))
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
                         folders: Sequence[image_scan.FolderSplit]
                         ) -> StreamingDataset:
  """An image folder read by tf.data every epoch (ImageNet-sized folders).

  `folders` (train, eval) were scanned and checked by the caller; their
  file lists name the data (`files_digest`).
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
  by_name = {folder.name: folder for folder in folders}
  digest = hashlib.blake2b(digest_size=16)
  for folder in folders:
    digest.update('\n'.join(folder.files).encode('utf-8', 'surrogateescape'))
  # ImageFolder's own file shuffle is unseeded; the seeded tf.data shuffle
  # in streaming.py is the only one, so that epochs are reproducible.
  return StreamingDataset(
      name='image_folder', read=tfds_reader(builder, shuffle_files=False),
      train_split='train', test_split=test_split,
      num_train=counts['train'], num_test=counts[test_split],
      num_classes=len(names), seed=seed, flip=True,
      shuffle_buffer=opts.shuffle_buffer,
      **_streaming_augmentation(opts, f'{opts.dir!r} streams'),
      find_unreadable=lambda split: image_decode.find_unreadable(
          by_name[split].paths()) if split in by_name else None,
      eval_split=test_split, class_names=names,
      files_digest=digest.hexdigest())
