"""Batching and augmentation behind one `Dataset` interface.

Two kinds of dataset share the interface that the train loop sees:

* `InMemoryDataset` (digits, CIFAR, small image folders): the whole uint8
  dataset lives on the device. A training batch is gathered, pad-cropped,
  flipped and normalized by batched array ops inside the jitted train step
  (airbench keeps CIFAR-10 on the GPU the same way), so the host never
  touches pixels and sends nothing per step.
* `StreamingDataset` (ImageNet, large image folders): too big for device
  memory, so tf.data decodes and crops on the host and hands uint8 batches to
  the device (4x fewer bytes than float32), two batches ahead; they are
  normalized on the device.

The train loop asks for an epoch's `EpochFeed` (`Dataset.train_feed`): the
device-side inputs that stay fixed for the epoch, plus, for streaming data,
an iterator of placed host batches. Inside its jitted step it calls
`Dataset.assemble(device, host, i)` to build step i's batch.

Both are deterministic functions of (seed, epoch): a run resumed at epoch `e`
sees exactly the batches an uninterrupted run would have seen.

Every batch is `{'image': float32 (B, H, W, C), 'label': int32 (B,),
'mask': float32 (B,)}`. Training batches carry a mask of ones so that the train
and eval steps take one batch signature; the last eval batch is padded to full
size (fixed shapes mean one compiled eval step) and its mask marks the real
examples.

With several processes (`jax.distributed`), in-memory data is replicated on
every device and each training batch is built inside the step from global
arrays (XLA partitions the gather; the random draws do not depend on the
sharding, `jax_threefry_partitionable`). Host-built batches (evaluation,
streaming) are cut by process: each process builds only the rows of the
global batch that its own devices hold (`process_rows`) and the global array
is assembled with `jax.make_array_from_process_local_data`. Either way the
batch equals the one a single process would build.
"""

import abc
import collections
import functools
import hashlib
import itertools
from typing import Any, Callable, Iterator, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from localsgd_jax.errors import UserError

Batch = dict[str, jax.Array]

# Per-channel ImageNet statistics in 0..255 pixel units. Streaming datasets are
# too big to scan for their own statistics before training, so they use these
# (the usual choice for natural photographs).
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)

# Eval-time center crop keeps image_size / (image_size + 32) of the shorter
# side before resizing, as in the Flax ImageNet example (224 of 256).
_EVAL_CROP_MARGIN = 32


def epoch_key(seed: int, epoch: int) -> jax.Array:
  """The key every random choice of `epoch` derives from."""
  return jax.random.fold_in(jax.random.key(seed), epoch)


