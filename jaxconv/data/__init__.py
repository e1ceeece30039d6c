"""Data: data sets in memory, mini-batches, augmentation, and image folders streamed through Grain.

- ``datasets``: ``load_dataset`` (the embedded digits, MNIST-style IDX files,
  CIFAR-10 binary), ``Split`` and ``Dataset``;
- ``arrays``: ``epoch_batches`` over in-memory arrays, and augmentation on the
  device (``augmentation``, ``random_crop``, ``random_flip``, ``parse_augment``);
- ``folder``: ``image_folder`` lists a class-per-subfolder image tree
  (``ImageFolder``, ``FolderSplit``, class names as torchvision's ``ImageFolder``);
- ``images``: Pillow decoding (``open_image``, ``load_image``), the host-side
  transforms (``Preprocess``, ``Augment``: random resized crop, flip, colour
  jitter with torchvision's meanings);
- ``pipeline``: ``Loader``, the Grain pipeline (worker processes, seeded
  shuffling, per-process sharding, a resumable iterator state);
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
from jaxconv.data.folder import BadImageWarning as BadImageWarning
from jaxconv.data.folder import FolderSplit as FolderSplit
from jaxconv.data.folder import ImageFolder as ImageFolder
from jaxconv.data.folder import find_classes as find_classes
from jaxconv.data.folder import image_folder as image_folder
from jaxconv.data.folder import list_images as list_images
from jaxconv.data.images import DEFAULT_MAX_PIXELS as DEFAULT_MAX_PIXELS
from jaxconv.data.images import IMAGE_EXTENSIONS as IMAGE_EXTENSIONS
from jaxconv.data.images import IMAGENET_MEAN as IMAGENET_MEAN
from jaxconv.data.images import IMAGENET_STD as IMAGENET_STD
from jaxconv.data.images import Augment as Augment
from jaxconv.data.images import ImageError as ImageError
from jaxconv.data.images import Preprocess as Preprocess
from jaxconv.data.images import load_image as load_image
from jaxconv.data.images import make_preprocess as make_preprocess
from jaxconv.data.images import open_image as open_image
from jaxconv.data.pipeline import PADDING_LABEL as PADDING_LABEL
from jaxconv.data.pipeline import Loader as Loader
from jaxconv.data.pipeline import LoaderIterator as LoaderIterator
