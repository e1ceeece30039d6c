"""The training step, built from small factories that each return a pure function.

- ``loss_and_grad(model, loss_fn, policy=..., mix=...)``: ``(params, state, images,
  labels, key[, scale]) -> (grads, new_state, loss, accuracy)`` of one batch;
- ``microbatched(gradients, M)``: the same, as the mean over ``M`` micro-batches;
- ``optimizer_step(optimizer, gradients, clip_norm=..., ema_decay=..., loss_scale=...)``:
  ``(train_state, batch) -> (train_state, metrics)``;
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
from jaxconv.precision import (
    DynamicLossScale,
    Policy,
    all_finite,
    for_compute,
    get_policy,
    keep_if,
    next_loss_scale,
    output_for_loss,
)
from jaxconv.train.state import TrainState
from jaxconv.validate import integer, number

LossFn = Callable[[Any, Any], Any]
# (key, images, labels) -> (images, probability targets)
MixFn = Callable[[Any, Any, Any], tuple[Any, Any]]
# (params, state, images, labels, key[, scale]) -> (grads, new_state, loss, accuracy)
GradientsFn = Callable[..., tuple[PyTree, PyTree, Any, Any]]
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


def loss_and_grad(model: Layer, loss_fn: LossFn = cross_entropy, *, policy: str | Policy | None = None,
                  mix: MixFn | None = None) -> GradientsFn:
    """``gradients(params, state, images, labels, key, scale=None) -> (grads, new_state, loss, accuracy)``.

    ``loss`` is ``loss_fn(logits, labels)`` of the model in training mode
    (``key`` feeds its stochastic layers), ``grads`` its gradient with respect
    to ``params``, ``accuracy`` the batch's (before the update).

    Args:
      model, loss_fn: the network and its loss.
      policy: a precision policy (``jaxconv.precision``): the model runs on
        params and images cast to its compute dtype; the logits reach
        ``loss_fn`` in float32; the gradients are float32 like the params.
      mix: a batch mix (``jaxconv.augment.mixup``...) applied to the images and
        labels first, with a key split from ``key``; ``loss_fn`` and the
        accuracy then see probability targets.

    With a ``scale`` (dynamic loss scaling), the gradient is taken of
    ``loss * scale`` and divided by ``scale`` afterwards (in float32).
    """
    policy = get_policy(policy, context="loss_and_grad")

    def loss_and_outputs(params, state, images, labels, key, scale):
        params, images = for_compute(policy, params, images)
        logits, new_state = model.apply(params, state, images, key=key, train=True)
        logits = output_for_loss(policy, logits)
        loss = loss_fn(logits, labels)
        return (loss if scale is None else loss * scale), (loss, new_state, logits)

    value_and_grad = jax.value_and_grad(loss_and_outputs, has_aux=True)

    def gradients(params, state, images, labels, key, scale=None):
        if mix is not None:
            mix_key, key = jax.random.split(key)
            images, labels = mix(mix_key, images, labels)
        (_, (loss, new_state, logits)), grads = value_and_grad(params, state, images, labels, key, scale)
        if scale is not None:
            grads = jax.tree_util.tree_map(lambda g: g / scale, grads)
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

    def mean_gradients(params, state, images, labels, key, scale=None):
        size = images.shape[0]
        extra = () if scale is None else (scale,)
        if size % microbatches:
            raise ValueError(f"microbatched: microbatches={microbatches} must divide the batch "
                             f"size, got a batch of {size}")

        def split(a):  # (B, ...) -> (M, B // M, ...); micro-batch m: examples m, m + M, ...
            return jnp.swapaxes(a.reshape(size // microbatches, microbatches, *a.shape[1:]), 0, 1)

        def body(carry, micro):
            total, state = carry
            index, x, y = micro
            grads, state, loss, acc = gradients(params, state, x, y, jax.random.fold_in(key, index), *extra)
            return (jax.tree_util.tree_map(jnp.add, total, grads), state), (loss, acc)

        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        micro = (jnp.arange(microbatches), split(images), split(labels))
        (total, state), (losses, accs) = run_steps(body, (zeros, state), micro, microbatches)
        grads = jax.tree_util.tree_map(lambda g: g / microbatches, total)
        return grads, state, jnp.mean(losses), jnp.mean(accs)

    return mean_gradients


def ema_decay_at(decay: float, step: Any) -> Any:
    """The EMA's decay at update ``step`` (1-based): ``min(decay, (1 + step) / (10 + step))``.

    The ramp (TensorFlow's ``ExponentialMovingAverage`` with ``num_updates``)
    lets the average follow the fast changes of the first steps instead of
    staying near the initial params for ``1 / (1 - decay)`` steps.
    """
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(jnp.float32(decay), (1.0 + step) / (10.0 + step))


def updated_ema(ema: PyTree, params: PyTree, step: Any, decay: float) -> PyTree:
    """``ema * d + params * (1 - d)`` leaf by leaf, ``d = ema_decay_at(decay, step)``."""
    d = ema_decay_at(decay, step)
    return jax.tree_util.tree_map(lambda e, p: (e * d + p * (1 - d)).astype(e.dtype), ema, params)


def clipped(grads: PyTree, clip_norm: float) -> PyTree:
    """``grads`` scaled to a global norm of at most ``clip_norm`` (``optax.clip_by_global_norm``)."""
    return optax.clip_by_global_norm(clip_norm).update(grads, optax.EmptyState())[0]


def _check_train_state(ts: TrainState, ema_decay: float | None, loss_scale: DynamicLossScale | None) -> None:
    """Raises (at trace time) unless ``ts`` holds the EMA and loss scale the step updates."""
    if ema_decay is not None and ts.ema is None:
        raise ValueError("optimizer_step: ema_decay is set but the train state has no EMA; create it "
                         "with create_train_state(..., ema=True)")
    if loss_scale is not None and ts.loss_scale is None:
        raise ValueError("optimizer_step: the policy scales the loss but the train state has no loss "
                         "scale; create it with create_train_state(..., policy='fp16')")


def optimizer_step(optimizer: optax.GradientTransformation, gradients: GradientsFn, *,
                   clip_norm: float | None = None, ema_decay: float | None = None,
                   loss_scale: DynamicLossScale | None = None) -> StepFn:
    """``step(train_state, (images, labels)) -> (train_state, {"loss", "accuracy"})``: one update.

    The step's key is ``fold_in(train_state.key, train_state.step)``; the
    metrics are those of the batch before the update.

    Args:
      optimizer, gradients: the update rule and the gradients of a batch.
      clip_norm: clip the gradients to this global norm before the optimizer.
      ema_decay: update ``train_state.ema`` (which must hold params) after the
        update with ``ema_decay_at(ema_decay, step)``.
      loss_scale: dynamic loss scaling settings; ``train_state.loss_scale``
        must hold its state. The gradients are taken of the scaled loss; a step
        with a non-finite gradient changes nothing but the step count and the
        scale (see ``jaxconv.precision``).
    """
    context = "optimizer_step"
    if clip_norm is not None:
        number(clip_norm, "clip_norm", context=context, minimum=0, exclusive_minimum=True)
    if ema_decay is not None:
        number(ema_decay, "ema_decay", context=context, minimum=0, maximum=1, exclusive_maximum=True)

    def step(ts: TrainState, batch):
        _check_train_state(ts, ema_decay, loss_scale)
        images, labels = batch
        step_key = jax.random.fold_in(ts.key, ts.step)
        scale = () if loss_scale is None else (ts.loss_scale.scale,)
        grads, state, loss, acc = gradients(ts.params, ts.state, images, labels, step_key, *scale)
        updates, opt_state = optimizer.update(grads if clip_norm is None else clipped(grads, clip_norm),
                                              ts.opt_state, ts.params)
        params = optax.apply_updates(ts.params, updates)
        ema = ts.ema if ema_decay is None else updated_ema(ts.ema, params, ts.step + 1, ema_decay)
        new = TrainState(ts.step + 1, params, state, opt_state, ts.key, ema, ts.loss_scale)
        if loss_scale is not None:
            finite = all_finite(grads)
            kept = keep_if(finite, (params, state, opt_state, ema), (ts.params, ts.state, ts.opt_state, ts.ema))
            new = new._replace(params=kept[0], state=kept[1], opt_state=kept[2], ema=kept[3],
                               loss_scale=next_loss_scale(loss_scale, ts.loss_scale, finite))
        return new, {"loss": loss, "accuracy": acc}

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
    policy: str | Policy | None = None,
    mix: MixFn | None = None,
    clip_norm: float | None = None,
    ema_decay: float | None = None,
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

    The recipe options: ``policy`` (mixed precision, ``jaxconv.precision``;
    ``"fp16"`` scales the loss, the train state must come from
    ``create_train_state(policy="fp16")``), ``mix`` (a batch mix of
    ``jaxconv.augment``, applied to each micro-batch), ``clip_norm`` (global-norm
    gradient clipping before the optimizer) and ``ema_decay`` (an exponential
    moving average of the params in ``train_state.ema``, which must come from
    ``create_train_state(ema=True)``). See ``loss_and_grad`` and ``optimizer_step``.
    """
    context = "make_train_step"
    steps_per_call = integer(steps_per_call, "steps_per_call", context=context, minimum=1)
    microbatches = integer(microbatches, "microbatches", context=context, minimum=1)
    if mesh is not None:
        check_mesh(mesh, context=context)
    policy = get_policy(policy, context=context)
    gradients = microbatched(loss_and_grad(model, loss_fn, policy=policy, mix=mix), microbatches)
    step = optimizer_step(optimizer, gradients, clip_norm=clip_norm, ema_decay=ema_decay,
                          loss_scale=policy.loss_scale)
    step = repeated(step, steps_per_call)
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
