"""ResNet, Wide ResNet and ResNeXt, with torchvision's layout and parameter names.

The layout is torchvision's "v1.5": a bottleneck block strides on its 3x3
convolution, and a block whose shape changes projects its shortcut with a
strided 1x1 convolution and a BatchNorm. Every convolution is bias-free, every
BatchNorm has PyTorch's semantics (``momentum=0.1``, ``epsilon=1e-5``), and the
padding is explicit, as in PyTorch, so the models compute what torchvision's do
at any input size (channels-last here).

Parameter paths follow torchvision's module names; a block is a
``jaxconv.core.residual`` whose branch is its ``body``, its projection
``downsample`` and its final ReLU ``activation``::

    torchvision                     jaxconv
    conv1.weight                    conv1/kernel
    bn1.running_mean                bn1/mean  (in state)
    layer2.0.conv1.weight           layer2/0/body/conv1/kernel
    layer2.0.downsample.0.weight    layer2/0/downsample/0/kernel
    layer2.0.downsample.1.weight    layer2/0/downsample/1/scale
    fc.weight                       fc/kernel

so ``jaxconv.convert.load_torch_state_dict(model, input_shape, state_dict)``
pairs every layer with its torchvision module by name (a residual's ``body``
key is looked through), from a dict, a ``.pt``/``.pth`` or a ``.safetensors``
file, without a mapping. Initialisation is
torchvision's for the convolutions (normal, variance ``2 / fan_out``) and
BatchNorms (scale 1, bias 0); ``fc`` draws its kernel like ``nn.Linear``
(uniform, variance ``1 / (3 fan_in)``) and starts with a zero bias.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax

from jaxconv import validate
from jaxconv.core import Layer, residual, serial
from jaxconv.layers import BatchNorm, Conv, Dense, GlobalAvgPool, MaxPool, Relu

#: torchvision's ``kaiming_normal_(mode="fan_out", nonlinearity="relu")``.
_CONV_INIT = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")
#: ``nn.Linear``'s kernel initialisation (``kaiming_uniform_(a=sqrt(5))``).
_LINEAR_INIT = jax.nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")

#: A block's output channels per ``planes``.
_EXPANSION = {"basic": 1, "bottleneck": 4}


def _conv(features: int, kernel_size: int, *, stride: int = 1, groups: int = 1,
          impl: str, dtype: Any) -> Layer:
    """A bias-free convolution padded by ``kernel_size // 2`` (torchvision's conv3x3/conv1x1)."""
    return Conv(features, kernel_size, stride=stride, padding=kernel_size // 2, groups=groups,
                use_bias=False, impl=impl, dtype=dtype, kernel_init=_CONV_INIT)


def _block(body: list, shortcut: Layer | None) -> Layer:
    """``relu(body(x) + downsample(x))``; the body's layers are ``(name, layer)`` pairs."""
    return residual(*body, shortcut=None if shortcut is None else ("downsample", shortcut),
                    activation=Relu())


def basic_block(planes: int, stride: int, shortcut: Layer | None, *, impl: str = "auto",
                dtype: Any = None) -> Layer:
    """ResNet-18/34's block: ``conv1 3x3 (stride) - bn1 - relu - conv2 3x3 - bn2``, add, ReLU.

    Args:
      planes: output channels of both convolutions.
      stride: of ``conv1``.
      shortcut: the projection of the input (``downsample``), or ``None`` for
        the identity.
      impl, dtype: as in ``Conv``.

    Shapes: ``(N, H, W, C) -> (N, ceil(H / stride), ceil(W / stride), planes)``.
    """
    conv = partial(_conv, impl=impl, dtype=dtype)
    body = [("conv1", conv(planes, 3, stride=stride)), ("bn1", BatchNorm(dtype=dtype)),
            ("relu1", Relu()),
            ("conv2", conv(planes, 3)), ("bn2", BatchNorm(dtype=dtype))]
    return _block(body, shortcut)


