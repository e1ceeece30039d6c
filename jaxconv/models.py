"""Ready-made networks. Each function returns a ``Layer`` (build with ``init``)."""

from __future__ import annotations

from collections.abc import Sequence

from jaxconv.core import Layer, serial
from jaxconv.layers import Conv, Dense, Flatten, MaxPool, Relu, Sigmoid


def seed_mlp(hidden: Sequence[int] = (4, 4), num_outputs: int = 2) -> Layer:
    """The seed text's feed-forward network: two sigmoid hidden layers and an output layer.

    ``(N, F) -> Dense(hidden[0]) -> sigmoid -> Dense(hidden[1]) -> sigmoid -> Dense(num_outputs)``.
    """
    h1, h2 = hidden
    return serial(Dense(h1), Sigmoid(), Dense(h2), Sigmoid(), Dense(num_outputs))


def digits_cnn(num_classes: int = 10) -> Layer:
    """A small CNN for 8x8x1 digits.

    ``Conv 32 3x3 -> ReLU -> Conv 64 3x3 -> ReLU -> MaxPool 2 -> Dense 128 -> ReLU -> Dense``.
    """
    return serial(
        Conv(32, 3), Relu(),
        Conv(64, 3), Relu(), MaxPool(2),
        Flatten(), Dense(128), Relu(),
        Dense(num_classes),
    )


MODELS = {"seed_mlp": seed_mlp, "digits_cnn": digits_cnn}


def get_model(name: str, num_classes: int = 10) -> Layer:
    """Builds a model of ``MODELS`` by name."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(MODELS)}")
    if name == "seed_mlp":
        return serial(Flatten(), seed_mlp(num_outputs=num_classes))
    return MODELS[name](num_classes=num_classes)
