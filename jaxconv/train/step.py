"""The training step, built from small factories that each return a pure function.

- ``loss_and_grad(model, loss_fn)``: ``(params, state, images, labels, key) ->
  (grads, new_state, loss, accuracy)`` of one batch;
- ``microbatched(gradients, M)``: the same, as the mean over ``M`` micro-batches;
- ``optimizer_step(optimizer, gradients)``: ``(train_state, batch) -> (train_state, metrics)``;
- ``repeated(step, K)``: ``K`` optimizer steps per call;
- ``compile_step(step, mesh=...)``: the ``jax.jit`` of a step, buffer-donating,
  sharded over a device mesh if one is given.

``make_train_step`` composes them. ``with_augmentation`` wraps a model so that
training inputs pass through an augmentation first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from jaxconv.core import Layer, PyTree
from jaxconv.distributed import batch_sharding, check_mesh, replicated_sharding
from jaxconv.losses import accuracy, cross_entropy
from jaxconv.train.state import TrainState
from jaxconv.validate import integer

LossFn = Callable[[Any, Any], Any]
# (params, state, images, labels, key) -> (grads, new_state, loss, accuracy)
GradientsFn = Callable[[PyTree, PyTree, Any, Any, Any], tuple[PyTree, PyTree, Any, Any]]
# (train_state, (images, labels)) -> (train_state, {"loss", "accuracy"})
StepFn = Callable[[TrainState, tuple[Any, Any]], tuple[TrainState, dict[str, Any]]]


def with_augmentation(model: Layer, augment: Callable[[Any, Any], Any] | None) -> Layer:
    """Wraps ``model`` so that, in training mode, inputs pass through ``augment(key, x)`` first.

    The wrapper has the same params/state as ``model`` (checkpoint keys are
    unchanged). In training the layer key is split into an augmentation key
    and the model's key; in inference the input is used as is.
    """
    if augment is None:
        return model

    def apply(params, state, x, *, key=None, train=False):
        if train:
            if key is None:
                raise ValueError("with_augmentation: training mode needs a key for the augmentation")
            aug_key, key = jax.random.split(key)
            x = augment(aug_key, x)
        return model.apply(params, state, x, key=key, train=train)

    return Layer(model.init, apply, model.kind, model.children)


def loss_and_grad(model: Layer, loss_fn: LossFn = cross_entropy) -> GradientsFn:
    """``gradients(params, state, images, labels, key) -> (grads, new_state, loss, accuracy)``.

    ``loss`` is ``loss_fn(logits, labels)`` of the model in training mode
    (``key`` feeds its stochastic layers), ``grads`` its gradient with respect
    to ``params``, ``accuracy`` the batch's (before the update).
    """

    def loss_and_outputs(params, state, images, labels, key):
        logits, new_state = model.apply(params, state, images, key=key, train=True)
        return loss_fn(logits, labels), (new_state, logits)

    value_and_grad = jax.value_and_grad(loss_and_outputs, has_aux=True)

    def gradients(params, state, images, labels, key):
        (loss, (new_state, logits)), grads = value_and_grad(params, state, images, labels, key)
        return grads, new_state, loss, accuracy(logits, labels)

    return gradients


def microbatched(gradients: GradientsFn, microbatches: int) -> GradientsFn:
    """``gradients`` as the mean over ``microbatches`` strided slices of the batch.

    Micro-batch ``m`` holds examples ``m, m + M, m + 2M, ...`` and uses the key
    ``fold_in(key, m)``; they run one after the other (``run_steps``), so only
    one micro-batch's activations exist at a time. The layer state passes from
    one micro-batch to the next; loss and accuracy are the micro-batches' means.
    The batch size must be a multiple of ``microbatches`` (checked at trace time).
    ``microbatches=1`` returns ``gradients`` itself.
    """
    microbatches = integer(microbatches, "microbatches", context="microbatched", minimum=1)
    if microbatches == 1:
        return gradients

    def mean_gradients(params, state, images, labels, key):
        size = images.shape[0]
        if size % microbatches:
            raise ValueError(f"microbatched: microbatches={microbatches} must divide the batch "
                             f"size, got a batch of {size}")

        def split(a):  # (B, ...) -> (M, B // M, ...); micro-batch m: examples m, m + M, ...
            return jnp.swapaxes(a.reshape(size // microbatches, microbatches, *a.shape[1:]), 0, 1)

        def body(carry, micro):
            total, state = carry
            index, x, y = micro
            grads, state, loss, acc = gradients(params, state, x, y, jax.random.fold_in(key, index))
            return (jax.tree_util.tree_map(jnp.add, total, grads), state), (loss, acc)

        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        micro = (jnp.arange(microbatches), split(images), split(labels))
        (total, state), (losses, accs) = run_steps(body, (zeros, state), micro, microbatches)
        grads = jax.tree_util.tree_map(lambda g: g / microbatches, total)
        return grads, state, jnp.mean(losses), jnp.mean(accs)

    return mean_gradients


def optimizer_step(optimizer: optax.GradientTransformation, gradients: GradientsFn) -> StepFn:
    """``step(train_state, (images, labels)) -> (train_state, {"loss", "accuracy"})``: one update.

    The step's key is ``fold_in(train_state.key, train_state.step)``; the
    metrics are those of the batch before the update.
    """

    def step(ts: TrainState, batch):
        images, labels = batch
        step_key = jax.random.fold_in(ts.key, ts.step)
        grads, state, loss, acc = gradients(ts.params, ts.state, images, labels, step_key)
        updates, opt_state = optimizer.update(grads, ts.opt_state, ts.params)
        params = optax.apply_updates(ts.params, updates)
        return TrainState(ts.step + 1, params, state, opt_state, ts.key), {"loss": loss, "accuracy": acc}

    return step


def repeated(step: StepFn, steps_per_call: int) -> StepFn:
    """``steps_per_call`` applications of ``step`` per call (``run_steps``).

    The batch arrays then carry a leading axis of ``steps_per_call``
    mini-batches and the metrics come back with shape ``(steps_per_call,)``.
    ``steps_per_call=1`` returns ``step`` itself.
    """
    steps_per_call = integer(steps_per_call, "steps_per_call", context="repeated", minimum=1)
    if steps_per_call == 1:
        return step

    def steps(ts: TrainState, batch):
        return run_steps(step, ts, batch, steps_per_call)

    return steps


def compile_step(step: StepFn, *, mesh: Mesh | None = None, steps_per_call: int = 1) -> Any:
    """The ``jax.jit`` of ``step``, donating the train state (argument 0).

    With a ``mesh`` the train state is replicated over its devices (inputs and
    outputs) and the batch is sharded along its ``"data"`` axis (axis 1 of
    the batch arrays when ``steps_per_call > 1``); XLA inserts the all-reduces.
    """
    if mesh is None:
        return jax.jit(step, donate_argnums=0)
    replicated = replicated_sharding(check_mesh(mesh, context="compile_step"))
    sharded = batch_sharding(mesh, steps_per_call=steps_per_call)
    return jax.jit(step, donate_argnums=0, in_shardings=(replicated, sharded),
                   out_shardings=(replicated, replicated))


def make_train_step(
    model: Layer,
    optimizer: optax.GradientTransformation,
    loss_fn: LossFn = cross_entropy,
    *,
    steps_per_call: int = 1,
    microbatches: int = 1,
    mesh: Mesh | None = None,
) -> Any:
    """Builds a jit-compiled, buffer-donating training step (a ``jax.jit`` object).

    The returned function maps ``(train_state, (images, labels))`` to
    ``(new_train_state, metrics)`` with ``metrics = {"loss", "accuracy"}``
    computed on the batch before the update. The input ``train_state`` is
    donated: do not use it after the call. Being a ``jax.jit`` object, it also
    has ``.lower``, ``.trace`` and ``.eval_shape``.

    With ``steps_per_call=K > 1`` the batch arrays carry a leading axis of
    ``K`` mini-batches, the K updates run inside one compiled call, and the
    metrics have shape ``(K,)`` (see ``run_steps``: a ``lax.scan``, unrolled on
    CPU when the step contains a convolution primitive).

    With ``microbatches=M > 1`` each step splits its batch into ``M`` equal
    strided micro-batches, takes the gradient of each in turn and applies
    their mean in one optimizer update (``microbatched``). For a ``loss_fn``
    that averages over examples (all of ``jaxconv.losses``) this is the update
    of the whole batch, up to float rounding, but the program holds one
    micro-batch's activations at a time: a smaller block of temporary memory,
    which on CPU the allocator can keep reusing instead of faulting in fresh
    pages on every call (see ``jaxconv.runtime`` and ``benchmarks/RESULTS.md``,
    sections cpu and cpu-retained). Layers that use batch statistics
    (``BatchNorm`` in training) see each micro-batch alone, and their running
    state takes ``M`` updates per step; dropout draws each micro-batch's masks
    from ``fold_in(step_key, m)``. The batch size must be a multiple of ``M``.

    With a ``mesh`` (see ``jaxconv.distributed``), the step is compiled for all of
    its devices: the batch is sharded along the mesh's ``"data"`` axis, the
    train state is replicated (inputs and outputs), and XLA all-reduces the
    gradients and BatchNorm's batch statistics, so the result equals the
    one-device step on the same global batch. Feed it batches placed by
    ``distributed.shard_batch`` or ``distributed.host_local_batch``, which
    check that the global batch size divides by the size of the ``"data"``
    axis (a batch that does not gets JAX's ``ValueError`` about the sharding).
    """
    context = "make_train_step"
    steps_per_call = integer(steps_per_call, "steps_per_call", context=context, minimum=1)
    microbatches = integer(microbatches, "microbatches", context=context, minimum=1)
    if mesh is not None:
        check_mesh(mesh, context=context)
    gradients = microbatched(loss_and_grad(model, loss_fn), microbatches)
    step = repeated(optimizer_step(optimizer, gradients), steps_per_call)
    return compile_step(step, mesh=mesh, steps_per_call=steps_per_call)


def contains_convolution(jaxpr: Any) -> bool:
    """Whether a (closed) jaxpr or any jaxpr nested in it applies ``conv_general_dilated``."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            return True
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns") and contains_convolution(inner):
                    return True
    return False


def run_steps(one_step: Callable, ts: Any, batch: Any, steps: int) -> tuple[Any, Any]:
    """Runs ``steps`` updates of ``one_step`` in one trace; outputs are stacked on a new axis.

    ``batch`` carries a leading axis of ``steps`` mini-batches. Normally the
    steps run in a ``lax.scan`` (compiled once, whatever ``steps``). On the CPU
    backend, a loop body containing a convolution primitive takes a slow path in
    XLA:CPU (a ``lax.scan`` over training steps measured many times slower per
    step than separate calls), so when one step applies ``conv_general_dilated``
    (``impl="lax"``) the steps are unrolled in the trace instead: as fast per step
    as separate calls, at the price of a compile time growing with ``steps``.
    ``impl="patches"`` contains no convolution primitive and keeps the scan.
    """
    if jax.default_backend() == "cpu":
        first = jax.tree_util.tree_map(lambda a: a[0], batch)
        if contains_convolution(jax.make_jaxpr(one_step)(ts, first)):
            outputs = []
            for i in range(steps):
                ts, out = one_step(ts, jax.tree_util.tree_map(lambda a, i=i: a[i], batch))
                outputs.append(out)
            return ts, jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *outputs)
    return jax.lax.scan(one_step, ts, batch)
