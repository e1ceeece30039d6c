"""EfficientNet-B0 (Tan & Le, 2019), with torchvision's layout and parameter names.

A stack of MBConv blocks: a 1x1 expansion, a depthwise convolution, a
squeeze-and-excitation (SiLU, sigmoid gate) and a linear 1x1 projection,
with SiLU activations and a skip connection when the block keeps its shape.
The skip path has stochastic depth (``DropPath``, active in training only)
whose rate grows linearly with the block index, as in torchvision.
Convolutions are bias-free and padded by ``(k - 1) // 2``, as in PyTorch, so
the model computes what torchvision's does at any input size (channels-last
here).

Parameter paths follow torchvision's module names (``jaxconv.core.residual``
keeps a block's layers under ``body``, which
``jaxconv.convert.load_torch_state_dict`` looks through)::

    torchvision                          jaxconv
    features.0.0.weight                  features/0/0/kernel
    features.1.0.block.1.fc1.weight      features/1/0/block/1/fc1/kernel     (no skip)
    features.2.1.block.0.1.running_mean  features/2/1/body/block/0/1/mean  (in state)
    classifier.1.weight                  classifier/1/kernel

Initialisation is torchvision's: convolutions normal with variance
``2 / fan_out``, BatchNorm scale 1 and bias 0, the classifier's kernel
uniform in ``+-1 / sqrt(num_classes)`` with a zero bias.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax

from jaxconv import validate
from jaxconv.core import Layer, serial
from jaxconv.layers import BatchNorm, Dense, Dropout, DropPath, GlobalAvgPool, Silu, SqueezeExcite
from jaxconv.models.mobilenet import conv_norm_activation, make_divisible, numbered, residual_block

#: ``uniform_(-1 / sqrt(fan_out), 1 / sqrt(fan_out))``, torchvision's EfficientNet Linear init.
_LINEAR_INIT = jax.nn.initializers.variance_scaling(1 / 3, "fan_out", "uniform")

#: EfficientNet-B0's stages: expansion, kernel size, first stride, input channels,
#: output channels, blocks.
B0_SETTING = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2),
              (6, 3, 2, 40, 80, 3), (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4),
              (6, 3, 1, 192, 320, 1))


def mbconv(inp: int, out: int, kernel_size: int, stride: int, expand_ratio: float,
           drop_rate: float, *, impl: str = "auto", dtype: Any = None) -> Layer:
    """torchvision's ``MBConv``: ``block`` = ``0`` [1x1 expansion-BN-SiLU], depthwise-BN-SiLU,
    squeeze-and-excitation, 1x1-BN; then ``stochastic_depth`` (``DropPath(drop_rate)``) and
    the skip, when ``stride == 1`` and ``inp == out``.

    The expansion has ``make_divisible(inp * expand_ratio)`` channels and is
    left out when that equals ``inp``; the squeeze has ``max(1, inp // 4)``.

    Shapes: ``(N, H, W, inp) -> (N, ceil(H / stride), ceil(W / stride), out)``.
    """
    expanded = make_divisible(inp * expand_ratio, 8)
    cna = partial(conv_norm_activation, norm=partial(BatchNorm, dtype=dtype), impl=impl,
                  dtype=dtype)
    layers = [cna(expanded, 1, activation=Silu)] if expanded != inp else []
    layers += [cna(expanded, kernel_size, stride=stride, groups=expanded, activation=Silu),
               SqueezeExcite(max(1, inp // 4), activation=Silu, impl=impl, dtype=dtype),
               cna(out, 1)]
    return residual_block("block", numbered(layers), stride == 1 and inp == out,
                          ("stochastic_depth", DropPath(drop_rate)))


def efficientnet_b0(num_classes: int = 1000, *, dropout: float = 0.2,
                    stochastic_depth_prob: float = 0.2, impl: str = "auto",
                    dtype: Any = None) -> Layer:
    """EfficientNet-B0, torchvision's ``efficientnet_b0``; 5,288,548 params for 1000 classes.

    ``features``: ``0`` 3x3/2 conv-BN-SiLU (32), ``1``..``7`` stages of
    ``mbconv`` blocks (``B0_SETTING``; block ``i`` of the 16 has stochastic
    depth rate ``stochastic_depth_prob * i / 16``), ``8`` 1x1 conv-BN-SiLU
    (1280); ``avgpool`` (global); ``classifier``: ``0`` Dropout(``dropout``),
    ``1`` Dense(``num_classes``).

    Args:
      num_classes: outputs of the classifier.
      dropout: the classifier's dropout rate (probability of dropping).
      stochastic_depth_prob: the largest stochastic depth rate (see above).
      impl: the convolution implementation (``"auto"``, ``"lax"``, ``"patches"``).
      dtype: compute dtype of the convolutions, BatchNorms and the classifier.

    Shapes: ``(N, H, W, 3) -> (N, num_classes)``, any ``H, W >= 1``.
    """
    name = "efficientnet_b0"
    validate.integer(num_classes, "num_classes", context=name, minimum=1)
    validate.number(dropout, "dropout", context=name, minimum=0, maximum=1, exclusive_maximum=True)
    validate.number(stochastic_depth_prob, "stochastic_depth_prob", context=name, minimum=0,
                    maximum=1, exclusive_maximum=True)
    cna = partial(conv_norm_activation, norm=partial(BatchNorm, dtype=dtype), activation=Silu,
                  impl=impl, dtype=dtype)
    total, index, features = sum(setting[-1] for setting in B0_SETTING), 0, [cna(32, 3, stride=2)]
    for expand_ratio, kernel_size, stride, inp, out, blocks in B0_SETTING:
        stage = []
        for i in range(blocks):
            rate = stochastic_depth_prob * index / total
            stage.append(mbconv(inp if i == 0 else out, out, kernel_size, stride if i == 0 else 1,
                                expand_ratio, rate, impl=impl, dtype=dtype))
            index += 1
        features.append(numbered(stage))
    features.append(cna(1280, 1))
    classifier = [Dropout(dropout), Dense(num_classes, kernel_init=_LINEAR_INIT, dtype=dtype)]
    return serial(("features", numbered(features)), ("avgpool", GlobalAvgPool()),
                  ("classifier", numbered(classifier)))
