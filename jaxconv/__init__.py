"""jaxconv: a functional convolutional-network library for JAX.

Layers are pure ``(init, apply)`` pairs over parameter pytrees::

    import jaxconv as jc
    model = jc.serial(jc.Conv(16, 3), jc.Relu(), jc.MaxPool(2), jc.Flatten(), jc.Dense(10))
    out_shape, params, state = model.init(key, (-1, 28, 28, 1))
    logits, state = model.apply(params, state, images)
"""

from jaxconv import augment as augment
from jaxconv import callbacks as callbacks
from jaxconv import checkpoint as checkpoint
from jaxconv import convert as convert
from jaxconv import data as data
from jaxconv import distributed as distributed
from jaxconv import export as export
from jaxconv import layers as layers
from jaxconv import losses as losses
from jaxconv import models as models
from jaxconv import ops as ops
from jaxconv import precision as precision
from jaxconv import runtime as runtime
from jaxconv import structure as structure
from jaxconv import train as train
from jaxconv.core import Layer as Layer
from jaxconv.core import count_params as count_params
from jaxconv.core import fan_in_concat as fan_in_concat
from jaxconv.core import fan_in_sum as fan_in_sum
from jaxconv.core import fan_out as fan_out
from jaxconv.core import parallel as parallel
from jaxconv.core import residual as residual
from jaxconv.core import serial as serial
from jaxconv.data import load_dataset as load_dataset
from jaxconv.layers import AdaptiveAvgPool as AdaptiveAvgPool
from jaxconv.layers import AdaptiveMaxPool as AdaptiveMaxPool
from jaxconv.layers import AvgPool as AvgPool
from jaxconv.layers import BatchNorm as BatchNorm
from jaxconv.layers import Conv as Conv
from jaxconv.layers import ConvTranspose as ConvTranspose
from jaxconv.layers import Dense as Dense
from jaxconv.layers import Dropout as Dropout
from jaxconv.layers import DropPath as DropPath
from jaxconv.layers import Elu as Elu
from jaxconv.layers import Flatten as Flatten
from jaxconv.layers import Gelu as Gelu
from jaxconv.layers import GlobalAvgPool as GlobalAvgPool
from jaxconv.layers import GlobalMaxPool as GlobalMaxPool
from jaxconv.layers import GroupNorm as GroupNorm
from jaxconv.layers import Hardsigmoid as Hardsigmoid
from jaxconv.layers import Hardswish as Hardswish
from jaxconv.layers import Identity as Identity
from jaxconv.layers import InstanceNorm as InstanceNorm
from jaxconv.layers import Lambda as Lambda
from jaxconv.layers import LayerNorm as LayerNorm
from jaxconv.layers import LayerScale as LayerScale
from jaxconv.layers import LeakyRelu as LeakyRelu
from jaxconv.layers import LogSoftmax as LogSoftmax
from jaxconv.layers import MaxPool as MaxPool
from jaxconv.layers import MaxUnpool as MaxUnpool
from jaxconv.layers import MinPool as MinPool
from jaxconv.layers import Mish as Mish
from jaxconv.layers import PixelShuffle as PixelShuffle
from jaxconv.layers import PixelUnshuffle as PixelUnshuffle
from jaxconv.layers import PRelu as PRelu
from jaxconv.layers import Relu as Relu
from jaxconv.layers import Relu6 as Relu6
from jaxconv.layers import Reshape as Reshape
from jaxconv.layers import SeparableConv as SeparableConv
from jaxconv.layers import Sigmoid as Sigmoid
from jaxconv.layers import Silu as Silu
from jaxconv.layers import Softmax as Softmax
from jaxconv.layers import Softplus as Softplus
from jaxconv.layers import SpectralNorm as SpectralNorm
from jaxconv.layers import SqueezeExcite as SqueezeExcite
from jaxconv.layers import StdConv as StdConv
from jaxconv.layers import Tanh as Tanh
from jaxconv.layers import Upsample as Upsample
from jaxconv.layers import WeightNorm as WeightNorm
from jaxconv.losses import accuracy as accuracy
from jaxconv.losses import cross_entropy as cross_entropy
from jaxconv.losses import square_loss as square_loss
from jaxconv.structure import feature_extractor as feature_extractor
from jaxconv.structure import intermediates as intermediates
from jaxconv.structure import summary as summary
from jaxconv.train import TrainState as TrainState
from jaxconv.train import create_train_state as create_train_state
from jaxconv.train import evaluate as evaluate
from jaxconv.train import fit as fit
from jaxconv.train import make_train_step as make_train_step
from jaxconv.version import __version__ as __version__

__all__ = (
    # modules
    "augment",
    "callbacks",
    "checkpoint",
    "convert",
    "data",
    "distributed",
    "export",
    "layers",
    "losses",
    "models",
    "ops",
    "precision",
    "runtime",
    "structure",
    "train",
    # the layer contract and combinators
    "Layer",
    "count_params",
    "fan_in_concat",
    "fan_in_sum",
    "fan_out",
    "parallel",
    "residual",
    "serial",
    # layers
    "AdaptiveAvgPool",
    "AdaptiveMaxPool",
    "AvgPool",
    "BatchNorm",
    "Conv",
    "ConvTranspose",
    "Dense",
    "DropPath",
    "Dropout",
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
    "PRelu",
    "PixelShuffle",
    "PixelUnshuffle",
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
    # losses and metrics
    "accuracy",
    "cross_entropy",
    "square_loss",
    # data, training, inspection
    "load_dataset",
    "TrainState",
    "create_train_state",
    "evaluate",
    "fit",
    "make_train_step",
    "feature_extractor",
    "intermediates",
    "summary",
)
