"""MobileNetV2 and MobileNetV3 (small, large), with torchvision's layout and parameter names.

Both are stacks of inverted residual blocks: a 1x1 expansion, a depthwise
3x3 or 5x5 convolution, (in V3, optionally) a squeeze-and-excitation, and a
linear 1x1 projection, with a skip connection when the block keeps its
shape. Convolutions are bias-free and padded by ``(k - 1) // 2`` on every
side, as in PyTorch, so the models compute what torchvision's do at any
input size (channels-last here); global average pooling makes the head
independent of the resolution.

Parameter paths follow torchvision's module names. ``jaxconv.core.residual``
keeps a block's layers under its ``body`` key, which
``jaxconv.convert.load_torch_state_dict`` looks through::

    torchvision                          jaxconv
    features.0.0.weight                  features/0/0/kernel
    features.0.1.running_var             features/0/1/var  (in state)
    features.1.conv.0.0.weight           features/1/conv/0/0/kernel    (V2, no skip)
    features.3.conv.1.0.weight           features/3/body/conv/1/0/kernel  (V2, skip)
    features.5.block.2.fc1.weight        features/5/body/block/2/fc1/kernel  (V3-Large)
    classifier.1.weight                  classifier/1/kernel

Modules come in torchvision's order. Initialisation is torchvision's:
convolutions normal with variance ``2 / fan_out``, BatchNorm scale 1 and
bias 0, Linear kernels normal with standard deviation 0.01 and zero biases
(the squeeze-and-excitation convolutions keep ``SqueezeExcite``'s own
initialisation). The helpers ``make_divisible``, ``conv_norm_activation``,
``numbered`` and ``residual_block`` are shared with EfficientNet and ConvNeXt.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import jax

from jaxconv import validate
from jaxconv.core import Layer, residual, serial
from jaxconv.layers import (
    BatchNorm,
    Conv,
    Dense,
    Dropout,
    GlobalAvgPool,
    Hardsigmoid,
    Hardswish,
    Relu,
    Relu6,
    SqueezeExcite,
)

#: torchvision's ``kaiming_normal_(mode="fan_out")`` for convolutions.
CONV_INIT = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")
#: MobileNet's ``normal_(0, 0.01)`` for Linear kernels.
_LINEAR_INIT = jax.nn.initializers.normal(0.01)

#: MobileNetV2's stages: expansion ``t``, output channels ``c``, blocks ``n``, first stride ``s``.
V2_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
              (6, 160, 3, 2), (6, 320, 1, 1))

#: MobileNetV3's blocks: input channels, kernel size, expanded channels, output channels,
#: squeeze-and-excitation, activation (``"RE"`` ReLU, ``"HS"`` hard swish), stride.
V3_LARGE = ((16, 3, 16, 16, False, "RE", 1), (16, 3, 64, 24, False, "RE", 2),
            (24, 3, 72, 24, False, "RE", 1), (24, 5, 72, 40, True, "RE", 2),
            (40, 5, 120, 40, True, "RE", 1), (40, 5, 120, 40, True, "RE", 1),
            (40, 3, 240, 80, False, "HS", 2), (80, 3, 200, 80, False, "HS", 1),
            (80, 3, 184, 80, False, "HS", 1), (80, 3, 184, 80, False, "HS", 1),
            (80, 3, 480, 112, True, "HS", 1), (112, 3, 672, 112, True, "HS", 1),
            (112, 5, 672, 160, True, "HS", 2), (160, 5, 960, 160, True, "HS", 1),
            (160, 5, 960, 160, True, "HS", 1))
V3_SMALL = ((16, 3, 16, 16, True, "RE", 2), (16, 3, 72, 24, False, "RE", 2),
            (24, 3, 88, 24, False, "RE", 1), (24, 5, 96, 40, True, "HS", 2),
            (40, 5, 240, 40, True, "HS", 1), (40, 5, 240, 40, True, "HS", 1),
            (40, 5, 120, 48, True, "HS", 1), (48, 5, 144, 48, True, "HS", 1),
            (48, 5, 288, 96, True, "HS", 2), (96, 5, 576, 96, True, "HS", 1),
            (96, 5, 576, 96, True, "HS", 1))


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """``value`` rounded to the nearest multiple of ``divisor``, at least ``min_value``
    (default ``divisor``), and bumped up by ``divisor`` when rounding lost more than 10%
    (torchvision's ``_make_divisible``, from the TensorFlow MobileNet code)."""
    rounded = max(min_value or divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def numbered(layers: Sequence[Layer]) -> Layer:
    """``serial`` of ``layers`` named ``"0"``, ``"1"``... (a PyTorch ``nn.Sequential``)."""
    return serial(*((str(i), layer) for i, layer in enumerate(layers)))


def conv_norm_activation(features: int, kernel_size: int = 3, *, stride: int = 1, groups: int = 1,
                         norm: Callable[[], Layer], activation: Callable[[], Layer] | None = None,
                         impl: str = "auto", dtype: Any = None) -> Layer:
    """torchvision's ``Conv2dNormActivation``: ``0`` bias-free convolution padded by
    ``(kernel_size - 1) // 2``, ``1`` ``norm()``, ``2`` ``activation()`` (when given).

    Shapes: ``(N, H, W, C) -> (N, ceil(H / stride), ceil(W / stride), features)`` for odd
    ``kernel_size``.
    """
    conv = Conv(features, kernel_size, stride=stride, padding=(kernel_size - 1) // 2,
                groups=groups, use_bias=False, impl=impl, dtype=dtype, kernel_init=CONV_INIT)
    layers = [("0", conv), ("1", norm())]
    if activation is not None:
        layers.append(("2", activation()))
    return serial(*layers)


def residual_block(name: str, body: Layer, skip: bool, *after: tuple[str, Layer]) -> Layer:
    """A block whose layers are ``body`` (named ``name``) and then ``after``.

    With ``skip``, ``x + after(body(x))`` (``jaxconv.core.residual``: the
    params sit under ``body/{name}``); without, ``serial((name, body))`` and
    ``after`` is left out (torchvision's blocks apply stochastic depth only on
    the skip path).
    """
    if skip:
        return residual((name, body), *after)
    return serial((name, body))


def _v2_block(inp: int, out: int, stride: int, expand_ratio: int, *, impl: str,
              dtype: Any) -> Layer:
    """MobileNetV2's ``InvertedResidual``: ``conv`` = [1x1 expansion], depthwise 3x3, 1x1, BN."""
    hidden = int(round(inp * expand_ratio))
    cna = partial(conv_norm_activation, norm=partial(BatchNorm, dtype=dtype), activation=Relu6,
                  impl=impl, dtype=dtype)
    layers = [cna(hidden, 1)] if expand_ratio != 1 else []
    layers += [cna(hidden, 3, stride=stride, groups=hidden),
               Conv(out, 1, padding=0, use_bias=False, impl=impl, dtype=dtype,
                    kernel_init=CONV_INIT),
               BatchNorm(dtype=dtype)]
    return residual_block("conv", numbered(layers), stride == 1 and inp == out)


def _classifier_options(name: str, num_classes: int, dropout: float) -> None:
    validate.integer(num_classes, "num_classes", context=name, minimum=1)
    validate.number(dropout, "dropout", context=name, minimum=0, maximum=1, exclusive_maximum=True)


def mobilenet_v2(num_classes: int = 1000, *, dropout: float = 0.2, impl: str = "auto",
                 dtype: Any = None) -> Layer:
    """MobileNetV2 (Sandler et al., 2018), torchvision's ``mobilenet_v2``.

    ``features``: ``0`` 3x3/2 conv-BN-ReLU6 (32), ``1``..``17`` inverted residual
    blocks (``V2_SETTING``), ``18`` 1x1 conv-BN-ReLU6 (1280); ``avgpool``
    (global); ``classifier``: ``0`` Dropout(``dropout``), ``1`` Dense(``num_classes``).
    3,504,872 params for 1000 classes.

    Args:
      num_classes: outputs of the classifier.
      dropout: the classifier's dropout rate (probability of dropping).
      impl: the convolution implementation (``"auto"``, ``"lax"``, ``"patches"``).
      dtype: compute dtype of the convolutions, BatchNorms and the classifier.

    Shapes: ``(N, H, W, 3) -> (N, num_classes)``, any ``H, W >= 1``.
    """
    _classifier_options("mobilenet_v2", num_classes, dropout)
    bn = partial(BatchNorm, dtype=dtype)
    features, inp = [conv_norm_activation(32, 3, stride=2, norm=bn, activation=Relu6, impl=impl,
                                          dtype=dtype)], 32
    for t, c, n, s in V2_SETTING:
        for i in range(n):
            features.append(_v2_block(inp, c, s if i == 0 else 1, t, impl=impl, dtype=dtype))
            inp = c
    features.append(conv_norm_activation(1280, 1, norm=bn, activation=Relu6, impl=impl,
                                         dtype=dtype))
    classifier = [Dropout(dropout), Dense(num_classes, kernel_init=_LINEAR_INIT, dtype=dtype)]
    return serial(("features", numbered(features)), ("avgpool", GlobalAvgPool()),
                  ("classifier", numbered(classifier)))


def _v3_block(config: tuple, *, impl: str, dtype: Any) -> Layer:
    """MobileNetV3's ``InvertedResidual``: ``block`` = [1x1 expansion], depthwise, [SE], 1x1-BN."""
    inp, kernel_size, expanded, out, use_se, act, stride = config
    activation = Hardswish if act == "HS" else Relu
    cna = partial(conv_norm_activation, impl=impl, dtype=dtype,
                  norm=partial(BatchNorm, momentum=0.01, epsilon=1e-3, dtype=dtype))
    layers = [cna(expanded, 1, activation=activation)] if expanded != inp else []
    layers.append(cna(expanded, kernel_size, stride=stride, groups=expanded, activation=activation))
    if use_se:
        layers.append(SqueezeExcite(make_divisible(expanded // 4, 8), activation=Relu,
                                    gate=Hardsigmoid, impl=impl, dtype=dtype))
    layers.append(cna(out, 1))
    return residual_block("block", numbered(layers), stride == 1 and inp == out)


def mobilenet_v3(setting: Sequence[tuple], last_channel: int, num_classes: int = 1000, *,
                 dropout: float = 0.2, impl: str = "auto", dtype: Any = None,
                 name: str = "mobilenet_v3") -> Layer:
    """A torchvision MobileNetV3 (Howard et al., 2019); ``mobilenet_v3_small``/``_large`` call this.

    ``features``: ``0`` 3x3/2 conv-BN-hardswish, one inverted residual block per
    entry of ``setting`` (see ``V3_LARGE``), then a 1x1 conv-BN-hardswish to 6x
    the last block's channels; ``avgpool`` (global); ``classifier``: ``0`` Dense
    (``last_channel``), ``1`` hardswish, ``2`` Dropout(``dropout``), ``3``
    Dense(``num_classes``). BatchNorms use ``momentum=0.01``, ``epsilon=1e-3``;
    the squeeze-and-excitation layers squeeze to ``make_divisible(C // 4)``
    channels, with ReLU and a hard-sigmoid gate.

    Shapes: ``(N, H, W, 3) -> (N, num_classes)``, any ``H, W >= 1``.
    """
    _classifier_options(name, num_classes, dropout)
    bn = partial(BatchNorm, momentum=0.01, epsilon=1e-3, dtype=dtype)
    features = [conv_norm_activation(setting[0][0], 3, stride=2, norm=bn, activation=Hardswish,
                                     impl=impl, dtype=dtype)]
    features += [_v3_block(config, impl=impl, dtype=dtype) for config in setting]
    features.append(conv_norm_activation(6 * setting[-1][3], 1, norm=bn, activation=Hardswish,
                                         impl=impl, dtype=dtype))
    classifier = [Dense(last_channel, kernel_init=_LINEAR_INIT, dtype=dtype), Hardswish(),
                  Dropout(dropout), Dense(num_classes, kernel_init=_LINEAR_INIT, dtype=dtype)]
    return serial(("features", numbered(features)), ("avgpool", GlobalAvgPool()),
                  ("classifier", numbered(classifier)))


def mobilenet_v3_large(num_classes: int = 1000, *, dropout: float = 0.2, impl: str = "auto",
                       dtype: Any = None) -> Layer:
    """MobileNetV3-Large (``V3_LARGE``, 1280 hidden features); 5,483,032 params for 1000 classes.

    Args as in ``mobilenet_v2``.
    """
    return mobilenet_v3(V3_LARGE, 1280, num_classes, dropout=dropout, impl=impl, dtype=dtype,
                        name="mobilenet_v3_large")


def mobilenet_v3_small(num_classes: int = 1000, *, dropout: float = 0.2, impl: str = "auto",
                       dtype: Any = None) -> Layer:
    """MobileNetV3-Small (``V3_SMALL``, 1024 hidden features); 2,542,856 params for 1000 classes.

    Args as in ``mobilenet_v2``.
    """
    return mobilenet_v3(V3_SMALL, 1024, num_classes, dropout=dropout, impl=impl, dtype=dtype,
                        name="mobilenet_v3_small")
