"""ConvNeXt-Tiny (Liu et al., 2022), with torchvision's layout and parameter names.

A 4x4/4 "patchify" stem, four stages of ConvNeXt blocks separated by
downsampling layers (LayerNorm, then a 2x2/2 convolution), global average
pooling and a LayerNorm-Linear head. A block is ``x + drop_path(layer_scale
* block(x))`` with ``block`` = depthwise 7x7 convolution, LayerNorm, Linear
to 4x the channels, GELU (exact), Linear back. Every LayerNorm normalises the
channels with ``epsilon=1e-6``; torchvision permutes NCHW to NHWC around the
block's LayerNorm and Linear layers and uses a channels-first ``LayerNorm2d``
elsewhere, which channels-last makes plain ``LayerNorm`` and ``Dense`` layers
(no permutes). Stochastic depth (``DropPath``) is active in training only.

Parameter paths follow torchvision's module names (``jaxconv.core.residual``
keeps a block's layers under ``body``, which
``jaxconv.convert.load_torch_state_dict`` looks through)::

    torchvision                          jaxconv
    features.0.0.weight                  features/0/0/kernel
    features.1.0.block.0.weight          features/1/0/body/block/0/kernel  (depthwise)
    features.1.0.block.3.weight          features/1/0/body/block/3/kernel  (Linear, transposed)
    features.1.0.layer_scale             features/1/0/body/layer_scale/scale  ((C, 1, 1) -> (C,))
    features.2.0.weight                  features/2/0/scale  (downsampling LayerNorm)
    classifier.2.weight                  classifier/2/kernel

Initialisation is torchvision's: convolution and Linear kernels normal with
standard deviation 0.02 (torchvision's ``trunc_normal_(std=0.02)`` truncates
at +-2, a hundred standard deviations away), zero biases, LayerNorm scale 1
and bias 0, layer scale ``layer_scale``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import jax

from jaxconv import validate
from jaxconv.core import Layer, serial
from jaxconv.layers import Conv, Dense, DropPath, Flatten, Gelu, GlobalAvgPool, LayerNorm, LayerScale
from jaxconv.models.mobilenet import numbered, residual_block

_INIT = jax.nn.initializers.normal(0.02)

#: ConvNeXt-Tiny's stages: channels, channels after the downsampling that follows
#: (``None``: the last stage), blocks.
TINY_SETTING = ((96, 192, 3), (192, 384, 3), (384, 768, 9), (768, None, 3))


def cn_block(dim: int, drop_rate: float, layer_scale: float = 1e-6, *, impl: str = "auto",
             dtype: Any = None) -> Layer:
    """torchvision's ``CNBlock``: ``x + stochastic_depth(layer_scale * block(x))``.

    ``block``: ``0`` depthwise 7x7 convolution (padding 3, bias), ``2``
    LayerNorm, ``3`` Dense(``4 * dim``), ``4`` GELU, ``5`` Dense(``dim``)
    (torchvision's ``1`` and ``6`` are permutes, not needed channels-last).

    Shapes: ``(N, H, W, dim) -> (N, H, W, dim)``.
    """
    def dense(features):
        return Dense(features, kernel_init=_INIT, dtype=dtype)

    block = serial(("0", Conv(dim, 7, padding=3, groups=dim, impl=impl, dtype=dtype,
                              kernel_init=_INIT)),
                   ("2", LayerNorm(epsilon=1e-6, dtype=dtype)), ("3", dense(4 * dim)),
                   ("4", Gelu()), ("5", dense(dim)))
    return residual_block("block", block, True, ("layer_scale", LayerScale(layer_scale, dtype=dtype)),
                          ("stochastic_depth", DropPath(drop_rate)))


def convnext(setting: Sequence[tuple], num_classes: int = 1000, *,
             stochastic_depth_prob: float = 0.0, layer_scale: float = 1e-6, impl: str = "auto",
             dtype: Any = None, name: str = "convnext") -> Layer:
    """A torchvision ConvNeXt; ``convnext_tiny`` calls this.

    ``features``: ``0`` 4x4/4 convolution (bias) and LayerNorm, then per entry
    ``(dim, out, blocks)`` of ``setting`` a stage of ``blocks`` ``cn_block``
    layers and, unless ``out`` is ``None``, a downsampling ``serial(0:
    LayerNorm, 1: 2x2/2 convolution to out)``; block ``i`` of ``n`` has stochastic depth
    rate ``stochastic_depth_prob * i / (n - 1)``; ``avgpool`` (global);
    ``classifier``: ``0`` LayerNorm, ``1`` Flatten, ``2`` Dense(``num_classes``).

    Shapes: ``(N, H, W, 3) -> (N, num_classes)``; ``H`` and ``W`` must be at least 32.
    """
    validate.integer(num_classes, "num_classes", context=name, minimum=1)
    validate.number(stochastic_depth_prob, "stochastic_depth_prob", context=name, minimum=0,
                    maximum=1, exclusive_maximum=True)
    validate.number(layer_scale, "layer_scale", context=name)
    norm = partial(LayerNorm, epsilon=1e-6, dtype=dtype)
    conv = partial(Conv, padding=0, impl=impl, dtype=dtype, kernel_init=_INIT)
    features = [serial(("0", conv(setting[0][0], 4, stride=4)), ("1", norm()))]
    total, index = sum(blocks for *_, blocks in setting), 0
    for dim, out, blocks in setting:
        stage = []
        for _ in range(blocks):
            rate = stochastic_depth_prob * index / max(total - 1, 1)
            stage.append(cn_block(dim, rate, layer_scale, impl=impl, dtype=dtype))
            index += 1
        features.append(numbered(stage))
        if out is not None:
            features.append(serial(("0", norm()), ("1", conv(out, 2, stride=2))))
    classifier = [norm(), Flatten(), Dense(num_classes, kernel_init=_INIT, dtype=dtype)]
    return serial(("features", numbered(features)), ("avgpool", GlobalAvgPool(keepdims=True)),
                  ("classifier", numbered(classifier)))


def convnext_tiny(num_classes: int = 1000, *, stochastic_depth_prob: float = 0.1,
                  impl: str = "auto", dtype: Any = None) -> Layer:
    """ConvNeXt-Tiny (``TINY_SETTING``), torchvision's ``convnext_tiny``; 28,589,128 params for
    1000 classes.

    Args:
      num_classes: outputs of the classifier.
      stochastic_depth_prob: the stochastic depth rate of the last block (see ``convnext``).
      impl: the convolution implementation (``"auto"``, ``"lax"``, ``"patches"``).
      dtype: compute dtype of the convolutions, LayerNorms, Linear layers and layer scales.

    Shapes: ``(N, H, W, 3) -> (N, num_classes)``; ``H`` and ``W`` must be at least 32.
    """
    return convnext(TINY_SETTING, num_classes, stochastic_depth_prob=stochastic_depth_prob,
                    impl=impl, dtype=dtype, name="convnext_tiny")
