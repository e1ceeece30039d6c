"""Ready-made networks. Each function returns a ``Layer`` (build it with ``init``).

Every model takes ``num_classes``, ``impl`` (the convolution implementation of
its ``Conv`` layers: ``"auto"``, ``"lax"`` or ``"patches"``) and ``dtype``
(the compute dtype of its layers, e.g. ``jnp.bfloat16``; ``None`` computes in
the dtype of the input and params).

- The small networks (``classic``): ``intro_mlp`` and ``intro_cnn`` (the
  introductory networks), ``digits_cnn``, ``lenet5``, ``mnist_cnn``,
  ``resnet9``.
- torchvision's architectures, with its module names and order, so that a
  torchvision ``state_dict`` loads with ``jaxconv.convert.load_torch_state_dict``
  and no mapping: ``resnet18/34/50/101``, ``wide_resnet50_2``,
  ``resnext50_32x4d`` (``resnet``), ``vgg11``, ``vgg16``, ``vgg11_bn``,
  ``vgg16_bn`` (``vgg``), ``mobilenet_v2``, ``mobilenet_v3_small``,
  ``mobilenet_v3_large`` (``mobilenet``), ``efficientnet_b0``
  (``efficientnet``), ``convnext_tiny`` (``convnext``); they work at any input
  size their pooling allows.
- ``unet``: the encoder-decoder with skip concatenations (``(N, H, W, C) ->
  (N, H, W, num_classes)``).

``MODELS`` maps each name to its function, ``INPUT_SHAPES`` gives each
model's natural input ``(H, W, C)``, and ``get_model(name, num_classes)``
builds one by name.
"""

from __future__ import annotations

import warnings
from typing import Any

from jaxconv.core import Layer, serial
from jaxconv.layers import Flatten
from jaxconv.models.classic import digits_cnn, intro_cnn, intro_mlp, lenet5, mnist_cnn, resnet9
from jaxconv.models.convnext import convnext_tiny
from jaxconv.models.efficientnet import efficientnet_b0
from jaxconv.models.mobilenet import mobilenet_v2, mobilenet_v3_large, mobilenet_v3_small
from jaxconv.models.resnet import resnet18, resnet34, resnet50, resnet101, resnext50_32x4d, wide_resnet50_2
from jaxconv.models.unet import unet
from jaxconv.models.vgg import vgg11, vgg11_bn, vgg16, vgg16_bn

MODELS = {
    "intro_mlp": intro_mlp,
    "intro_cnn": intro_cnn,
    "digits_cnn": digits_cnn,
    "lenet5": lenet5,
    "mnist_cnn": mnist_cnn,
    "resnet9": resnet9,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "resnet101": resnet101,
    "wide_resnet50_2": wide_resnet50_2,
    "resnext50_32x4d": resnext50_32x4d,
    "vgg11": vgg11,
    "vgg16": vgg16,
    "vgg11_bn": vgg11_bn,
    "vgg16_bn": vgg16_bn,
    "mobilenet_v2": mobilenet_v2,
    "mobilenet_v3_small": mobilenet_v3_small,
    "mobilenet_v3_large": mobilenet_v3_large,
    "efficientnet_b0": efficientnet_b0,
    "convnext_tiny": convnext_tiny,
    "unet": unet,
}

#: Natural input ``(H, W, C)`` of each model, without the batch dimension.
INPUT_SHAPES = {
    "intro_mlp": (8, 8, 1),
    "intro_cnn": (32, 32, 3),
    "digits_cnn": (8, 8, 1),
    "lenet5": (28, 28, 1),
    "mnist_cnn": (28, 28, 1),
    "resnet9": (32, 32, 3),
    "resnet18": (224, 224, 3),
    "resnet34": (224, 224, 3),
    "resnet50": (224, 224, 3),
    "resnet101": (224, 224, 3),
    "wide_resnet50_2": (224, 224, 3),
    "resnext50_32x4d": (224, 224, 3),
    "vgg11": (224, 224, 3),
    "vgg16": (224, 224, 3),
    "vgg11_bn": (224, 224, 3),
    "vgg16_bn": (224, 224, 3),
    "mobilenet_v2": (224, 224, 3),
    "mobilenet_v3_small": (224, 224, 3),
    "mobilenet_v3_large": (224, 224, 3),
    "efficientnet_b0": (224, 224, 3),
    "convnext_tiny": (224, 224, 3),
    "unet": (256, 256, 3),
}

#: Earlier names of renamed models, still read from saved runs (with a DeprecationWarning).
_RENAMED = {"seed_mlp": "intro_mlp", "seed_cnn": "intro_cnn"}


def get_model(name: str, num_classes: int = 10, **kwargs: Any) -> Layer:
    """Builds a model of ``MODELS`` by name; ``kwargs`` (``impl``, ``dtype``...) are passed on.

    ``intro_mlp`` is wrapped with a leading ``Flatten`` so that it takes images.

    Raises:
      ValueError: an unknown name; the message lists the known ones.
    """
    if name in _RENAMED:
        warnings.warn(f"model {name!r} is now called {_RENAMED[name]!r}", DeprecationWarning,
                      stacklevel=2)
        name = _RENAMED[name]
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(MODELS)}")
    if name == "intro_mlp":
        return serial(Flatten(), intro_mlp(num_outputs=num_classes, **kwargs))
    return MODELS[name](num_classes=num_classes, **kwargs)


__all__ = [
    "MODELS",
    "INPUT_SHAPES",
    "get_model",
    "intro_mlp",
    "intro_cnn",
    "digits_cnn",
    "lenet5",
    "mnist_cnn",
    "resnet9",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "wide_resnet50_2",
    "resnext50_32x4d",
    "vgg11",
    "vgg16",
    "vgg11_bn",
    "vgg16_bn",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "convnext_tiny",
    "unet",
]
