"""The small networks: the introductory MLP and ConvNet, the digits and MNIST CNNs, LeNet-5, ResNet-9."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jaxconv.core import Layer, residual, serial
from jaxconv.layers import (
    AvgPool,
    BatchNorm,
    Conv,
    Dense,
    Dropout,
    Flatten,
    GlobalMaxPool,
    Lambda,
    MaxPool,
    Relu,
    Sigmoid,
    Tanh,
)


def intro_mlp(hidden: Sequence[int] = (4, 4), num_outputs: int = 2, *, impl: str = "auto",
             dtype: Any = None) -> Layer:
    """The introductory feed-forward network: two sigmoid hidden layers and an output layer.

    ``(N, F) -> Dense(hidden[0]) -> sigmoid -> Dense(hidden[1]) -> sigmoid -> Dense(num_outputs)``.
    ``impl`` is accepted for a uniform signature (there is no convolution).
    """
    h1, h2 = hidden
    return serial(Dense(h1, dtype=dtype), Sigmoid(), Dense(h2, dtype=dtype), Sigmoid(),
                  Dense(num_outputs, dtype=dtype))


def intro_cnn(num_classes: int = 10, *, kernel_size: int = 3, impl: str = "auto",
             dtype: Any = None) -> Layer:
    """The introductory ConvNet on 32x32x3 images.

    ``32x32x3 -> Conv 12 filters (3x3, SAME) -> 32x32x12 -> ReLU -> 2x2 max pool, stride 2
    -> 16x16x12 -> Flatten (3072) -> Dense(num_classes)`` (the class scores).
    """
    return serial(
        Conv(12, kernel_size, padding="SAME", impl=impl, dtype=dtype), Relu(),
        MaxPool(2),
        Flatten(), Dense(num_classes, dtype=dtype),
    )


def lenet5(num_classes: int = 10, *, impl: str = "auto", dtype: Any = None) -> Layer:
    """LeNet-5 (LeCun et al., 1998) with tanh and average pooling.

    On 28x28x1 (MNIST; the first convolution pads by 2, which equals the
    original 32x32 input): ``Conv 6 5x5 pad 2 -> 28x28x6 -> tanh -> avg pool 2 -> 14x14x6
    -> Conv 16 5x5 -> 10x10x16 -> tanh -> avg pool 2 -> 5x5x16 -> Dense 120 -> tanh
    -> Dense 84 -> tanh -> Dense(num_classes)``; 61,706 params for 10 classes.
    """
    return serial(
        Conv(6, 5, padding=2, impl=impl, dtype=dtype), Tanh(), AvgPool(2),
        Conv(16, 5, padding="VALID", impl=impl, dtype=dtype), Tanh(), AvgPool(2),
        Flatten(),
        Dense(120, dtype=dtype), Tanh(),
        Dense(84, dtype=dtype), Tanh(),
        Dense(num_classes, dtype=dtype),
    )


def mnist_cnn(num_classes: int = 10, *, impl: str = "auto", dtype: Any = None) -> Layer:
    """The classic Keras/PyTorch MNIST example network on 28x28x1.

    ``Conv 32 3x3 VALID -> ReLU -> Conv 64 3x3 VALID -> ReLU -> 2x2 max pool -> 12x12x64
    -> Dropout 0.25 -> Flatten (9216) -> Dense 128 -> ReLU -> Dropout 0.5 -> Dense(num_classes)``;
    1,199,882 params for 10 classes, as ``pytorch/examples/mnist``.
    """
    return serial(
        Conv(32, 3, padding="VALID", impl=impl, dtype=dtype), Relu(),
        Conv(64, 3, padding="VALID", impl=impl, dtype=dtype), Relu(),
        MaxPool(2), Dropout(0.25),
        Flatten(), Dense(128, dtype=dtype), Relu(), Dropout(0.5),
        Dense(num_classes, dtype=dtype),
    )


def digits_cnn(num_classes: int = 10, *, impl: str = "auto", dtype: Any = None) -> Layer:
    """A small CNN for 8x8x1 digits.

    ``Conv 32 3x3 -> ReLU -> Conv 64 3x3 -> ReLU -> MaxPool 2 -> Dense 128 -> ReLU -> Dense``.
    """
    return serial(
        Conv(32, 3, impl=impl, dtype=dtype), Relu(),
        Conv(64, 3, impl=impl, dtype=dtype), Relu(), MaxPool(2),
        Flatten(), Dense(128, dtype=dtype), Relu(),
        Dense(num_classes, dtype=dtype),
    )


def conv_bn_relu(features: int, *, impl: str = "auto", dtype: Any = None) -> Layer:
    """``Conv 3x3 SAME (no bias) -> BatchNorm -> ReLU``, the block of ResNet-9."""
    return serial(
        ("conv", Conv(features, 3, padding="SAME", use_bias=False, impl=impl, dtype=dtype)),
        ("bn", BatchNorm(dtype=dtype)),
        ("relu", Relu()),
    )


def resnet9(num_classes: int = 10, *, width: int = 64, output_scale: float = 0.125,
            impl: str = "auto", dtype: Any = None) -> Layer:
    """The DAWNBench ResNet-9 (Myrtle.ai, D. Page) for 32x32x3 CIFAR-10 images.

    ``prep: block(w) -> layer1: block(2w), max pool 2, residual(block(2w), block(2w))
    -> layer2: block(4w), max pool 2 -> layer3: block(8w), max pool 2,
    residual(block(8w), block(8w)) -> global max pool -> Dense(num_classes, no bias)
    -> * output_scale``, where ``block`` is ``conv_bn_relu`` (3x3 conv without bias,
    BatchNorm, ReLU). With ``width=64``: 64-128-256-512 channels, 6,573,120 params.
    """
    def block(f):
        return conv_bn_relu(f, impl=impl, dtype=dtype)

    layers = [
        ("prep", block(width)),
        ("layer1", serial(("block", block(2 * width)), ("pool", MaxPool(2)),
                          ("res", residual(("block0", block(2 * width)),
                                           ("block1", block(2 * width)))))),
        ("layer2", serial(("block", block(4 * width)), ("pool", MaxPool(2)))),
        ("layer3", serial(("block", block(8 * width)), ("pool", MaxPool(2)),
                          ("res", residual(("block0", block(8 * width)),
                                           ("block1", block(8 * width)))))),
        ("pool", GlobalMaxPool()),
        ("classifier", Dense(num_classes, use_bias=False, dtype=dtype)),
    ]
    if output_scale != 1:
        layers.append(("scale", Lambda(lambda x: x * output_scale, kind="scale")))
    return serial(*layers)

