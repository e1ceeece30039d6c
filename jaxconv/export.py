"""Export a trained network for inference outside jaxconv: StableHLO (``jax.export``) and ONNX.

``stablehlo(model, params, state, input_shape, batch="dynamic")`` returns a
``jax.export.Exported``: the model in inference mode (``train=False``:
dropout off, BatchNorm on its running statistics) as a StableHLO module that
takes the images ``(N, *input_shape[1:])`` and returns the logits. The params
and the layer state are baked into the module as constants, so the artefact
is one self-contained file and the caller passes only images; the price is a
new export for new weights. ``save(exported, path)`` writes its serialized
form (atomically) and ``load(path)`` reads it back. Loading and running needs
only JAX, not jaxconv::

    import jax
    exported = jax.export.deserialize(bytearray(open("model.stablehlo", "rb").read()))
    logits = exported.call(images)   # float32 (N, H, W, C)

With ``batch="dynamic"`` the batch size is a symbolic dimension (any ``N >= 1``);
every layer must then work with an unknown batch size, which the ``"lax"``
convolutions do (``jaxconv export`` rebuilds the model with ``impl="lax"``:
the implementation changes no parameter). An int ``batch`` fixes it.

``onnx(...)`` converts the same function to an ONNX model with jax2onnx, an
optional dependency (``pip install 'jaxconv[onnx]'``). jax2onnx traces through
its own versions of NumPy functions, under which an array's shape becomes a
traced value; the model is therefore traced to a jaxpr first (with a symbolic
batch size when ``batch="dynamic"``) and the converter sees only JAX primitives.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp

from jaxconv.checkpoint import write_atomic
from jaxconv.core import Layer, PyTree
from jaxconv.validate import int_tuple, integer

BATCH_DIMENSION = "batch"


def _inference(model: Layer, params: PyTree, state: PyTree):
    """``images -> logits`` of the model in inference mode, with params and state as constants."""
    params, state = jax.device_put((params, state))

    def logits(images):
        return model.apply(params, state, images, train=False)[0]

    return logits


def _example_shape(input_shape: Any, batch: int | str, context: str) -> tuple[Any, ...]:
    """``(batch, *input_shape[1:])`` with a symbolic batch for ``"dynamic"``, checked."""
    shape = int_tuple(input_shape, "input_shape", context=context, minimum=-1)
    if len(shape) < 2:
        raise ValueError(f"{context}: input_shape must include the batch dimension and at least one more, "
                         f"such as (-1, 28, 28, 1); got {shape}")
    if any(d < 1 for d in shape[1:]):
        raise ValueError(f"{context}: input_shape must be >= 1 beyond the batch dimension, got {shape}")
    if batch == "dynamic":
        return (*jax.export.symbolic_shape(BATCH_DIMENSION), *shape[1:])
    if isinstance(batch, str):
        raise ValueError(f"{context}: batch must be 'dynamic' or an int >= 1, got {batch!r}")
    return (integer(batch, "batch", context=context, minimum=1), *shape[1:])


def stablehlo(model: Layer, params: PyTree, state: PyTree, input_shape: Any, *,
              batch: int | str = "dynamic", platforms: Any = ("cpu",), dtype: Any = jnp.float32
              ) -> jax.export.Exported:
    """The model in inference mode as a ``jax.export.Exported`` (StableHLO), weights baked in.

    Args:
      model, params, state: the network and its weights (use a train state's
        ``eval_params``: the EMA params when the run kept one).
      input_shape: the model's input shape with its batch dimension (``-1`` or
        any size: ``batch`` replaces it), e.g. ``(-1, 8, 8, 1)``.
      batch: ``"dynamic"`` (any batch size) or a fixed int.
      platforms: the platforms the module is lowered for (``"cpu"``, ``"cuda"``,
        ``"rocm"``, ``"tpu"``); it runs on any of them.
      dtype: the dtype of the images it takes.

    Returns:
      An ``Exported`` whose ``call(images)`` returns the logits.

    Raises:
      ValueError: a bad ``input_shape``, ``batch`` or ``platforms``.
    """
    context = "export.stablehlo"
    example = jax.ShapeDtypeStruct(_example_shape(input_shape, batch, context), dtype)
    if isinstance(platforms, str) or not platforms or not all(isinstance(p, str) for p in platforms):
        raise ValueError(f"{context}: platforms must be a non-empty sequence of names such as ('cpu', 'cuda'), "
                         f"got {platforms!r}")
    return jax.export.export(jax.jit(_inference(model, params, state)), platforms=tuple(platforms))(example)


def save(exported: jax.export.Exported, path: str | os.PathLike) -> None:
    """Writes ``exported`` serialized (``Exported.serialize``) to ``path``, atomically."""
    if not isinstance(exported, jax.export.Exported):
        raise TypeError(f"export.save: expected a jax.export.Exported, got {type(exported).__name__}")
    write_atomic(os.fspath(path), bytes(exported.serialize()))


def load(path: str | os.PathLike) -> jax.export.Exported:
    """Reads an ``Exported`` written by ``save`` (``jax.export.deserialize``)."""
    with open(os.fspath(path), "rb") as f:
        return jax.export.deserialize(bytearray(f.read()))


def onnx(model: Layer, params: PyTree, state: PyTree, input_shape: Any, *, batch: int | str = "dynamic") -> Any:
    """The model in inference mode as an ONNX ``ModelProto`` (jax2onnx), weights as initializers.

    Arguments as for ``stablehlo``; the input is float32 and the batch
    dimension of a dynamic export is named ``"B"`` in the ONNX graph. Write it
    with ``save_onnx``. jax2onnx cannot yet convert a ``pad`` of an array with
    a dynamic batch, which padded max pools (ResNet's stem) and the patches
    path use: export such models with an int ``batch``.

    Raises:
      ImportError: jax2onnx is not installed (``pip install 'jaxconv[onnx]'``).
    """
    try:
        import jax2onnx  # an optional dependency, needed here only
    except ImportError:
        raise ImportError("export.onnx needs jax2onnx: pip install 'jaxconv[onnx]'") from None
    shape = _example_shape(input_shape, batch, "export.onnx")
    closed = jax.make_jaxpr(_inference(model, params, state))(jax.ShapeDtypeStruct(shape, jnp.float32))
    function = jax.extend.core.jaxpr_as_fun(closed)
    spec = ("B" if batch == "dynamic" else shape[0], *shape[1:])
    return jax2onnx.to_onnx(lambda images: function(images)[0], [spec], model_name="jaxconv")


def save_onnx(model_proto: Any, path: str | os.PathLike) -> None:
    """Writes an ONNX ``ModelProto`` to ``path``, atomically."""
    if not hasattr(model_proto, "SerializeToString"):
        raise TypeError(f"export.save_onnx: expected an ONNX ModelProto, got {type(model_proto).__name__}")
    write_atomic(os.fspath(path), model_proto.SerializeToString())
