"""The streaming dataset: tf.data decodes and crops on the host.

ImageNet and large image folders, too big for device memory: tf.data hands
uint8 batches to the device (4x fewer bytes than float32), two batches
ahead, and they are normalized on the device (see `dataset.py` for the
interface and the multi-process rules). TensorFlow comes from
`tf_import.py`, the one place that imports it.
"""
import itertools
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from localsgd_jax.data import tf_import
from localsgd_jax.data.augment import cutout as cutout_batch
from localsgd_jax.data.dataset import Dataset, EpochFeed
from localsgd_jax.data.dataset import _place, _prefetch, epoch_key, normalize
from localsgd_jax.data.dataset import process_rows, replicate
from localsgd_jax.errors import UserError

# Per-channel ImageNet statistics in 0..255 pixel units. Streaming datasets are
# too big to scan for their own statistics before training, so they use these
# (the usual choice for natural photographs).
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)

# Eval-time center crop keeps image_size / (image_size + 32) of the shorter
# side before resizing, as in the Flax ImageNet example (224 of 256).
_EVAL_CROP_MARGIN = 32

# A function (split, shuffle_seed or None) -> tf.data.Dataset of
# (encoded image bytes, integer label) pairs. None means the fixed file order.
ReadFn = Callable[[str, Optional[int]], Any]


def _tf_seed(seed: int, epoch: int) -> int:
  """A 31-bit tf.data seed mixing the run seed and the epoch."""
  state = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)
  return int(state[0] >> 1)


def _row_filter(rows: np.ndarray, batch_size: int) -> Callable:
  """A tf.data predicate on (position, example): is it one of `rows`?"""
  tf = tf_import.tensorflow()
  keep = np.zeros((batch_size,), bool)
  keep[rows] = True
  keep = tf.constant(keep)

  def predicate(position, example):
    del example
    return tf.gather(keep, position % batch_size)

  return predicate