def channel_stats(images: np.ndarray,
                  chunk: int = 4096) -> Tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and std of uint8 images (N, H, W, C), float32 (C,).

  Sums run over chunks in float64 so that a 50k-image dataset never
  materializes a float64 copy of itself (1.2 GB for CIFAR).
  """
  total = np.zeros(images.shape[-1], np.float64)
  total_sq = np.zeros(images.shape[-1], np.float64)
  for start in range(0, len(images), chunk):
    part = images[start:start + chunk].astype(np.float64)
    total += part.sum(axis=(0, 1, 2))
    total_sq += np.square(part).sum(axis=(0, 1, 2))
  count = images.shape[0] * images.shape[1] * images.shape[2]
  mean = total / count
  # A constant channel (possible in tiny test sets) would divide by zero.
  std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
  std = np.maximum(std, 1.0)
  return mean.astype(np.float32), std.astype(np.float32)


def process_rows(sharding: Optional[jax.sharding.Sharding],
                 batch_size: int) -> Optional[np.ndarray]:
  """The rows of a global batch that this process feeds, in order.

  Args:
    sharding: the batch sharding (batch on the leading axis), or None.
    batch_size: global batch size.

  Returns:
    None when this process addresses every device of `sharding` (one process:
    it builds and places the whole batch), else the sorted int32 indices of
    the global batch rows that live on this process's devices.
  """
  if sharding is None or sharding.is_fully_addressable:
    return None
  index_map = sharding.addressable_devices_indices_map((batch_size,))
  rows = [np.arange(*index[0].indices(batch_size))
          for index in index_map.values()]
  return np.unique(np.concatenate(rows)).astype(np.int32)


def _place(batch: Batch, sharding: Optional[jax.sharding.Sharding],
           global_size: Optional[int] = None) -> Batch:
  """Puts a batch where the step expects it, explicitly.

  Args:
    batch: the whole batch, or with `global_size` this process's rows of it
      (`process_rows`).
    sharding: target sharding, or None (the default device).
    global_size: the global batch size when `batch` holds process rows only.

  Returns:
    The placed batch: global arrays of `global_size` rows in the second case.
  """
  if sharding is None:
    return jax.device_put(batch)
  if global_size is None:
    return jax.device_put(batch, sharding)
  return {name: jax.make_array_from_process_local_data(
      sharding, x, (global_size,) + tuple(x.shape[1:]))
          for name, x in batch.items()}


def replicate(x: Any, sharding: Optional[jax.sharding.Sharding]) -> Any:
  """Places host arrays whole on every device of `sharding` (explicitly).

  Every process passes the same values; with several processes this avoids
  `device_put`'s cross-process equality check.
  """
  if sharding is None:
    return jax.device_put(x)
  return jax.tree.map(lambda a: jax.make_array_from_process_local_data(
      sharding, np.asarray(a), np.shape(a)), x)


class EpochFeed(NamedTuple):
  """What the train loop feeds its jitted step during one epoch.

  Attributes:
    device: a pytree of device arrays that stays fixed for the epoch (for
      in-memory data the whole split, the epoch's order and its key).
    host: None for device-resident data; else an iterator of the epoch's
      placed host batches, one per step, already prefetched.
    steps: steps in the epoch.
  """
  device: Any
  host: Optional[Iterator[Any]]
  steps: int


def _prefetch(batches: Iterator[Any], size: int) -> Iterator[Any]:
  """Keeps `size` placed batches in flight ahead of the consumer.

  Placing is asynchronous, so the copies of the next batches overlap the
  steps that run meanwhile (the flax examples' `prefetch_to_device`).
  """
  queue = collections.deque()
  for batch in batches:
    queue.append(batch)
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def _check_batch_size(batch_size: int) -> None:
  if not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
    raise UserError(f'batch_size must be a positive integer, got '
                    f'{batch_size!r}; fix the batch size in the config.')


class Dataset(abc.ABC):
  """What the train loop needs from a dataset, whatever its storage.

  Attributes:
    name: the config name of the dataset (e.g. 'cifar10').
    num_classes: number of labels; labels are 0..num_classes-1.
    image_shape: (H, W, C) of the batches' images.
    num_train: training examples.
    num_test: test (evaluation) examples.
    flip: whether training batches are randomly flipped horizontally.
    mean: float32 (C,) per-channel mean used to normalize, in 0..255 units.
    std: float32 (C,) per-channel std used to normalize, in 0..255 units.
  """

  name: str
  num_classes: int
  image_shape: Tuple[int, int, int]
  num_train: int
  num_test: int
  flip: bool
  mean: np.ndarray
  std: np.ndarray

  def steps_per_epoch(self, batch_size: int) -> int:
    """Training steps per epoch; the last partial batch is dropped.

    Dropping it keeps every step the same shape (one compiled step) and every
    example equally likely to be seen, since the order changes each epoch.

    Args:
      batch_size: global batch size.

    Returns:
      num_train // batch_size.

    Raises:
      UserError: the batch is larger than the training set.
    """
    _check_batch_size(batch_size)
    steps = self.num_train // batch_size
    if steps == 0:
      raise UserError(
          f'batch_size {batch_size} is larger than the {self.name} training '
          f'set ({self.num_train} examples), so an epoch has no full batch; '
          f'use a batch size of at most {self.num_train}.')
    return steps

  def train_feed(self, epoch: int, batch_size: int,
                 replicated: Optional[jax.sharding.Sharding] = None,
                 batch_sharding: Optional[jax.sharding.Sharding] = None
                 ) -> EpochFeed:
    """The inputs of `epoch`'s `steps_per_epoch(batch_size)` steps.

    Args:
      epoch: 0-based epoch; with the dataset's seed it fixes order and
        augmentation.
      batch_size: global batch size.
      replicated: where fixed inputs go (replicated over the mesh), or None
        for the default device.
      batch_sharding: where host batches go (split over the mesh's data
        axis), or None.
    """
    steps = self.steps_per_epoch(batch_size)
    return self._train_feed(epoch, batch_size, steps, replicated,
                            batch_sharding)

  @abc.abstractmethod
  def _train_feed(self, epoch: int, batch_size: int, steps: int,
                  replicated: Optional[jax.sharding.Sharding],
                  batch_sharding: Optional[jax.sharding.Sharding]
                  ) -> EpochFeed:
    """The work behind `train_feed`, after the batch size is checked."""

  @abc.abstractmethod
  def assemble(self, device: Any, host: Any, i: jax.Array) -> Batch:
    """Step `i`'s training batch; traceable, called inside the jitted step.

    Args:
      device: `EpochFeed.device`.
      host: this step's item of `EpochFeed.host` (None for in-memory data).
      i: int32 scalar, the step within the epoch.
    """

  def train_batches(self, epoch: int, batch_size: int,
                    sharding: Optional[jax.sharding.Sharding] = None
                    ) -> Iterator[Batch]:
    """Yields the `steps_per_epoch(batch_size)` training batches of `epoch`.

    The batches the train step builds for itself (`train_feed` and
    `assemble`, the same code), one jitted call each: for tests, notebooks
    and anything that wants to look at the data.

    Args:
      epoch: 0-based epoch; with the dataset's seed it fixes order and
        augmentation.
      batch_size: global batch size.
      sharding: if given, the batch sharding over a mesh (fixed inputs are
        replicated over the same mesh).
    """
    replicated = (None if sharding is None else jax.sharding.NamedSharding(
        sharding.mesh, jax.sharding.PartitionSpec()))
    feed = self.train_feed(epoch, batch_size, replicated, sharding)
    return self._batches_of(feed, sharding)

  def _batches_of(self, feed: EpochFeed,
                  sharding: Optional[jax.sharding.Sharding]
                  ) -> Iterator[Batch]:
    build = jax.jit(self.assemble, out_shardings=sharding)
    host = feed.host or itertools.repeat(None)
    for i, item in zip(range(feed.steps), host):
      yield build(feed.device, item, jnp.int32(i))

  def eval_batches(self, batch_size: int,
                   sharding: Optional[jax.sharding.Sharding] = None
                   ) -> Iterator[Batch]:
    """Yields batches covering the test set exactly once, in a fixed order.

    The last batch is padded to `batch_size`; its 'mask' is 1 for real
    examples and 0 for padding.

    Args:
      batch_size: global batch size.
      sharding: if given, every array is placed with
        `jax.device_put(x, sharding)`; a sharding that spans several
        processes makes each build only its rows (`process_rows`).
    """
    # Not a generator itself, so that a bad batch size fails at the call.
    _check_batch_size(batch_size)
    return self._eval_iter(batch_size, sharding)

  @abc.abstractmethod
  def _eval_iter(self, batch_size: int,
                 sharding: Optional[jax.sharding.Sharding]
                 ) -> Iterator[Batch]:
    """The generator behind `eval_batches`."""

  def __repr__(self) -> str:
    return (f'{type(self).__name__}(name={self.name!r}, '
            f'num_classes={self.num_classes}, image_shape={self.image_shape}, '
            f'num_train={self.num_train}, num_test={self.num_test})')


def _random_crop(images: jax.Array, offsets: jax.Array,
                 padding: int) -> jax.Array:
  """Reflect-pads a batch by `padding` and crops each image back.

  Reflection rather than zeros: the crop then never shows artificial black
  borders, which are a pixel pattern absent from the test set.

  Args:
    images: (B, H, W, C).
    offsets: int (B, 2) top-left corners in the padded images, each in
      [0, 2 * padding].
    padding: pixels added on each side.

  Returns:
    (B, H, W, C) crops.
  """
  _, h, w, c = images.shape
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding),
                            (0, 0)), mode='reflect')  # (B, H+2p, W+2p, C)

  def crop_one(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

  # vmap turns the per-image slice into one batched gather.
  return jax.vmap(crop_one)(padded, offsets)


def augment_batch(images: jax.Array, labels: jax.Array, idx: jax.Array,
                  rng: jax.Array, mean: jax.Array, inv_std: jax.Array, *,
                  crop_padding: int, flip: bool
                  ) -> Tuple[jax.Array, jax.Array]:
  """Gathers, augments and normalizes one batch on the device (traceable).

  Args:
    images: uint8 (N, H, W, C), the whole split.
    labels: int32 (N,).
    idx: int32 (B,) example indices.
    rng: key for this step's augmentation.
    mean: float32 (C,) per-channel mean in pixel units.
    inv_std: float32 (C,) 1 / per-channel std.
    crop_padding: 0 disables the random crop.
    flip: whether to flip half of the images horizontally.

  Returns:
    float32 (B, H, W, C) normalized images and int32 (B,) labels.
  """
  b = idx.shape[0]
  x = jnp.take(images, idx, axis=0)  # (B, H, W, C) uint8
  y = jnp.take(labels, idx, axis=0)  # (B,)
  crop_rng, flip_rng = jax.random.split(rng)
  if crop_padding > 0:
    offsets = jax.random.randint(crop_rng, (b, 2), 0,
                                 2 * crop_padding + 1)  # (B, 2)
    x = _random_crop(x, offsets, crop_padding)
  if flip:
    do_flip = jax.random.bernoulli(flip_rng, 0.5, (b,))  # (B,)
    x = jnp.where(do_flip[:, None, None, None], x[:, :, ::-1, :], x)
  return normalize(x, mean, inv_std), y


def normalize(x: jax.Array, mean: jax.Array, inv_std: jax.Array) -> jax.Array:
  """uint8 pixels -> float32 standardized per channel."""
  # Multiplying by a precomputed reciprocal is what XLA would turn a divide
  # into anyway; writing it out makes the result bit-reproducible in NumPy.
  return (x.astype(jnp.float32) - mean) * inv_std


@functools.partial(jax.jit, static_argnames=('crop_padding', 'flip'))
def make_batch(images, labels, idx, rng, mean, inv_std, rows=None, *,
               crop_padding: int, flip: bool):
  """`augment_batch` as one jitted call, optionally cut to `rows`.

  `rows` (int32 (R,), a process's share of a global batch, `process_rows`)
  keeps those rows of the batch; the random draws are made for the whole
  batch first, so a process's rows are exactly those of the global batch.
  """
  x, y = augment_batch(images, labels, idx, rng, mean, inv_std,
                       crop_padding=crop_padding, flip=flip)
  if rows is not None:
    x, y = jnp.take(x, rows, axis=0), jnp.take(y, rows, axis=0)
  return x, y


@functools.partial(jax.jit, static_argnames=('n', 'steps', 'batch_size'))
def _epoch_inputs(seed: jax.Array, epoch: jax.Array, *, n: int, steps: int,
                  batch_size: int) -> Tuple[jax.Array, jax.Array]:
  """The epoch's key and its order cut to (steps, batch_size) indices."""
  key = jax.random.fold_in(jax.random.key(seed), epoch)
  order = jax.random.permutation(key, n)[:steps * batch_size]
  return key, order.reshape(steps, batch_size)


class InMemoryDataset(Dataset):
  """A dataset held whole on the device as uint8 (digits, CIFAR).

  The order of epoch `e` is
  `jax.random.permutation(jax.random.fold_in(jax.random.key(seed), e), n)` and
  the augmentation of step `s` uses
  `jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), e), s)`, so
  batches are a pure function of (seed, epoch, step).
  """

  def __init__(self, *, name: str, train_images: np.ndarray,
               train_labels: np.ndarray, test_images: np.ndarray,
               test_labels: np.ndarray, num_classes: int, seed: int,
               augment: bool, crop_padding: int, flip: bool):
    """Puts the data on the device.

    Args:
      name: config name of the dataset.
      train_images: uint8 (N, H, W, C).
      train_labels: integer (N,).
      test_images: uint8 (M, H, W, C).
      test_labels: integer (M,).
      num_classes: number of labels.
      seed: run seed; fixes order and augmentation of every epoch.
      augment: False turns off both the crop and the flip.
      crop_padding: pad-crop margin in pixels (0 = no crop).
      flip: whether horizontal flips suit this data (False for digits).
    """
    if train_images.dtype != np.uint8 or test_images.dtype != np.uint8:
      raise ValueError('images must be uint8')
    self.name = name
    self.num_classes = int(num_classes)
    self.image_shape = tuple(int(d) for d in train_images.shape[1:])
    self.num_train = int(train_images.shape[0])
    self.num_test = int(test_images.shape[0])
    self.seed = int(seed)
    self.crop_padding = int(crop_padding) if augment else 0
    self.flip = bool(flip and augment)
    mean, std = channel_stats(train_images)
    self.mean, self.std = mean, std  # numpy (C,), pixel units
    self._mean = jnp.asarray(mean)
    self._inv_std = jnp.asarray(np.float32(1.0) / std)
    # Uploaded once per placement (`_arrays_on`); steps send nothing.
    self._host_arrays = (train_images, train_labels.astype(np.int32))
    self._placed = {}
    self._test_images = jax.device_put(test_images)
    self._test_labels = jax.device_put(test_labels.astype(np.int32))

  def content_digest(self, max_bytes: int = 1 << 26) -> str:
    """A hash of the data: every label, and the pixels of every image (of
    evenly spaced images, about `max_bytes` of them, for big datasets).

    Tells a moved data folder holding the same files from different data
    (a workdir's resume check).
    """
    digest = hashlib.blake2b(digest_size=16)
    test = (jax.device_get(self._test_images),
            jax.device_get(self._test_labels))
    for images, labels in (self._host_arrays, test):
      digest.update(repr(images.shape).encode())
      digest.update(np.ascontiguousarray(labels, np.int32).tobytes())
      per_image = max(1, int(np.prod(images.shape[1:])))
      stride = max(1, -(-len(images) * per_image // max_bytes))
      digest.update(np.ascontiguousarray(images[::stride]).tobytes())
    return digest.hexdigest()

  def epoch_order(self, epoch: int) -> jax.Array:
    """The permutation of the training set used in `epoch`, int32 (N,)."""
    return jax.random.permutation(epoch_key(self.seed, epoch), self.num_train)

  def _arrays_on(self, sharding: Optional[jax.sharding.Sharding]) -> dict:
    """The split and its statistics, placed on `sharding` once."""
    if sharding not in self._placed:
      self._placed[sharding] = replicate(
          {'images': self._host_arrays[0], 'labels': self._host_arrays[1],
           'mean': self.mean, 'inv_std': np.float32(1.0) / self.std},
          sharding)
    return self._placed[sharding]

  def _train_feed(self, epoch, batch_size, steps, replicated, batch_sharding):
    del batch_sharding  # batches are built inside the step
    seed_epoch = replicate((np.uint32(self.seed), np.uint32(epoch)),
                           replicated)
    key, order = _epoch_inputs(*seed_epoch, n=self.num_train, steps=steps,
                               batch_size=batch_size)
    return EpochFeed(device={**self._arrays_on(replicated), 'key': key,
                             'order': order},
                     host=None, steps=steps)

  def assemble(self, device, host, i):
    del host
    idx = jax.lax.dynamic_index_in_dim(device['order'], i, keepdims=False)
    images, labels = augment_batch(
        device['images'], device['labels'], idx,
        jax.random.fold_in(device['key'], i), device['mean'],
        device['inv_std'], crop_padding=self.crop_padding, flip=self.flip)
    return {'image': images, 'label': labels,
            'mask': jnp.ones(labels.shape, jnp.float32)}

  def _eval_iter(self, batch_size, sharding):
    # The rng is unused without augmentation; any fixed key will do.
    rng = jax.random.key(0)
    rows = process_rows(sharding, batch_size)
    global_size = None if rows is None else batch_size
    for start in range(0, self.num_test, batch_size):
      # No augmentation here, so a process simply builds its own positions.
      positions = start + (np.arange(batch_size) if rows is None else rows)
      real = positions < self.num_test
      # Padding repeats example 0; the mask removes it from every metric.
      idx = np.where(real, positions, 0).astype(np.int32)
      images, labels = make_batch(
          self._test_images, self._test_labels, jnp.asarray(idx), rng,
          self._mean, self._inv_std, crop_padding=0, flip=False)
      mask = jnp.asarray(real.astype(np.float32))
      yield _place({'image': images, 'label': labels, 'mask': mask}, sharding,
                   global_size)


# A function (split, shuffle_seed or None) -> tf.data.Dataset of
# (encoded image bytes, integer label) pairs. None means the fixed file order.
ReadFn = Callable[[str, Optional[int]], Any]


def _tf_seed(seed: int, epoch: int) -> int:
  """A 31-bit tf.data seed mixing the run seed and the epoch."""
  state = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)
  return int(state[0] >> 1)


def _row_filter(rows: np.ndarray, batch_size: int) -> Callable:
  """A tf.data predicate on (position, example): is it one of `rows`?"""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
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
  image_size, random flip. Eval: decode, center crop, resize. Crops and flips
  use stateless TF ops keyed by (seed, epoch, example position), so the
  batches of an epoch do not depend on thread timing or on earlier epochs.
  TensorFlow is imported by the sources before one of these is built.
  """

  def __init__(self, *, name: str, read: ReadFn, train_split: str,
               test_split: str, num_train: int, num_test: int,
               num_classes: int, image_size: int, seed: int, augment: bool,
               flip: bool, shuffle_buffer: int,
               mean: Tuple[float, ...] = IMAGENET_MEAN,
               std: Tuple[float, ...] = IMAGENET_STD):
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
      mean: per-channel mean in pixel units.
      std: per-channel std in pixel units.
    """
    self.name = name
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
    self.mean = np.asarray(mean, np.float32)
    self.std = np.asarray(std, np.float32)

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
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

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
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    height, width = shape[0], shape[1]
    side = tf.cast(tf.minimum(height, width), tf.float32)
    crop = tf.cast(side * self.image_size /
                   (self.image_size + _EVAL_CROP_MARGIN), tf.int32)
    crop = tf.maximum(crop, 1)
    return ((height - crop + 1) // 2, (width - crop + 1) // 2, crop, crop)

  def _random_window(self, seed):
    """A random-resized-crop window (Inception style: 8-100% area)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    def window(shape):
      begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
          shape, tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
          seed=seed, min_object_covered=0.1,
          aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0),
          max_attempts=10, use_image_if_no_bounding_boxes=True)
      return begin[0], begin[1], size[0], size[1]

    return window

  def _finish(self, image, label, normalized: bool = True):
    """Resizes to the output size, casts the label.

    Training batches stay uint8 (`normalized=False`): the device normalizes
    them (`assemble`), so a quarter of the bytes cross to it.
    """
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    image = tf.image.resize(image, [self.image_size, self.image_size],
                            method='bilinear', antialias=True)
    if normalized:
      image = tf.cast((image - self.mean) / self.std, tf.float32)
    else:
      image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    return image, tf.cast(label, tf.int32)

  def _numpy_batches(self, ds):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    ds = ds.prefetch(tf.data.AUTOTUNE)
    # Keep the deterministic default: parallel maps still emit in order.
    yield from ds.as_numpy_iterator()

  def _train_feed(self, epoch, batch_size, steps, replicated, batch_sharding):
    device = replicate({'mean': self.mean,
                        'inv_std': np.float32(1.0) / self.std}, replicated)
    host = _prefetch(self._host_batches(epoch, batch_size, steps,
                                        batch_sharding), size=2)
    return EpochFeed(device=device, host=host, steps=steps)

  def assemble(self, device, host, i):
    del i  # the host iterator already yields step i's batch
    return {'image': normalize(host['image'], device['mean'],
                               device['inv_std']),
            'label': host['label'], 'mask': host['mask']}

  def _host_batches(self, epoch, batch_size, steps, sharding):
    """Placed uint8 batches of `epoch`, decoded and cropped by tf.data."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
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
    for images, labels in self._numpy_batches(ds):
      yield _place({'image': images, 'label': labels, 'mask': mask},
                   sharding, None if rows is None else batch_size)

  def _eval_iter(self, batch_size, sharding):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

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
    batches = self._numpy_batches(ds)
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
