"""Training: a ``TrainState`` pytree, a jit-compiled Optax step, evaluation and ``fit``."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from jaxconv.distributed import (barrier, batch_sharding, check_batch_size, check_mesh, data_size, fetch, is_primary,
                              replicate, replicated_sharding, shard_batch)
from jaxconv.core import Layer, PyTree
from jaxconv.data import Split, batches_per_epoch, epoch_batches
from jaxconv.losses import accuracy, cross_entropy


class TrainState(NamedTuple):
    """Everything a training run carries from step to step (a pytree).

    Attributes:
      step: int32 scalar, number of optimizer steps taken.
      params: trainable parameters.
      state: non-trainable layer state (BatchNorm statistics).
      opt_state: the Optax optimizer state.
      key: PRNG key; step ``t`` uses ``fold_in(key, t)``, so a run resumed at
        step ``t`` draws the same randomness as an uninterrupted one.
    """

    step: Any
    params: PyTree
    state: PyTree
    opt_state: PyTree
    key: Any


def create_train_state(
    model: Layer, key: Any, input_shape: tuple[int, ...], optimizer: optax.GradientTransformation
) -> TrainState:
    """Initialises the model and the optimizer.

    Args:
      model: the network.
      key: PRNG key; split into an init key and the training key.
      input_shape: input shape including the batch dimension (may be ``-1``).
      optimizer: an Optax transformation.
    """
    input_shape = tuple(input_shape)

    def build(key):
        # One compiled program: eager initialisers would compile once per kernel shape.
        init_key, train_key = jax.random.split(key)
        _, params, state = model.init(init_key, input_shape)
        return TrainState(jnp.zeros((), jnp.int32), params, state, optimizer.init(params),
                          train_key)

    # It runs once, so on CPU it is compiled without LLVM's optimisations: the
    # digits CNN's init compiles in 0.6 s instead of 1.8 s and runs 9 ms longer;
    # ResNet-9's in 1.2 s instead of 3.8 s, running 0.5 s longer.
    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    return jax.jit(build).lower(key).compile(compiler_options=options)(key)


LossFn = Callable[[Any, Any], Any]


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


OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "onecycle")


def learning_rate_schedule(name: str, lr: float, total_steps: int, *, warmup_steps: int | None = None):
    """A learning-rate schedule over ``total_steps`` optimizer steps.

    - ``constant``: ``lr``.
    - ``cosine``: ``lr * (1 + cos(pi * t / T)) / 2``.
    - ``warmup_cosine``: linear from 0 to ``lr`` over ``warmup_steps`` (default
      ``T / 20``), then cosine decay to 0.
    - ``onecycle``: cosine ramp from ``lr / 25`` to ``lr`` over the first 30 %, then
      cosine decay to ``lr / 25 / 1e4`` (``optax.cosine_onecycle_schedule``).
    """
    if name not in SCHEDULES:
        raise ValueError(f"learning_rate_schedule: unknown schedule {name!r}; expected one of {SCHEDULES}")
    total_steps = max(int(total_steps), 1)
    if name == "constant":
        return optax.constant_schedule(lr)
    if name == "cosine":
        return optax.cosine_decay_schedule(lr, total_steps)
    if name == "warmup_cosine":
        warmup = max(1, total_steps // 20) if warmup_steps is None else warmup_steps
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, total_steps)
    return optax.cosine_onecycle_schedule(total_steps, lr)


def make_optimizer(name: str, lr: float, *, schedule: str = "constant", total_steps: int = 1,
                   weight_decay: float = 0.0, momentum: float = 0.9) -> optax.GradientTransformation:
    """``sgd`` (with Nesterov momentum), ``adam`` or ``adamw`` on a learning-rate schedule.

    ``weight_decay`` is decoupled for ``adamw`` and added to the gradient
    (L2) for ``sgd`` and ``adam``.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"make_optimizer: unknown optimizer {name!r}; expected one of {OPTIMIZERS}")
    if not lr > 0:
        raise ValueError(f"make_optimizer: lr must be > 0, got {lr!r}")
    rate = learning_rate_schedule(schedule, lr, total_steps)
    if name == "adamw":
        return optax.adamw(rate, weight_decay=weight_decay)
    base = optax.sgd(rate, momentum=momentum, nesterov=True) if name == "sgd" else optax.adam(rate)
    if weight_decay:
        return optax.chain(optax.add_decayed_weights(weight_decay), base)
    return base


