"""Layers: factories returning ``Layer(init, apply)`` pairs."""

from jaxconv.layers.activation import (Elu, Gelu, Hardsigmoid, Hardswish, LeakyRelu, LogSoftmax, Mish,
                                       PRelu, Relu, Relu6, Sigmoid, Silu, Softmax, Softplus, Tanh)
from jaxconv.layers.blocks import LayerScale, SeparableConv, SqueezeExcite
from jaxconv.layers.conv import Conv, ConvTranspose
from jaxconv.layers.dense import Dense
from jaxconv.layers.dropout import DropPath, Dropout
from jaxconv.layers.norm import BatchNorm, GroupNorm, LayerNorm
from jaxconv.layers.pool import (AdaptiveAvgPool, AdaptiveMaxPool, AvgPool, GlobalAvgPool,
                                 GlobalMaxPool, MaxPool, MaxUnpool, MinPool)
from jaxconv.layers.reshape import Flatten, Identity, Lambda, Reshape
from jaxconv.layers.upsample import PixelShuffle, PixelUnshuffle, Upsample

__all__ = [
    "Conv", "ConvTranspose", "Dense", "Flatten", "Reshape", "Identity", "Lambda", "MaxPool", "AvgPool",
    "Relu", "LeakyRelu", "Elu", "Gelu", "Sigmoid", "Tanh", "Softmax", "LogSoftmax",
    "MinPool", "GlobalAvgPool", "GlobalMaxPool", "AdaptiveAvgPool", "AdaptiveMaxPool",
    "BatchNorm", "LayerNorm", "GroupNorm", "Dropout", "Upsample", "PixelShuffle", "PixelUnshuffle",
    "Relu6", "Hardswish", "Hardsigmoid", "Silu", "Mish", "Softplus", "PRelu", "DropPath",
    "SeparableConv", "SqueezeExcite", "LayerScale", "MaxUnpool",
]
