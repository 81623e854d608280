"""The data package's batching names in one place (kept for imports).

The code lives by job: `dataset.py` (the `Dataset` interface, `EpochFeed`,
placement helpers), `in_memory.py` (the whole dataset on the device,
augmentation in the step), `streaming.py` (tf.data on the host),
`sources.py` (which dataset a config names).
"""
# pylint: disable=unused-import
from localsgd_jax.data.dataset import Batch
from localsgd_jax.data.dataset import channel_stats
from localsgd_jax.data.dataset import Dataset
from localsgd_jax.data.dataset import epoch_key
from localsgd_jax.data.dataset import EpochFeed
from localsgd_jax.data.dataset import normalize
from localsgd_jax.data.dataset import process_rows
from localsgd_jax.data.dataset import replicate
from localsgd_jax.data.in_memory import augment_batch
from localsgd_jax.data.in_memory import InMemoryDataset
from localsgd_jax.data.in_memory import make_batch
from localsgd_jax.data.streaming import IMAGENET_MEAN
from localsgd_jax.data.streaming import IMAGENET_STD
from localsgd_jax.data.streaming import ReadFn
from localsgd_jax.data.streaming import StreamingDataset