def make_train_step(
    model: Layer,
    optimizer: optax.GradientTransformation,
    loss_fn: LossFn = cross_entropy,
    *,
    steps_per_call: int = 1,
    microbatches: int = 1,
    mesh: Mesh | None = None,
) -> Callable[[TrainState, tuple[Any, Any]], tuple[TrainState, dict[str, Any]]]:
    """Builds a jit-compiled, buffer-donating training step.

    The returned function maps ``(train_state, (images, labels))`` to
    ``(new_train_state, metrics)`` with ``metrics = {"loss", "accuracy"}``
    computed on the batch before the update. The input ``train_state`` is
    donated: do not use it after the call.

    With ``steps_per_call=K > 1`` the batch arrays carry a leading axis of
    ``K`` mini-batches, the K updates run inside one compiled call, and the
    metrics have shape ``(K,)`` (see ``run_steps``: a ``lax.scan``, unrolled on
    CPU when the step contains a convolution primitive).

    With ``microbatches=M > 1`` each step splits its batch into ``M`` equal
    micro-batches (micro-batch ``m`` holds examples ``m, m + M, m + 2M, ...``),
    takes the gradient of each in turn (``run_steps``) and applies their mean
    in one optimizer update; loss and accuracy are the means over the
    micro-batches. For a ``loss_fn`` that averages over examples (all of
    ``jaxconv.losses``) this is the update of the whole batch, up to float
    rounding, but the program holds one micro-batch's activations at a time:
    on CPU the MNIST CNN's step at batch 128 needs 21 MB of temporary memory
    with ``M=8`` instead of 102 MB (``compiled.memory_analysis()``). Below
    glibc's 32 MB ``mmap`` threshold, that block comes back from the heap on
    every call, instead of as fresh pages that fault in: 26,000 faults per step
    (see ``jaxconv.runtime``). RESULTS.md cpu: the step takes 0.80x the time with
    ``M=8``. Where the process keeps its memory anyway
    (``runtime.retain_host_memory``), it does not help (RESULTS.md cpu-retained).
    Layers that use batch statistics (``BatchNorm`` in
    training) see each micro-batch alone, and their running state takes ``M``
    updates per step; dropout draws each micro-batch's masks from
    ``fold_in(step_key, m)``. The batch size must be a multiple of ``M``.

    With a ``mesh`` (see ``jaxconv.distributed``), the step is compiled for all of
    its devices: the batch is sharded along the mesh's ``"data"`` axis, the
    train state is replicated (inputs and outputs), and XLA all-reduces the
    gradients and BatchNorm's batch statistics, so the result equals the
    one-device step on the same global batch. The global batch size must be
    divisible by the size of the ``"data"`` axis (``ValueError`` otherwise).
    With several processes, pass global arrays (``distributed.replicate``,
    ``distributed.shard_batch`` / ``distributed.host_local_batch``). The mesh step is
    a thin Python wrapper (the batch-size check) around the ``jax.jit``
    function, which it exposes as ``.jitted`` (and ``.lower``).
    """
    for name, value in (("steps_per_call", steps_per_call), ("microbatches", microbatches)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"make_train_step: {name} must be an int >= 1, got {value!r}")

    def loss_and_outputs(params, state, images, labels, key):
        logits, new_state = model.apply(params, state, images, key=key, train=True)
        return loss_fn(logits, labels), (new_state, logits)

    grad_fn = jax.value_and_grad(loss_and_outputs, has_aux=True)

    def gradients(params, state, images, labels, key):
        """``(grads, new_state, loss, accuracy)`` of one (micro-)batch."""
        (loss, (state, logits)), grads = grad_fn(params, state, images, labels, key)
        return grads, state, loss, accuracy(logits, labels)

    def microbatched(params, state, images, labels, key):
        """``gradients`` as the mean over ``microbatches`` strided slices of the batch."""
        size = images.shape[0]
        if size % microbatches:
            raise ValueError(f"make_train_step: microbatches={microbatches} must divide the batch "
                             f"size, got a batch of {size}")

        def split(a):  # (B, ...) -> (M, B // M, ...); micro-batch m: examples m, m + M, ...
            return jnp.swapaxes(a.reshape(size // microbatches, microbatches, *a.shape[1:]), 0, 1)

        def body(carry, micro):
            total, state = carry
            index, x, y = micro
            grads, state, loss, acc = gradients(params, state, x, y,
                                                jax.random.fold_in(key, index))
            return (jax.tree_util.tree_map(jnp.add, total, grads), state), (loss, acc)

        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        micro = (jnp.arange(microbatches), split(images), split(labels))
        (total, state), (losses, accs) = run_steps(body, (zeros, state), micro, microbatches)
        grads = jax.tree_util.tree_map(lambda g: g / microbatches, total)
        return grads, state, jnp.mean(losses), jnp.mean(accs)

    def one_step(ts: TrainState, batch):
        images, labels = batch
        step_key = jax.random.fold_in(ts.key, ts.step)
        grad_of = gradients if microbatches == 1 else microbatched
        grads, state, loss, acc = grad_of(ts.params, ts.state, images, labels, step_key)
        updates, opt_state = optimizer.update(grads, ts.opt_state, ts.params)
        params = optax.apply_updates(ts.params, updates)
        metrics = {"loss": loss, "accuracy": acc}
        return TrainState(ts.step + 1, params, state, opt_state, ts.key), metrics

    if steps_per_call == 1:
        step = one_step
    else:
        def step(ts, batch):
            return run_steps(one_step, ts, batch, steps_per_call)

    if mesh is None:
        return jax.jit(step, donate_argnums=0)
    check_mesh(mesh, context="make_train_step")
    replicated = replicated_sharding(mesh)
    jitted = jax.jit(step, donate_argnums=0,
                     in_shardings=(replicated, batch_sharding(mesh, steps_per_call=steps_per_call)),
                     out_shardings=(replicated, replicated))
    batch_axis = 0 if steps_per_call == 1 else 1

    @functools.wraps(step)
    def sharded_step(ts, batch):
        # A clear error before XLA's own one about the sharding.
        for x in jax.tree_util.tree_leaves(batch):
            check_batch_size(np.shape(x)[batch_axis], mesh, context="make_train_step")
        return jitted(ts, batch)

    sharded_step.jitted = jitted  # the underlying jax.jit function (.lower, .trace, ...)
    sharded_step.lower = jitted.lower
    return sharded_step


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
    XLA:CPU (issue 6 measured a ``lax.scan`` over training steps 13x slower per
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
                ts, out = one_step(ts, jax.tree_util.tree_map(lambda a: a[i], batch))
                outputs.append(out)
            return ts, jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *outputs)
    return jax.lax.scan(one_step, ts, batch)


def make_eval_step(model: Layer, loss_fn: LossFn = cross_entropy, *, mesh: Mesh | None = None) -> Callable:
    """A jitted ``(params, state, images, labels, mask) -> (loss_sum, correct_sum)``.

    With a ``mesh``, params/state are replicated and the batch is sharded on ``"data"``.
    """

    def eval_step(params, state, images, labels, mask):
        logits, _ = model.apply(params, state, images, train=False)
        per_example = jax.vmap(lambda lg, lb: loss_fn(lg[None], lb[None]))(logits, labels)
        correct = jnp.argmax(logits, -1) == labels
        return jnp.sum(per_example * mask), jnp.sum(correct * mask)

    if mesh is None:
        return jax.jit(eval_step)
    replicated = replicated_sharding(check_mesh(mesh, context="make_eval_step"))
    sharded = batch_sharding(mesh)
    return jax.jit(eval_step, in_shardings=(replicated, replicated, sharded, sharded, sharded),
                   out_shardings=replicated)


def predict(model: Layer, params: PyTree, state: PyTree, images: Any, *, batch_size: int = 512) -> np.ndarray:
    """Arg-max class of every image, in inference mode: int ``(N,)``.

    Batches are padded to ``batch_size`` so one compiled function serves all.
    """
    apply = jax.jit(lambda p, s, x: jnp.argmax(model.apply(p, s, x, train=False)[0], -1))
    images = np.asarray(images)
    n = len(images)
    batch_size = max(1, min(batch_size, n))
    out = []
    for start in range(0, n, batch_size):
        xb = images[start:start + batch_size]
        valid = len(xb)
        if valid < batch_size:
            xb = np.concatenate([xb, np.zeros((batch_size - valid,) + xb.shape[1:], xb.dtype)])
        out.append(np.asarray(apply(params, state, xb))[:valid])
    return np.concatenate(out) if out else np.zeros((0,), np.int32)


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
) -> dict[str, float]:
    """Mean loss and accuracy over a whole split, in inference mode.

    The last batch is padded to ``batch_size`` (and masked), so every call
    reuses one compiled function. With a ``mesh`` the batches are sharded over
    its ``"data"`` axis (``batch_size`` is rounded up to a multiple of its size)
    and ``params``/``state`` should be replicated on it (``distributed.replicate``).
    """
    images, labels = data
    n = len(labels)
    eval_step = eval_step or make_eval_step(model, loss_fn, mesh=mesh)
    batch_size = min(batch_size, n)
    if mesh is not None:
        shards = data_size(mesh)
        batch_size = -(-batch_size // shards) * shards
    loss_sum, correct_sum = 0.0, 0.0
    for start in range(0, n, batch_size):
        xb, yb = np.asarray(images[start:start + batch_size]), np.asarray(labels[start:start + batch_size])
        valid = len(yb)
        mask = np.zeros(batch_size, np.float32)
        mask[:valid] = 1
        if valid < batch_size:
            pad = batch_size - valid
            xb = np.concatenate([xb, np.zeros((pad,) + xb.shape[1:], xb.dtype)])
            yb = np.concatenate([yb, np.zeros((pad,), yb.dtype)])
        if mesh is not None:
            xb, yb, mask = shard_batch((xb, yb, mask), mesh)
        l, c = eval_step(params, state, xb, yb, mask)
        loss_sum += float(l)
        correct_sum += float(c)
    return {"loss": loss_sum / n, "accuracy": correct_sum / n}


class NonFiniteLossError(FloatingPointError):
    """Training produced a non-finite loss or non-finite parameters."""


def _all_finite(tree: PyTree) -> bool:
    """Whether every float leaf of the (replicated) ``tree`` is finite, checked on the host.

    NumPy on host copies: no compilation per leaf shape, as eager JAX ops would need.
    """
    return all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(fetch(tree))
               if jnp.issubdtype(x.dtype, jnp.inexact))


def fit(
    model: Layer,
    optimizer: optax.GradientTransformation,
    train: Split | tuple[Any, Any],
    *,
    test: Split | tuple[Any, Any] | None = None,
    epochs: int = 10,
    batch_size: int = 64,
    loss_fn: LossFn = cross_entropy,
    seed: int = 0,
    train_state: TrainState | None = None,
    steps_per_call: int = 1,
    microbatches: int = 1,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
    augment: Callable[[Any, Any], Any] | None = None,
    checkpoint_dir: str | None = None,
    checkpoint_every: int | None = None,
    keep: int | None = 3,
    resume: bool = False,
    metadata: dict | None = None,
    mesh: Mesh | None = None,
) -> tuple[TrainState, list[dict[str, float]]]:
    """Trains ``model`` for ``epochs`` passes over shuffled mini-batches.

    Randomness depends only on ``(seed, epoch, step)``: epoch ``e`` is shuffled
    with ``fold_in(shuffle_key, e)`` and step ``t`` uses ``fold_in(key, t)``
    (dropout, augmentation). A run resumed from a checkpoint therefore ends
    with bitwise the same parameters as an uninterrupted one.

    Args:
      model: the network; its input shape is taken from ``train``.
      optimizer: an Optax transformation.
      train, test: ``(images, labels)`` splits; ``test`` is evaluated after each epoch.
      epochs, batch_size: the schedule (the last incomplete batch is dropped).
      loss_fn: ``(logits, labels) -> scalar``.
      seed: seeds init, shuffling and augmentation; the same seed gives the same result.
      train_state: continue from this state instead of a fresh init.
      steps_per_call: optimizer steps per compiled call (see ``make_train_step``).
      microbatches: micro-batches per step (see ``make_train_step``); must divide
        ``batch_size``.
      progress: show a tqdm progress bar with the running loss and accuracy.
      log: called with one line per epoch (``None`` for silence).
      augment: ``(key, images) -> images`` applied inside the compiled step in
        training mode (see ``jaxconv.data.augmentation``).
      checkpoint_dir: if given, a checkpoint (``ckpt-<step>.safetensors``: the
        ``TrainState`` plus JSON metadata with the history) is written at the
        end of every epoch and every ``checkpoint_every`` steps.
      checkpoint_every: steps between mid-epoch checkpoints (``None``: epoch ends only).
      keep: number of newest checkpoints kept (``None``: all).
      resume: continue from the newest checkpoint in ``checkpoint_dir`` that
        reads back intact (corrupt ones are skipped; a fresh start if there is none).
      metadata: JSON-serialisable dict stored in every checkpoint (model name, config).
      mesh: train data-parallel over this device mesh (``jaxconv.distributed.data_mesh()``):
        the train state is replicated, each global batch of ``batch_size`` is
        sharded over the ``"data"`` axis (``batch_size`` must be divisible by
        its size), and results equal a one-device run. With several processes
        every process calls ``fit`` with the same data and seed and feeds only
        its own rows of each batch. The progress bar and ``log`` run on process 0 only.

    Returns:
      ``(train_state, history)``, one history dict per epoch with
      ``train_loss``, ``train_accuracy``, ``test_loss``, ``test_accuracy``, ``seconds``.

    Raises:
      NonFiniteLossError: a loss (or the parameters) became NaN/inf; the message
        names the step (the 1-based count of optimizer steps) and the last good
        checkpoint, which is kept.
    """
    from tqdm.auto import tqdm

    if mesh is not None:
        check_mesh(mesh, context="fit")
        check_batch_size(batch_size, mesh, context="fit")
    if not is_primary():
        progress, log = False, None
    from jaxconv import checkpoint as ckpt

    images, labels = train
    if len(images) != len(labels):
        raise ValueError(f"fit: {len(images)} images but {len(labels)} labels")
    if checkpoint_every is not None and (isinstance(checkpoint_every, bool)
                                         or not isinstance(checkpoint_every, int) or checkpoint_every < 1):
        raise ValueError(f"fit: checkpoint_every must be an int >= 1 or None, got {checkpoint_every!r}")
    if resume and checkpoint_dir is None:
        raise ValueError("fit: resume=True needs checkpoint_dir")
    key = jax.random.PRNGKey(seed)
    init_key, shuffle_key = jax.random.split(key)
    if train_state is None:
        input_shape = (-1,) + tuple(np.shape(images)[1:])
        train_state = create_train_state(model, init_key, input_shape, optimizer)
    n_items = batches_per_epoch(len(labels), batch_size, steps_per_call)
    if n_items < 1:
        raise ValueError(f"fit: batch_size * steps_per_call = {batch_size * steps_per_call} "
                         f"exceeds the {len(labels)} training examples")
    if isinstance(microbatches, int) and microbatches >= 1 and batch_size % microbatches:
        raise ValueError(f"fit: microbatches={microbatches} must divide batch_size={batch_size}")
    steps_per_epoch = n_items * steps_per_call
    run_info = {"seed": seed, "batch_size": batch_size, "steps_per_call": steps_per_call,
                "microbatches": microbatches, "n_train": len(labels), "epochs": epochs}

    history: list[dict[str, float]] = []
    partial = {"loss": 0.0, "accuracy": 0.0, "steps": 0}
    last_checkpoint = None
    if resume:
        ckpt.remove_stale_temporaries(checkpoint_dir)
        for _, path in reversed(ckpt.list_checkpoints(checkpoint_dir)):
            try:  # the newest checkpoint that reads back intact
                loaded, meta = ckpt.load_with_metadata(path, train_state)
            except ckpt.CorruptCheckpointError as e:
                if log is not None:
                    log(f"skipping {e}")
                continue
            info = meta.get("fit", {})
            for name in ("seed", "batch_size", "steps_per_call", "microbatches", "n_train"):
                if name in info and info[name] != run_info[name]:
                    raise ValueError(
                        f"fit: cannot resume from {path}: it was written with "
                        f"{name}={info[name]!r}, this run has {name}={run_info[name]!r}")
            train_state, last_checkpoint = loaded, path
            break
        if last_checkpoint is not None:
            history = list(info.get("history", []))
            partial = dict(info.get("partial", partial))
            if log is not None:
                log(f"resumed from {last_checkpoint} at step {int(train_state.step)}")

    step = int(train_state.step)
    if step % steps_per_call:
        raise ValueError(f"fit: step {step} of the train state is not a multiple of steps_per_call={steps_per_call}")

    model_t = with_augmentation(model, augment)
    step_fn = make_train_step(model_t, optimizer, loss_fn, steps_per_call=steps_per_call,
                              microbatches=microbatches, mesh=mesh)
    eval_step = make_eval_step(model, loss_fn, mesh=mesh)
    if mesh is not None:
        train_state = replicate(train_state, mesh)
    images, labels = jnp.asarray(images), jnp.asarray(labels)
    pending: list[tuple[int, dict[str, Any]]] = []

    def drain():
        """Moves pending metrics into ``partial``; stops on a non-finite loss."""
        for first, metrics in jax.device_get(pending):
            losses = np.reshape(metrics["loss"], -1)
            accs = np.reshape(metrics["accuracy"], -1)
            for j, (l, a) in enumerate(zip(losses, accs)):
                if not np.isfinite(l):
                    stop(f"non-finite loss {float(l)} at step {first + j + 1}")
                partial["loss"] += float(l)
                partial["accuracy"] += float(a)
                partial["steps"] += 1
        pending.clear()

    def stop(what):
        kept = (f"the last good checkpoint is {last_checkpoint}" if last_checkpoint
                else "no checkpoint was written")
        raise NonFiniteLossError(f"fit: {what} (epoch {epoch + 1}); training stopped, {kept}")

    def save(epoch_done):
        nonlocal last_checkpoint
        drain()
        if not _all_finite(train_state.params):
            stop(f"non-finite parameters after step {step}")
        meta = dict(metadata or {})
        meta["fit"] = dict(run_info, step=step, epochs_done=epoch_done, history=history, partial=partial)
        if is_primary():  # one writer; the replicated state is the same on every process
            last_checkpoint = ckpt.save_checkpoint(checkpoint_dir, step, train_state, meta, keep=keep)
        if mesh is not None:
            barrier(mesh)  # the others may read it next (resume)

    epoch = step // steps_per_epoch
    for epoch in range(step // steps_per_epoch, epochs):
        start = time.perf_counter()
        epoch_key = jax.random.fold_in(shuffle_key, epoch)
        first_item = (step - epoch * steps_per_epoch) // steps_per_call
        bar = tqdm(total=steps_per_epoch, initial=first_item * steps_per_call,
                   desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, leave=False, unit="step")
        for i, batch in enumerate(epoch_batches(epoch_key, images, labels, batch_size,
                                                steps_per_call=steps_per_call, start=first_item),
                                  start=first_item):
            if mesh is not None:
                batch = shard_batch(batch, mesh, steps_per_call=steps_per_call)
            train_state, metrics = step_fn(train_state, batch)
            pending.append((step, metrics))
            step += steps_per_call
            bar.update(steps_per_call)
            if i % 10 == 9 or i == n_items - 1:
                drain()
                if progress and partial["steps"]:
                    bar.set_postfix(loss=f"{partial['loss'] / partial['steps']:.4f}",
                                    acc=f"{partial['accuracy'] / partial['steps']:.3f}")
            if (checkpoint_dir is not None and checkpoint_every is not None and i < n_items - 1
                    and step // checkpoint_every > (step - steps_per_call) // checkpoint_every):
                save(epoch)
        bar.close()
        drain()
        count = max(partial["steps"], 1)
        record = {"epoch": epoch + 1, "train_loss": partial["loss"] / count,
                  "train_accuracy": partial["accuracy"] / count}
        partial = {"loss": 0.0, "accuracy": 0.0, "steps": 0}
        if test is not None:
            ev = evaluate(model, train_state.params, train_state.state, test, eval_step=eval_step,
                          mesh=mesh)
            record.update(test_loss=ev["loss"], test_accuracy=ev["accuracy"])
        record["seconds"] = time.perf_counter() - start
        history.append(record)
        if checkpoint_dir is not None:
            save(epoch + 1)
        if log is not None:
            log(format_record(record, epochs))
    return train_state, history


def format_record(record: dict[str, float], epochs: int) -> str:
    line = (f"epoch {record['epoch']:>3}/{epochs}  train loss {record['train_loss']:.4f} "
            f"acc {record['train_accuracy']:.4f}")
    if "test_accuracy" in record:
        line += f"  test loss {record['test_loss']:.4f} acc {record['test_accuracy']:.4f}"
    return line + f"  ({record['seconds']:.1f}s)"