def bottleneck(planes: int, stride: int, shortcut: Layer | None, *, groups: int = 1,
               base_width: int = 64, impl: str = "auto", dtype: Any = None) -> Layer:
    """ResNet-50's block: ``conv1 1x1 - bn1 - relu - conv2 3x3 (stride, groups) - bn2 - relu
    - conv3 1x1 - bn3``, add, ReLU.

    Args:
      planes: the block's output has ``4 * planes`` channels; its inner
        convolutions have ``width = int(planes * base_width / 64) * groups``.
      stride: of ``conv2`` (the 3x3 convolution, torchvision's v1.5).
      shortcut: the projection of the input (``downsample``), or ``None``.
      groups, base_width: ResNeXt's cardinality and Wide ResNet's width per group.
      impl, dtype: as in ``Conv``.

    Shapes: ``(N, H, W, C) -> (N, ceil(H / stride), ceil(W / stride), 4 * planes)``.
    """
    width = int(planes * (base_width / 64.0)) * groups
    conv = partial(_conv, impl=impl, dtype=dtype)
    body = [("conv1", conv(width, 1)), ("bn1", BatchNorm(dtype=dtype)), ("relu1", Relu()),
            ("conv2", conv(width, 3, stride=stride, groups=groups)),
            ("bn2", BatchNorm(dtype=dtype)), ("relu2", Relu()),
            ("conv3", conv(planes * _EXPANSION["bottleneck"], 1)), ("bn3", BatchNorm(dtype=dtype))]
    return _block(body, shortcut)


def downsample(features: int, stride: int, *, impl: str = "auto", dtype: Any = None) -> Layer:
    """The projection shortcut: ``0``: bias-free 1x1 convolution with ``stride``, ``1``: BatchNorm."""
    return serial(("0", _conv(features, 1, stride=stride, impl=impl, dtype=dtype)),
                  ("1", BatchNorm(dtype=dtype)))


def _stage(block: str, inplanes: int, planes: int, blocks: int, stride: int,
           **options: Any) -> Layer:
    """``blocks`` blocks named ``"0"``, ``"1"``...; the first strides and, if needed, projects."""
    make = partial(basic_block, **options) if block == "basic" else partial(bottleneck, **options)
    out = planes * _EXPANSION[block]
    shortcut = None
    if stride != 1 or inplanes != out:
        shortcut = downsample(out, stride, impl=options["impl"], dtype=options["dtype"])
    layers = [("0", make(planes, stride, shortcut))]
    layers += [(str(i), make(planes, 1, None)) for i in range(1, blocks)]
    return serial(*layers)


