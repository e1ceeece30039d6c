"""Data: data sets in memory, mini-batches, augmentation, and image folders streamed through Grain.

- ``datasets``: ``load_dataset`` (the embedded digits, MNIST-style IDX files,
  CIFAR-10 binary), ``Split`` and ``Dataset``;
- ``arrays``: ``epoch_batches`` over in-memory arrays, and augmentation on the
  device (``augmentation``, ``random_crop``, ``random_flip``, ``parse_augment``);
- ``files``: opening regular files only, reading them a chunk at a time.
"""

from jaxconv.data.arrays import augmentation as augmentation
from jaxconv.data.arrays import batches_per_epoch as batches_per_epoch
from jaxconv.data.arrays import epoch_batches as epoch_batches
from jaxconv.data.arrays import parse_augment as parse_augment
from jaxconv.data.arrays import random_crop as random_crop
from jaxconv.data.arrays import random_flip as random_flip
from jaxconv.data.datasets import CIFAR_DIR as CIFAR_DIR
from jaxconv.data.datasets import CIFAR_TEST as CIFAR_TEST
from jaxconv.data.datasets import CIFAR_TRAIN as CIFAR_TRAIN
from jaxconv.data.datasets import DIGITS_FILE as DIGITS_FILE
from jaxconv.data.datasets import IDX_FILES as IDX_FILES
from jaxconv.data.datasets import LOADERS as LOADERS
from jaxconv.data.datasets import Dataset as Dataset
from jaxconv.data.datasets import Split as Split
from jaxconv.data.datasets import load_dataset as load_dataset
from jaxconv.data.datasets import read_cifar_batch as read_cifar_batch
from jaxconv.data.datasets import read_idx as read_idx
