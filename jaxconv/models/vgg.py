"""VGG (Simonyan & Zisserman, 2014), with torchvision's layout and parameter names.

``features`` (3x3 convolutions padded by 1, each followed by ReLU, or by
BatchNorm and ReLU in the ``_bn`` variants, and 2x2 max pools), ``avgpool``
(adaptive average pooling to 7x7, so any input of at least 32x32 works), then
``classifier``: ``Linear(512 * 7 * 7, 4096) - ReLU - Dropout - Linear(4096,
4096) - ReLU - Dropout - Linear(4096, num_classes)``. Channels-last.

Parameter paths follow torchvision's module names and indices::

    torchvision                     jaxconv
    features.0.weight               features/0/kernel
    features.1.running_var          features/1/var  (in state; vgg*_bn)
    classifier.0.weight             classifier/0/kernel
    classifier.6.bias               classifier/6/bias

Modules come in torchvision's order, so
``jaxconv.convert.load_torch_state_dict(model, input_shape, state_dict)``
loads a torchvision ``state_dict`` without a mapping; it also reorders the
columns of ``classifier.0.weight`` (torchvision flattens the ``(512, 7, 7)``
feature map channels-first, jaxconv's ``flatten`` the ``(7, 7, 512)`` one
channels-last). Initialisation is torchvision's: convolutions normal with
variance ``2 / fan_out``, Linear kernels normal with standard deviation 0.01,
zero biases, BatchNorm scale 1 and bias 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax

from jaxconv import validate
from jaxconv.core import Layer, serial
from jaxconv.layers import AdaptiveAvgPool, BatchNorm, Conv, Dense, Dropout, Flatten, MaxPool, Relu

#: torchvision's ``kaiming_normal_(mode="fan_out", nonlinearity="relu")``.
_CONV_INIT = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")
#: torchvision's ``normal_(0, 0.01)`` for VGG's Linear layers.
_LINEAR_INIT = jax.nn.initializers.normal(0.01)

#: torchvision's configurations: output channels of each 3x3 convolution, ``"M"`` a max pool.
CONFIGS = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"),
}


def vgg_features(config: Sequence[int | str], *, batch_norm: bool = False, impl: str = "auto",
                 dtype: Any = None) -> Layer:
    """torchvision's ``features``: a ``serial`` whose layers are named ``"0"``, ``"1"``...

    Args:
      config: output channels of each 3x3 convolution (padding 1, with bias),
        ``"M"`` for a 2x2 max pool with stride 2.
      batch_norm: put a BatchNorm between each convolution and its ReLU.
      impl, dtype: as in ``Conv``.

    Shapes: ``(N, H, W, C) -> (N, H / 2**m, W / 2**m, config[-2])`` (``m`` pools,
    sizes rounded down at each pool).
    """
    layers = []
    for item in config:
        if item == "M":
            layers.append(MaxPool(2, stride=2))
            continue
        layers.append(Conv(item, 3, padding=1, impl=impl, dtype=dtype, kernel_init=_CONV_INIT))
        if batch_norm:
            layers.append(BatchNorm(dtype=dtype))
        layers.append(Relu())
    return serial(*((str(i), layer) for i, layer in enumerate(layers)))


def vgg_classifier(num_classes: int, *, dropout: float = 0.5, dtype: Any = None) -> Layer:
    """torchvision's ``classifier``: ``0`` Dense 4096, ``1`` ReLU, ``2`` Dropout, ``3`` Dense
    4096, ``4`` ReLU, ``5`` Dropout, ``6`` Dense ``num_classes``.

    Shapes: ``(N, F) -> (N, num_classes)``.
    """
    def dense(features):
        return Dense(features, dtype=dtype, kernel_init=_LINEAR_INIT)

    layers = (dense(4096), Relu(), Dropout(dropout), dense(4096), Relu(), Dropout(dropout),
              dense(num_classes))
    return serial(*((str(i), layer) for i, layer in enumerate(layers)))


def vgg(config: str | Sequence[int | str], num_classes: int = 1000, *, batch_norm: bool = False,
        dropout: float = 0.5, impl: str = "auto", dtype: Any = None, name: str = "vgg") -> Layer:
    """A torchvision VGG: ``features - avgpool (adaptive, 7x7) - flatten - classifier``.

    Args:
      config: a name of ``CONFIGS`` (``"vgg11"``, ``"vgg16"``) or a configuration as in
        ``vgg_features`` (e.g. torchvision's VGG-19 one).
      num_classes: outputs of the last Linear layer.
      batch_norm: the ``_bn`` variant.
      dropout: the classifier's dropout rate (probability of dropping).
      impl: the convolution implementation (``"auto"``, ``"lax"``, ``"patches"``).
      dtype: compute dtype of the convolutions, BatchNorms and Linear layers.
      name: the model's name in error messages.

    Shapes: ``(N, H, W, 3) -> (N, num_classes)``; ``H`` and ``W`` must survive
    the max pools (at least 32 for the standard configurations).
    """
    if isinstance(config, str):
        config = CONFIGS[validate.choice(config, "config", tuple(CONFIGS), context=name)]
    validate.integer(num_classes, "num_classes", context=name, minimum=1)
    validate.boolean(batch_norm, "batch_norm", context=name)
    validate.number(dropout, "dropout", context=name, minimum=0, maximum=1, exclusive_maximum=True)
    return serial(
        ("features", vgg_features(config, batch_norm=batch_norm, impl=impl, dtype=dtype)),
        ("avgpool", AdaptiveAvgPool(7)),
        ("flatten", Flatten()),
        ("classifier", vgg_classifier(num_classes, dropout=dropout, dtype=dtype)),
    )


def vgg11(num_classes: int = 1000, *, impl: str = "auto", dtype: Any = None) -> Layer:
    """VGG-11 (configuration "A"); 132,863,336 params for 1000 classes."""
    return vgg("vgg11", num_classes, impl=impl, dtype=dtype, name="vgg11")


def vgg11_bn(num_classes: int = 1000, *, impl: str = "auto", dtype: Any = None) -> Layer:
    """VGG-11 with BatchNorm; 132,868,840 params for 1000 classes."""
    return vgg("vgg11", num_classes, batch_norm=True, impl=impl, dtype=dtype, name="vgg11_bn")


def vgg16(num_classes: int = 1000, *, impl: str = "auto", dtype: Any = None) -> Layer:
    """VGG-16 (configuration "D"); 138,357,544 params for 1000 classes."""
    return vgg("vgg16", num_classes, impl=impl, dtype=dtype, name="vgg16")


def vgg16_bn(num_classes: int = 1000, *, impl: str = "auto", dtype: Any = None) -> Layer:
    """VGG-16 with BatchNorm; 138,365,992 params for 1000 classes."""
    return vgg("vgg16", num_classes, batch_norm=True, impl=impl, dtype=dtype, name="vgg16_bn")
