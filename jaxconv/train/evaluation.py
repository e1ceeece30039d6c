"""Evaluation in inference mode: a compiled eval step, whole-split metrics and predictions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxconv.core import Layer, PyTree
from jaxconv.data import Split
from jaxconv.distributed import batch_sharding, check_mesh, data_size, replicated_sharding, shard_batch
from jaxconv.losses import cross_entropy
from jaxconv.precision import Policy, for_compute, get_policy, output_for_loss
from jaxconv.train.inputs import check_labels, check_split, output_shape
from jaxconv.train.step import LossFn
from jaxconv.validate import integer


def make_eval_step(model: Layer, loss_fn: LossFn = cross_entropy, *, mesh: Mesh | None = None,
                   policy: str | Policy | None = None) -> Callable:
    """A jitted ``(params, state, images, labels, mask) -> (loss_sum, correct_sum)``.

    Sums over the examples whose ``mask`` is 1. With a ``mesh``, params/state
    are replicated and the batch is sharded on ``"data"``. With a precision
    ``policy`` the model runs in its compute dtype and the loss in float32.
    """
    policy = get_policy(policy, context="make_eval_step")

    def eval_step(params, state, images, labels, mask):
        params, images = for_compute(policy, params, images)
        logits, _ = model.apply(params, state, images, train=False)
        logits = output_for_loss(policy, logits)
        per_example = jax.vmap(lambda lg, lb: loss_fn(lg[None], lb[None]))(logits, labels)
        correct = jnp.argmax(logits, -1) == labels
        return jnp.sum(per_example * mask), jnp.sum(correct * mask)

    if mesh is None:
        return jax.jit(eval_step)
    replicated = replicated_sharding(check_mesh(mesh, context="make_eval_step"))
    sharded = batch_sharding(mesh)
    return jax.jit(eval_step, in_shardings=(replicated, replicated, sharded, sharded, sharded),
                   out_shardings=replicated)


def _padded(array: np.ndarray, size: int) -> np.ndarray:
    """``array`` with zero rows appended up to ``size`` rows."""
    if len(array) == size:
        return array
    return np.concatenate([array, np.zeros((size - len(array),) + array.shape[1:], array.dtype)])


def predict(model: Layer, params: PyTree, state: PyTree, images: Any, *, batch_size: int = 512) -> np.ndarray:
    """Arg-max class of every image, in inference mode: int ``(N,)``.

    Batches are padded to ``batch_size`` so one compiled function serves all.
    """
    integer(batch_size, "batch_size", context="predict", minimum=1)
    apply = jax.jit(lambda p, s, x: jnp.argmax(model.apply(p, s, x, train=False)[0], -1))
    images = np.asarray(images)
    n = len(images)
    batch_size = max(1, min(batch_size, n))
    out = []
    for start in range(0, n, batch_size):
        xb = images[start:start + batch_size]
        out.append(np.asarray(apply(params, state, _padded(xb, batch_size)))[:len(xb)])
    return np.concatenate(out) if out else np.zeros((0,), np.int32)


def evaluate_batches(eval_step: Callable, params: PyTree, state: PyTree, images: Any, labels: Any, *,
                     batch_size: int, mesh: Mesh | None = None) -> dict[str, float]:
    """``evaluate`` without its input checks: mean loss and accuracy of a checked, non-empty split.

    The last batch is padded to ``batch_size`` and masked. With a ``mesh``
    ``batch_size`` is rounded up to a multiple of its ``"data"`` axis.
    """
    n = len(labels)
    batch_size = min(batch_size, n)
    if mesh is not None:
        shards = data_size(mesh)
        batch_size = -(-batch_size // shards) * shards
    loss_sum, correct_sum = 0.0, 0.0
    for start in range(0, n, batch_size):
        xb, yb = np.asarray(images[start:start + batch_size]), np.asarray(labels[start:start + batch_size])
        mask = _padded(np.ones(len(yb), np.float32), batch_size)
        batch = (_padded(xb, batch_size), _padded(yb, batch_size), mask)
        if mesh is not None:
            batch = shard_batch(batch, mesh)
        loss, correct = eval_step(params, state, *batch)
        loss_sum += float(loss)
        correct_sum += float(correct)
    return {"loss": loss_sum / n, "accuracy": correct_sum / n}


def evaluate(
    model: Layer,
    params: PyTree,
    state: PyTree,
    data: Split | tuple[Any, Any],
    *,
    batch_size: int = 512,
    loss_fn: LossFn = cross_entropy,
    eval_step: Callable | None = None,
    mesh: Mesh | None = None,
    policy: str | Policy | None = None,
) -> dict[str, float]:
    """Mean loss and accuracy over a whole split, in inference mode.

    ``policy``: run the model in a precision policy's compute dtype (``jaxconv.precision``).

    The last batch is padded to ``batch_size`` (and masked), so every call
    reuses one compiled function. With a ``mesh`` the batches are sharded over
    its ``"data"`` axis (``batch_size`` is rounded up to a multiple of its size)
    and ``params``/``state`` should be replicated on it (``distributed.replicate``).

    Raises:
      ValueError: the split is empty, its images and labels differ in number,
        or an integer label is not a class of the model (outside ``[0, K)`` for
        ``K`` outputs).
    """
    integer(batch_size, "batch_size", context="evaluate", minimum=1)
    eval_step = eval_step or make_eval_step(model, loss_fn, mesh=mesh, policy=policy)  # checks the mesh
    images, labels = check_split(data, name="the data", context="evaluate")
    check_labels(labels, output_shape(model, params, state, images), name="the data", context="evaluate")
    return evaluate_batches(eval_step, params, state, images, labels, batch_size=batch_size, mesh=mesh)