class StreamingDataset(Dataset):
  """A dataset read from disk by tf.data every epoch (ImageNet, folders).

  Training: shuffle (seeded by (seed, epoch)), decode, random-resized crop to
  image_size (area in `rrc_scale`, Inception's aspect ratios 3/4..4/3),
  random flip; then on the device normalize and, with `cutout`, cut out a
  square as the in-memory path does (keyed by (seed, epoch, step)). Eval:
  decode, center crop, resize. Crops and flips use stateless TF ops keyed by
  (seed, epoch, example position), so the batches of an epoch do not depend
  on thread timing or on earlier epochs.
  TensorFlow is imported by the sources before one of these is built.
  """

  def __init__(self, *, name: str, read: ReadFn, train_split: str,
               test_split: str, num_train: int, num_test: int,
               num_classes: int, image_size: int, seed: int, augment: bool,
               flip: bool, shuffle_buffer: int,
               rrc_scale: Tuple[float, float] = (0.08, 1.0), cutout: int = 0,
               mean: Tuple[float, ...] = IMAGENET_MEAN,
               std: Tuple[float, ...] = IMAGENET_STD,
               find_unreadable: Optional[
                   Callable[[str], Optional[UserError]]] = None,
               eval_split: str = 'test',
               class_names: Optional[Sequence[str]] = None,
               files_digest: Optional[str] = None):
    """Describes the pipeline; nothing is read until batches are requested.

    Args:
      name: config name of the dataset.
      read: see `ReadFn`.
      train_split: split name passed to `read` for training.
      test_split: split name passed to `read` for evaluation.
      num_train: examples in the training split.
      num_test: examples in the test split.
      num_classes: number of labels.
      image_size: side of the square output images.
      seed: run seed.
      augment: False replaces the random-resized crop by the eval crop and
        turns off the flip.
      flip: whether horizontal flips suit this data.
      shuffle_buffer: tf.data shuffle buffer size, in examples.
      rrc_scale: (min, max) area of the random-resized crop, as fractions of
        the image's area (Inception's and torchvision's 0.08..1 default).
      cutout: side of the square set to 0 (the mean) in each normalized
        training image; 0 = none.
      mean: per-channel mean in pixel units.
      std: per-channel std in pixel units.
      find_unreadable: split -> the error naming its first file that cannot
        be decoded (None if all can); called when tf.data fails to decode,
        since TensorFlow's error does not name the file.
      eval_split: what `test_split` is (`Dataset.eval_split`).
      class_names: the label names, if the data has them.
      files_digest: a hash of the file list, if there is one (folders): the
        data's identity in `fingerprint`.
    """
    self.name = name
    self.eval_split = eval_split
    self.class_names = tuple(class_names) if class_names is not None else None
    self.files_digest = files_digest
    self._read = read
    self._train_split = train_split
    self._test_split = test_split
    self.num_train = int(num_train)
    self.num_test = int(num_test)
    self.num_classes = int(num_classes)
    self.image_size = int(image_size)
    self.image_shape = (self.image_size, self.image_size, 3)
    self.seed = int(seed)
    self.augment = bool(augment)
    self.flip = bool(flip and augment)
    self.shuffle_buffer = int(shuffle_buffer)
    self.rrc_scale = tuple(float(a) for a in rrc_scale)
    self.cutout = int(cutout) if augment else 0
    self.mean = np.asarray(mean, np.float32)
    self.std = np.asarray(std, np.float32)
    self._find_unreadable = find_unreadable

  def _contents(self) -> Dict[str, Any]:
    return {'storage': 'stream',
            **({'files': self.files_digest} if self.files_digest else {})}

  def _decode_crop(self, image_bytes, crop_window):
    """Decodes only the crop of JPEGs; other formats decode then slice.

    `decode_and_crop_jpeg` skips the pixels outside the window, which is most
    of the decode cost of a random-resized crop on ImageNet.

    Args:
      image_bytes: scalar string tensor, an encoded image.
      crop_window: function (shape [h, w, c]) -> (top, left, height, width).

    Returns:
      uint8 (h', w', 3) crop.
    """
    tf = tf_import.tensorflow()

    def jpeg():
      shape = tf.io.extract_jpeg_shape(image_bytes)
      window = tf.stack(crop_window(shape))
      return tf.io.decode_and_crop_jpeg(image_bytes, window, channels=3)

    def other():
      image = tf.io.decode_image(image_bytes, channels=3,
                                 expand_animations=False)
      top, left, height, width = crop_window(tf.shape(image))
      return tf.slice(image, tf.stack([top, left, 0]),
                      tf.stack([height, width, 3]))

    image = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)
    image.set_shape([None, None, 3])
    return image

  def _center_window(self, shape):
    tf = tf_import.tensorflow()
    height, width = shape[0], shape[1]
    side = tf.cast(tf.minimum(height, width), tf.float32)
    crop = tf.cast(side * self.image_size /
                   (self.image_size + _EVAL_CROP_MARGIN), tf.int32)
    crop = tf.maximum(crop, 1)
    return ((height - crop + 1) // 2, (width - crop + 1) // 2, crop, crop)

  def _random_window(self, seed):
    """A random-resized-crop window (Inception style, area in rrc_scale)."""
    tf = tf_import.tensorflow()

    def window(shape):
      begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
          shape, tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
          seed=seed, min_object_covered=0.1,
          aspect_ratio_range=(3 / 4, 4 / 3), area_range=self.rrc_scale,
          max_attempts=10, use_image_if_no_bounding_boxes=True)
      return begin[0], begin[1], size[0], size[1]

    return window

  def _finish(self, image, label, normalized: bool = True):
    """Resizes to the output size, casts the label.

    Training batches stay uint8 (`normalized=False`): the device normalizes
    them (`assemble`), so a quarter of the bytes cross to it.
    """
    tf = tf_import.tensorflow()
    image = tf.image.resize(image, [self.image_size, self.image_size],
                            method='bilinear', antialias=True)
    if normalized:
      image = tf.cast((image - self.mean) / self.std, tf.float32)
    else:
      image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    return image, tf.cast(label, tf.int32)

  def _numpy_batches(self, ds, split: str):
    tf = tf_import.tensorflow()
    ds = ds.prefetch(tf.data.AUTOTUNE)
    # Keep the deterministic default: parallel maps still emit in order.
    try:
      yield from ds.as_numpy_iterator()
    except tf.errors.InvalidArgumentError as e:  # an image failed to decode
      raise self._decode_error(split, e) from None

  def _decode_error(self, split: str, e: Exception) -> UserError:
    """The one-line error for a file of `split` that tf.data could not
    decode, naming it when `find_unreadable` can."""
    message = (str(getattr(e, 'message', e)).strip().splitlines() or [''])[0]
    if self._find_unreadable is not None:
      print(f'An image of the {split} split could not be decoded '
            f'({message}); looking for the file ...', flush=True)
      found = self._find_unreadable(split)
      if found is not None:
        return found
    return UserError(f'An image of the {split} split of {self.name} could '
                     f'not be decoded ({message}); replace or delete it.')

  def _train_feed(self, epoch, batch_size, steps, replicated, batch_sharding):
    fixed = {'mean': self.mean, 'inv_std': np.float32(1.0) / self.std}
    if self.cutout:
      fixed.update(seed=np.uint32(self.seed), epoch=np.uint32(epoch))
    device = replicate(fixed, replicated)
    host = _prefetch(self._host_batches(epoch, batch_size, steps,
                                        batch_sharding), size=2)
    return EpochFeed(device=device, host=host, steps=steps)

  def assemble(self, device, host, i):
    # The host iterator already yields step i's batch; i keys the cutout.
    image = normalize(host['image'], device['mean'], device['inv_std'])
    if self.cutout:
      key = jax.random.fold_in(epoch_key(device['seed'], device['epoch']), i)
      image = cutout_batch(image, key, self.cutout)
    return {'image': image, 'label': host['label'], 'mask': host['mask']}

  def _host_batches(self, epoch, batch_size, steps, sharding):
    """Placed uint8 batches of `epoch`, decoded and cropped by tf.data."""
    tf = tf_import.tensorflow()
    epoch_seed = _tf_seed(self.seed, epoch)
    ds = self._read(self._train_split, epoch_seed)
    ds = ds.shuffle(self.shuffle_buffer, seed=epoch_seed,
                    reshuffle_each_iteration=False)

    def preprocess(position, example):
      image_bytes, label = example
      seeds = tf.random.experimental.stateless_split(
          tf.stack([tf.constant(epoch_seed, tf.int64), position]), 2)
      if self.augment:
        image = self._decode_crop(image_bytes, self._random_window(seeds[0]))
      else:
        image = self._decode_crop(image_bytes, self._center_window)
      if self.flip:
        image = tf.image.stateless_random_flip_left_right(image, seeds[1])
      return self._finish(image, label, normalized=False)

    rows = process_rows(sharding, batch_size)
    ds = ds.enumerate()
    if rows is not None:
      # Each process decodes only its rows of every global batch: the filter
      # runs on positions, before any decoding.
      ds = ds.filter(_row_filter(rows, batch_size))
    local_size = batch_size if rows is None else len(rows)
    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(local_size, drop_remainder=True).take(steps)
    mask = np.ones((local_size,), np.float32)
    for images, labels in self._numpy_batches(ds, self._train_split):
      yield _place({'image': images, 'label': labels, 'mask': mask},
                   sharding, None if rows is None else batch_size)

  def _eval_iter(self, batch_size, sharding):
    tf = tf_import.tensorflow()

    def preprocess(image_bytes, label):
      return self._finish(self._decode_crop(image_bytes, self._center_window),
                          label)

    rows = process_rows(sharding, batch_size)
    ds = self._read(self._test_split, None)
    if rows is not None:
      ds = ds.enumerate().filter(_row_filter(rows, batch_size)).map(
          lambda position, example: example)
    local_size = batch_size if rows is None else len(rows)
    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(local_size)
    batches = self._numpy_batches(ds, self._test_split)
    if rows is not None:
      # Every process must run the same number of eval steps, also one whose
      # rows of the last global batch are all past the end of the test set.
      num_batches = -(-self.num_test // batch_size)
      empty = (np.zeros((0, *self.image_shape), np.float32),
               np.zeros((0,), np.int32))
      batches = itertools.islice(
          itertools.chain(batches, itertools.repeat(empty)), num_batches)
    for images, labels in batches:
      real = images.shape[0]
      pad = local_size - real
      mask = np.concatenate([np.ones(real, np.float32),
                             np.zeros(pad, np.float32)])
      if pad:
        images = np.concatenate(
            [images, np.zeros((pad,) + images.shape[1:], images.dtype)])
        labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
      yield _place({'image': jnp.asarray(images), 'label': jnp.asarray(labels),
                    'mask': jnp.asarray(mask)}, sharding,
                   None if rows is None else batch_size)
