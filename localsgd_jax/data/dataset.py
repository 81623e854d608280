"""The `Dataset` interface, its epoch feed and the batch placement helpers.

Two kinds of dataset share the interface that the train loop sees
(`in_memory.py`, `streaming.py`; `sources.py` picks one per config):

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
import itertools
from typing import Any, Dict, Iterator, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from localsgd_jax.errors import UserError

Batch = dict[str, jax.Array]


def epoch_key(seed: int, epoch: int) -> jax.Array:
  """The key every random choice of `epoch` derives from."""
  return jax.random.fold_in(jax.random.key(seed), epoch)


def channel_stats(images: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and std of uint8 images (N, H, W, C), float32 (C,).

  From each channel's histogram of the 256 pixel values: exact integer sums
  (so the same float64 sums as adding the pixels up) without a float copy
  of the data (1.2 GB in float64 for CIFAR); about 2x faster than summing
  float64 chunks (1.5 s against 2.8 s for 50,000 CIFAR images, 2 cores).
  """
  values = np.arange(256, dtype=np.int64)
  hists = [np.bincount(images[..., c].ravel(), minlength=256)
           for c in range(images.shape[-1])]  # (C, 256) counts
  total = np.array([h @ values for h in hists], np.float64)
  total_sq = np.array([h @ values ** 2 for h in hists], np.float64)
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
    eval_split: what the evaluation batches come from: 'test', 'val',
      'validation' or 'holdout' (set by the constructors).
    class_names: the label names where the data has them (folders), else
      None.
  """

  name: str
  num_classes: int
  image_shape: Tuple[int, int, int]
  num_train: int
  num_test: int
  flip: bool
  mean: np.ndarray
  std: np.ndarray
  eval_split: str = 'test'
  class_names: Optional[Tuple[str, ...]] = None

  def fingerprint(self) -> Dict[str, Any]:
    """What identifies the data (a workdir's run.json): its name, sizes,
    classes, image shape, eval split and storage, and a hash of its contents
    where one can be had (`_contents`). A resume or a fork compares it."""
    fp = {'name': self.name, 'num_train': self.num_train,
          'num_eval': self.num_test, 'num_classes': self.num_classes,
          'image_shape': list(self.image_shape),
          'eval_split': self.eval_split}
    if self.class_names:
      fp['class_names'] = list(self.class_names)
    return {**fp, **self._contents()}

  @abc.abstractmethod
  def _contents(self) -> Dict[str, Any]:
    """{'storage': 'memory' or 'stream', and a hash of the data: 'content'
    (the pixels) or 'files' (the file list), where there is one}."""

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
    # One jitted builder per sharding: a new jax.jit wrapper each epoch
    # would compile the batch again each epoch (seconds on a CPU).
    builders = self.__dict__.setdefault('_assemble_jits', {})
    if sharding not in builders:
      builders[sharding] = jax.jit(self.assemble, out_shardings=sharding)
    build = builders[sharding]
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


def normalize(x: jax.Array, mean: jax.Array, inv_std: jax.Array) -> jax.Array:
  """uint8 pixels -> float32 standardized per channel."""
  # Multiplying by a precomputed reciprocal is what XLA would turn a divide
  # into anyway; writing it out makes the result bit-reproducible in NumPy.
  return (x.astype(jnp.float32) - mean) * inv_std