def resnet(block: str, layers: tuple[int, int, int, int], num_classes: int = 1000, *,
           groups: int = 1, width_per_group: int = 64, impl: str = "auto", dtype: Any = None,
           name: str = "resnet") -> Layer:
    """A torchvision ResNet of any depth (``resnet18``... call this).

    ``conv1 7x7/2 (64) - bn1 - relu - maxpool 3x3/2 - layer1..layer4 - avgpool (global)
    - fc``; ``layer{i}`` has ``layers[i - 1]`` blocks of ``64 * 2**(i - 1)``
    planes, and ``layer2``..``layer4`` halve the resolution.

    Args:
      block: ``"basic"`` (``basic_block``) or ``"bottleneck"``.
      layers: blocks per stage, e.g. ``(3, 4, 6, 3)`` for ResNet-50.
      num_classes: outputs of ``fc``.
      groups, width_per_group: of the bottleneck blocks (``basic`` needs 1 and 64).
      impl: the convolution implementation (``"auto"``, ``"lax"``, ``"patches"``).
      dtype: compute dtype of the convolutions, BatchNorms and ``fc``.
      name: the model's name in error messages.

    Shapes: ``(N, H, W, 3) -> (N, num_classes)``, any ``H, W >= 1``.
    """
    validate.choice(block, "block", tuple(_EXPANSION), context=name)
    validate.integer(num_classes, "num_classes", context=name, minimum=1)
    validate.integer(groups, "groups", context=name, minimum=1)
    validate.integer(width_per_group, "width_per_group", context=name, minimum=1)
    if len(layers) != 4 or not all(validate.is_int(n) and n >= 1 for n in layers):
        raise ValueError(f"{name}: layers must be 4 ints >= 1 (blocks per stage), got {layers!r}")
    if block == "basic" and (groups, width_per_group) != (1, 64):
        raise ValueError(f"{name}: basic blocks need groups=1 and width_per_group=64, got "
                         f"groups={groups}, width_per_group={width_per_group}")
    options = dict(impl=impl, dtype=dtype)
    if block == "bottleneck":
        options.update(groups=groups, base_width=width_per_group)
    stem = [("conv1", _conv(64, 7, stride=2, impl=impl, dtype=dtype)), ("bn1", BatchNorm(dtype=dtype)),
            ("relu", Relu()), ("maxpool", MaxPool(3, stride=2, padding=1))]
    stages, inplanes = [], 64
    for i, blocks in enumerate(layers):
        planes = 64 * 2**i
        stages.append((f"layer{i + 1}", _stage(block, inplanes, planes, blocks,
                                               1 if i == 0 else 2, **options)))
        inplanes = planes * _EXPANSION[block]
    head = [("avgpool", GlobalAvgPool()),
            ("fc", Dense(num_classes, dtype=dtype, kernel_init=_LINEAR_INIT))]
    return serial(*stem, *stages, *head)


def resnet18(num_classes: int = 1000, *, impl: str = "auto", dtype: Any = None) -> Layer:
    """ResNet-18: basic blocks ``(2, 2, 2, 2)``; 11,689,512 params for 1000 classes."""
    return resnet("basic", (2, 2, 2, 2), num_classes, impl=impl, dtype=dtype, name="resnet18")


def resnet34(num_classes: int = 1000, *, impl: str = "auto", dtype: Any = None) -> Layer:
    """ResNet-34: basic blocks ``(3, 4, 6, 3)``; 21,797,672 params for 1000 classes."""
    return resnet("basic", (3, 4, 6, 3), num_classes, impl=impl, dtype=dtype, name="resnet34")


def resnet50(num_classes: int = 1000, *, impl: str = "auto", dtype: Any = None) -> Layer:
    """ResNet-50: bottleneck blocks ``(3, 4, 6, 3)``; 25,557,032 params for 1000 classes."""
    return resnet("bottleneck", (3, 4, 6, 3), num_classes, impl=impl, dtype=dtype,
                  name="resnet50")


def resnet101(num_classes: int = 1000, *, impl: str = "auto", dtype: Any = None) -> Layer:
    """ResNet-101: bottleneck blocks ``(3, 4, 23, 3)``; 44,549,160 params for 1000 classes."""
    return resnet("bottleneck", (3, 4, 23, 3), num_classes, impl=impl, dtype=dtype,
                  name="resnet101")


def wide_resnet50_2(num_classes: int = 1000, *, impl: str = "auto", dtype: Any = None) -> Layer:
    """Wide ResNet-50-2: ResNet-50 with twice as wide bottlenecks (``width_per_group=128``);
    68,883,240 params for 1000 classes."""
    return resnet("bottleneck", (3, 4, 6, 3), num_classes, width_per_group=128, impl=impl,
                  dtype=dtype, name="wide_resnet50_2")


def resnext50_32x4d(num_classes: int = 1000, *, impl: str = "auto", dtype: Any = None) -> Layer:
    """ResNeXt-50 32x4d: ResNet-50 with grouped 3x3 convolutions (32 groups of 4 channels per
    64 planes); 25,028,904 params for 1000 classes."""
    return resnet("bottleneck", (3, 4, 6, 3), num_classes, groups=32, width_per_group=4,
                  impl=impl, dtype=dtype, name="resnext50_32x4d")
