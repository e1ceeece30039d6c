"""Training: a ``TrainState`` pytree, a jit-compiled Optax step, evaluation and ``fit``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

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
    init_key, train_key = jax.random.split(key)
    _, params, state = model.init(init_key, tuple(input_shape))
    return TrainState(jnp.zeros((), jnp.int32), params, state, optimizer.init(params), train_key)


LossFn = Callable[[Any, Any], Any]


def make_train_step(
    model: Layer,
    optimizer: optax.GradientTransformation,
    loss_fn: LossFn = cross_entropy,
    *,
    steps_per_call: int = 1,
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
    """
    if not isinstance(steps_per_call, int) or steps_per_call < 1:
        raise ValueError(f"make_train_step: steps_per_call must be an int >= 1, got {steps_per_call!r}")

    def loss_and_outputs(params, state, images, labels, key):
        logits, new_state = model.apply(params, state, images, key=key, train=True)
        return loss_fn(logits, labels), (new_state, logits)

    grad_fn = jax.value_and_grad(loss_and_outputs, has_aux=True)

    def one_step(ts: TrainState, batch):
        images, labels = batch
        step_key = jax.random.fold_in(ts.key, ts.step)
        (loss, (state, logits)), grads = grad_fn(ts.params, ts.state, images, labels, step_key)
        updates, opt_state = optimizer.update(grads, ts.opt_state, ts.params)
        params = optax.apply_updates(ts.params, updates)
        metrics = {"loss": loss, "accuracy": accuracy(logits, labels)}
        return TrainState(ts.step + 1, params, state, opt_state, ts.key), metrics

    if steps_per_call == 1:
        step = one_step
    else:
        def step(ts, batch):
            return run_steps(one_step, ts, batch, steps_per_call)

    return jax.jit(step, donate_argnums=0)


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

def make_eval_step(model: Layer, loss_fn: LossFn = cross_entropy) -> Callable:
    """A jitted ``(params, state, images, labels, mask) -> (loss_sum, correct_sum)``."""

    def eval_step(params, state, images, labels, mask):
        logits, _ = model.apply(params, state, images, train=False)
        per_example = jax.vmap(lambda lg, lb: loss_fn(lg[None], lb[None]))(logits, labels)
        correct = jnp.argmax(logits, -1) == labels
        return jnp.sum(per_example * mask), jnp.sum(correct * mask)

    return jax.jit(eval_step)


def evaluate(
    model: Layer,
    params: PyTree,
    state: PyTree,
    data: Split | tuple[Any, Any],
    *,
    batch_size: int = 512,
    loss_fn: LossFn = cross_entropy,
    eval_step: Callable | None = None,
) -> dict[str, float]:
    """Mean loss and accuracy over a whole split, in inference mode.

    The last batch is padded to ``batch_size`` (and masked), so every call
    reuses one compiled function.
    """
    images, labels = data
    n = len(labels)
    eval_step = eval_step or make_eval_step(model, loss_fn)
    batch_size = min(batch_size, n)
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
        l, c = eval_step(params, state, xb, yb, mask)
        loss_sum += float(l)
        correct_sum += float(c)
    return {"loss": loss_sum / n, "accuracy": correct_sum / n}


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
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> tuple[TrainState, list[dict[str, float]]]:
    """Trains ``model`` for ``epochs`` passes over shuffled mini-batches.

    Args:
      model: the network; its input shape is taken from ``train``.
      optimizer: an Optax transformation.
      train, test: ``(images, labels)`` splits; ``test`` is evaluated after each epoch.
      epochs, batch_size: the schedule (the last incomplete batch is dropped).
      loss_fn: ``(logits, labels) -> scalar``.
      seed: seeds init and the shuffling; the same seed gives the same result.
      train_state: continue from this state instead of a fresh init.
      steps_per_call: optimizer steps per compiled call (see ``make_train_step``).
      progress: show a tqdm progress bar with the running loss and accuracy.
      log: called with one line per epoch (``None`` for silence).

    Returns:
      ``(train_state, history)``, one history dict per epoch with
      ``train_loss``, ``train_accuracy``, ``test_loss``, ``test_accuracy``, ``seconds``.
    """
    from tqdm.auto import tqdm

    images, labels = train
    if len(images) != len(labels):
        raise ValueError(f"fit: {len(images)} images but {len(labels)} labels")
    key = jax.random.PRNGKey(seed)
    init_key, shuffle_key = jax.random.split(key)
    if train_state is None:
        input_shape = (-1,) + tuple(np.shape(images)[1:])
        train_state = create_train_state(model, init_key, input_shape, optimizer)
    step_fn = make_train_step(model, optimizer, loss_fn, steps_per_call=steps_per_call)
    eval_step = make_eval_step(model, loss_fn)
    images, labels = jnp.asarray(images), jnp.asarray(labels)
    n_items = batches_per_epoch(len(labels), batch_size, steps_per_call)
    history = []
    for epoch in range(epochs):
        start = time.perf_counter()
        epoch_key = jax.random.fold_in(shuffle_key, epoch)
        sums = {"loss": 0.0, "accuracy": 0.0}
        bar = tqdm(total=n_items * steps_per_call, desc=f"epoch {epoch + 1}/{epochs}",
                   disable=not progress, leave=False, unit="step")
        pending = []
        for i, batch in enumerate(epoch_batches(epoch_key, images, labels, batch_size,
                                                steps_per_call=steps_per_call)):
            train_state, metrics = step_fn(train_state, batch)
            pending.append(metrics)
            bar.update(steps_per_call)
            if progress and (i % 10 == 9 or i == n_items - 1):
                bar.set_postfix(loss=f"{float(jnp.mean(metrics['loss'])):.4f}",
                                acc=f"{float(jnp.mean(metrics['accuracy'])):.3f}")
        bar.close()
        for m in jax.device_get(pending):
            for k in sums:
                sums[k] += float(np.mean(m[k]))
        record = {"epoch": epoch + 1,
                  "train_loss": sums["loss"] / max(n_items, 1),
                  "train_accuracy": sums["accuracy"] / max(n_items, 1)}
        if test is not None:
            ev = evaluate(model, train_state.params, train_state.state, test, eval_step=eval_step)
            record.update(test_loss=ev["loss"], test_accuracy=ev["accuracy"])
        record["seconds"] = time.perf_counter() - start
        history.append(record)
        if log is not None:
            log(format_record(record, epochs))
    return train_state, history


def format_record(record: dict[str, float], epochs: int) -> str:
    line = (f"epoch {record['epoch']:>3}/{epochs}  train loss {record['train_loss']:.4f} "
            f"acc {record['train_accuracy']:.4f}")
    if "test_accuracy" in record:
        line += f"  test loss {record['test_loss']:.4f} acc {record['test_accuracy']:.4f}"
    return line + f"  ({record['seconds']:.1f}s)"
