"""Layers: factories returning ``Layer(init, apply)`` pairs."""

from jaxconv.layers.activation import Elu as Elu
from jaxconv.layers.activation import Gelu as Gelu
from jaxconv.layers.activation import Hardsigmoid as Hardsigmoid
from jaxconv.layers.activation import Hardswish as Hardswish
from jaxconv.layers.activation import LeakyRelu as LeakyRelu
from jaxconv.layers.activation import LogSoftmax as LogSoftmax
from jaxconv.layers.activation import Mish as Mish
from jaxconv.layers.activation import PRelu as PRelu
from jaxconv.layers.activation import Relu as Relu
from jaxconv.layers.activation import Relu6 as Relu6
from jaxconv.layers.activation import Sigmoid as Sigmoid
from jaxconv.layers.activation import Silu as Silu
from jaxconv.layers.activation import Softmax as Softmax
from jaxconv.layers.activation import Softplus as Softplus
from jaxconv.layers.activation import Tanh as Tanh
from jaxconv.layers.blocks import LayerScale as LayerScale
from jaxconv.layers.blocks import SeparableConv as SeparableConv
from jaxconv.layers.blocks import SqueezeExcite as SqueezeExcite
from jaxconv.layers.conv import Conv as Conv
from jaxconv.layers.conv import ConvTranspose as ConvTranspose
from jaxconv.layers.conv import StdConv as StdConv
from jaxconv.layers.dense import Dense as Dense
from jaxconv.layers.dropout import Dropout as Dropout
from jaxconv.layers.dropout import DropPath as DropPath
from jaxconv.layers.norm import BatchNorm as BatchNorm
from jaxconv.layers.norm import GroupNorm as GroupNorm
from jaxconv.layers.norm import InstanceNorm as InstanceNorm
from jaxconv.layers.norm import LayerNorm as LayerNorm
from jaxconv.layers.pool import AdaptiveAvgPool as AdaptiveAvgPool
from jaxconv.layers.pool import AdaptiveMaxPool as AdaptiveMaxPool
from jaxconv.layers.pool import AvgPool as AvgPool
from jaxconv.layers.pool import GlobalAvgPool as GlobalAvgPool
from jaxconv.layers.pool import GlobalMaxPool as GlobalMaxPool
from jaxconv.layers.pool import MaxPool as MaxPool
from jaxconv.layers.pool import MaxUnpool as MaxUnpool
from jaxconv.layers.pool import MinPool as MinPool
from jaxconv.layers.reparam import SpectralNorm as SpectralNorm
from jaxconv.layers.reparam import WeightNorm as WeightNorm
from jaxconv.layers.reshape import Flatten as Flatten
from jaxconv.layers.reshape import Identity as Identity
from jaxconv.layers.reshape import Lambda as Lambda
from jaxconv.layers.reshape import Reshape as Reshape
from jaxconv.layers.upsample import PixelShuffle as PixelShuffle
from jaxconv.layers.upsample import PixelUnshuffle as PixelUnshuffle
from jaxconv.layers.upsample import Upsample as Upsample

__all__ = (
    "AdaptiveAvgPool",
    "AdaptiveMaxPool",
    "AvgPool",
    "BatchNorm",
    "Conv",
    "ConvTranspose",
    "Dense",
    "Dropout",
    "DropPath",
    "Elu",
    "Flatten",
    "Gelu",
    "GlobalAvgPool",
    "GlobalMaxPool",
    "GroupNorm",
    "Hardsigmoid",
    "Hardswish",
    "Identity",
    "InstanceNorm",
    "Lambda",
    "LayerNorm",
    "LayerScale",
    "LeakyRelu",
    "LogSoftmax",
    "MaxPool",
    "MaxUnpool",
    "MinPool",
    "Mish",
    "PixelShuffle",
    "PixelUnshuffle",
    "PRelu",
    "Relu",
    "Relu6",
    "Reshape",
    "SeparableConv",
    "Sigmoid",
    "Silu",
    "Softmax",
    "Softplus",
    "SpectralNorm",
    "SqueezeExcite",
    "StdConv",
    "Tanh",
    "Upsample",
    "WeightNorm",
)
