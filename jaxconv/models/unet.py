"""U-Net (Ronneberger et al., 2015): an encoder-decoder with skip concatenations, channels-last.

With ``c_d = width * 2**d``, the network is ::

    stem:   double_conv(c_0)                                   (H, W, c_0)
    level d = 1..depth, recursively:
        fork into  skip: identity
                   down: pool 2x2 - encoder: double_conv(c_d)
                         - level d + 1 (if d < depth) - up: c_d -> c_(d-1), twice the size
        concat [skip, up]  (channels)                          (.., 2 c_(d-1))
        decoder: double_conv(c_(d-1))                           (.., c_(d-1))
    head:   1x1 convolution to num_classes (with bias)         (H, W, num_classes)

where ``double_conv(c)`` is ``conv1 3x3 - bn1 - relu1 - conv2 3x3 - bn2 - relu2``
(bias-free convolutions padded by 1, PyTorch-semantics BatchNorm), and ``up``
is a ``ConvTranspose`` 2x2 with stride 2 (``up="transpose"``) or a nearest
2x upsampling followed by a 3x3 convolution padded by 1 (``up="upsample"``),
both with bias. The parameter paths read ``stem/conv1/kernel``,
``level1/branches/down/encoder/bn1/scale``, ``level1/branches/down/level2/...``,
``level1/branches/down/up/kernel``, ``level1/decoder/conv2/kernel``,
``head/kernel``. The weights that carry parameters come in the order stem,
encoder 1..depth, then (up, decoder) from the bottom level to the top, then
head, so a PyTorch U-Net whose modules are registered in that order loads with
``jaxconv.convert.load_torch_state_dict`` without a mapping.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from jaxconv import validate
from jaxconv.core import Layer, fan_in_concat, fan_out, normalize_shape, parallel, serial
from jaxconv.layers import BatchNorm, Conv, ConvTranspose, Identity, MaxPool, Relu, Upsample

#: The ways ``unet`` can double the resolution in its decoder.
UPSAMPLERS = ("transpose", "upsample")


def double_conv(features: int, *, impl: str = "auto", dtype: Any = None) -> Layer:
    """U-Net's block: ``conv1 3x3 - bn1 - relu1 - conv2 3x3 - bn2 - relu2``, ``features`` each.

    Shapes: ``(N, H, W, C) -> (N, H, W, features)``; bias-free convolutions padded by 1.
    """
    layers = []
    for i in (1, 2):
        layers += [(f"conv{i}", Conv(features, 3, padding=1, use_bias=False, impl=impl,
                                     dtype=dtype)),
                   (f"bn{i}", BatchNorm(dtype=dtype)), (f"relu{i}", Relu())]
    return serial(*layers)


def upsampler(features: int, up: str = "transpose", *, impl: str = "auto",
              dtype: Any = None) -> Layer:
    """Doubles the resolution: ``(N, H, W, C) -> (N, 2H, 2W, features)``.

    ``up="transpose"``: ``ConvTranspose(features, 2, stride=2)`` (PyTorch's
    ``ConvTranspose2d(C, features, 2, stride=2)``); ``up="upsample"``:
    ``serial(upsample: nearest 2x, conv: Conv(features, 3, padding=1))``
    (``nn.Upsample(scale_factor=2)`` then ``Conv2d(C, features, 3, padding=1)``).
    """
    validate.choice(up, "up", UPSAMPLERS, context="upsampler")
    if up == "transpose":
        return ConvTranspose(features, 2, stride=2, padding=0, impl=impl, dtype=dtype)
    return serial(("upsample", Upsample(scale_factor=2, method="nearest")),
                  ("conv", Conv(features, 3, padding=1, impl=impl, dtype=dtype)))


def _level(d: int, depth: int, width: int, up: str, impl: str, dtype: Any) -> Layer:
    """Level ``d`` of the U: ``(N, H, W, c_(d-1)) -> (N, H, W, c_(d-1))``."""
    down = [("pool", MaxPool(2)), ("encoder", double_conv(width * 2**d, impl=impl, dtype=dtype))]
    if d < depth:
        down.append((f"level{d + 1}", _level(d + 1, depth, width, up, impl, dtype)))
    down.append(("up", upsampler(width * 2**(d - 1), up, impl=impl, dtype=dtype)))
    return serial(("fork", fan_out(2)),
                  ("branches", parallel(("skip", Identity()), ("down", serial(*down)))),
                  ("concat", fan_in_concat()),
                  ("decoder", double_conv(width * 2**(d - 1), impl=impl, dtype=dtype)))


def _input_check(depth: int, in_channels: int | None) -> Layer:
    """An identity layer that rejects inputs the U cannot take, at ``init`` and at ``apply``."""
    factor = 2**depth

    def check(input_shape):
        shape = normalize_shape(input_shape, "unet")
        if len(shape) != 4:
            raise ValueError(f"unet: expected input of rank 4 (N, H, W, C), got shape {shape}")
        if shape[1] % factor or shape[2] % factor:
            raise ValueError(f"unet: input height and width must be divisible by 2**depth = "
                             f"{factor} (depth={depth}), got shape {shape}")
        if in_channels is not None and shape[3] != in_channels:
            raise ValueError(f"unet: expected input with in_channels={in_channels} channels, "
                             f"got shape {shape}")
        return shape

    def init(key, input_shape):
        return check(input_shape), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        check(tuple(jnp.shape(x)))
        return x, state

    return Layer(init, apply, "input_check")


def unet(num_classes: int, *, in_channels: int | None = None, depth: int = 4, width: int = 64,
         up: str = "transpose", impl: str = "auto", dtype: Any = None) -> Layer:
    """U-Net for per-pixel classification (segmentation).

    Args:
      num_classes: output channels (per-pixel class scores).
      in_channels: when given, the input must have this many channels (checked
        at ``init``); otherwise any.
      depth: number of 2x2 max pools (and of upsamplings).
      width: channels of the first level; level ``d`` has ``width * 2**d``
        (64 and depth 4: 64, 128, 256, 512, 1024).
      up: ``"transpose"`` (2x2 transposed convolution, stride 2) or
        ``"upsample"`` (nearest 2x upsampling, then a 3x3 convolution).
      impl: the convolution implementation (``"auto"``, ``"lax"``, ``"patches"``).
      dtype: compute dtype of the convolutions and BatchNorms.

    Shapes: ``(N, H, W, C) -> (N, H, W, num_classes)``; ``H`` and ``W`` must be
    divisible by ``2**depth`` (a ``ValueError`` at ``init`` and ``apply`` otherwise).
    """
    validate.integer(num_classes, "num_classes", context="unet", minimum=1)
    if in_channels is not None:
        validate.integer(in_channels, "in_channels", context="unet", minimum=1)
    validate.integer(depth, "depth", context="unet", minimum=1)
    validate.integer(width, "width", context="unet", minimum=1)
    validate.choice(up, "up", UPSAMPLERS, context="unet")
    return serial(("input", _input_check(depth, in_channels)),
                  ("stem", double_conv(width, impl=impl, dtype=dtype)),
                  ("level1", _level(1, depth, width, up, impl, dtype)),
                  ("head", Conv(num_classes, 1, padding=0, impl=impl, dtype=dtype)))
