"""jaxconv: a functional convolutional-network library for JAX.

Layers are pure ``(init, apply)`` pairs over parameter pytrees::

    import jaxconv as jc
    model = jc.serial(jc.Conv(16, 3), jc.Relu(), jc.MaxPool(2), jc.Flatten(), jc.Dense(10))
    out_shape, params, state = model.init(key, (-1, 28, 28, 1))
    logits, state = model.apply(params, state, images)
"""

import importlib

from jaxconv import ops
from jaxconv.core import (Layer, count_params, fan_in_concat, fan_in_sum, fan_out, parallel,
                          residual, serial)
from jaxconv import models, runtime
from jaxconv.data import load_dataset
from jaxconv.layers import *  # noqa: F401,F403
from jaxconv.layers import __all__ as _layers_all
from jaxconv.summary import summary
from jaxconv.losses import accuracy, cross_entropy, square_loss
from jaxconv.train import TrainState, create_train_state, evaluate, fit, make_train_step

# ``jc.parallel`` names both the combinator and the scale-out module: the module is
# callable as the combinator (see jaxconv/parallel.py), so bind the module here.
parallel = importlib.import_module("jaxconv.parallel")  # noqa: F811

__version__ = "0.1.0"

__all__ = [
    "Layer", "serial", "parallel", "fan_out", "fan_in_sum", "fan_in_concat", "residual",
    "count_params", "ops", "models", "runtime", "load_dataset", "cross_entropy", "square_loss",
    "accuracy",
    "TrainState", "create_train_state", "make_train_step", "evaluate", "fit", "summary",
    *_layers_all,
]
