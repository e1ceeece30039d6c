"""Layers: factories returning ``Layer(init, apply)`` pairs."""

from jaxconv.layers.activation import (Elu, Gelu, LeakyRelu, LogSoftmax, Relu, Sigmoid,
                                       Softmax, Tanh)
from jaxconv.layers.conv import Conv, ConvTranspose
from jaxconv.layers.dense import Dense
from jaxconv.layers.dropout import Dropout
from jaxconv.layers.norm import BatchNorm, GroupNorm, LayerNorm
from jaxconv.layers.pool import (AdaptiveAvgPool, AdaptiveMaxPool, AvgPool, GlobalAvgPool,
                                 GlobalMaxPool, MaxPool, MinPool)
from jaxconv.layers.reshape import Flatten, Identity, Lambda, Reshape

__all__ = [
    "Conv", "ConvTranspose", "Dense", "Flatten", "Reshape", "Identity", "Lambda", "MaxPool", "AvgPool",
    "Relu", "LeakyRelu", "Elu", "Gelu", "Sigmoid", "Tanh", "Softmax", "LogSoftmax",
    "MinPool", "GlobalAvgPool", "GlobalMaxPool", "AdaptiveAvgPool", "AdaptiveMaxPool",
    "BatchNorm", "LayerNorm", "GroupNorm", "Dropout",
]
