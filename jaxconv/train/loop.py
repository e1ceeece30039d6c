"""``fit``: the training loop, which orchestrates small parts.

- ``plan_run``: the argument checks, and the fixed shape of a run (``Plan``);
- ``Checkpointer``: writes a run's checkpoints and finds the one to resume from;
- ``EpochMetrics``: the running per-step loss and accuracy of an epoch;
- ``run_epoch`` and ``end_epoch``: one pass over the shuffled data, then the
  epoch's record (test metrics, callbacks, checkpoint, log line).

The data are arrays in memory or ``jaxconv.data.Loader``s (image folders read
from disk, ``jaxconv.train.streams``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from tqdm.auto import tqdm

from jaxconv import checkpoint as ckpt
from jaxconv import rundir
from jaxconv.callbacks import CallbackList, FitInfo
from jaxconv.core import Layer, PyTree
from jaxconv.data import Loader, Split, batches_per_epoch, epoch_batches
from jaxconv.distributed import barrier, check_batch_size, check_mesh, fetch, is_primary, replicate, shard_batch
from jaxconv.losses import cross_entropy
from jaxconv.precision import Policy, get_policy
from jaxconv.train.evaluation import evaluate_batches, make_eval_step
from jaxconv.train.inputs import check_labels, check_same_shape, check_split, output_shape
from jaxconv.train.state import TrainState, create_train_state
from jaxconv.train.step import LossFn, MixFn, make_train_step, with_augmentation
from jaxconv.train.streams import LoaderBatches, check_train_loader, evaluate_loader
from jaxconv.validate import boolean, integer, number

# Seeds are ints in [0, MAX_SEED]: JAX's default keys hold 32 bits, and larger
# seeds would alias smaller ones (2**32 and 0 give the same key).
MAX_SEED = 2**32 - 1
# The fields of a Plan that a checkpoint must match to be resumed.
RESUME_FIELDS = ("seed", "batch_size", "steps_per_call", "microbatches", "n_train", "policy", "ema",
                 "clip_norm")


class NonFiniteLossError(FloatingPointError):
    """Training produced a non-finite loss or non-finite parameters."""


class Plan(NamedTuple):
    """The fixed shape of a run (stored in its checkpoints as ``metadata["fit"]``)."""

    seed: int
    batch_size: int
    steps_per_call: int
    microbatches: int
    n_train: int
    epochs: int
    policy: str = "f32"
    ema: float = 0.0
    clip_norm: float = 0.0

    @property
    def items_per_epoch(self) -> int:
        """Compiled calls per epoch (the last incomplete batch is dropped)."""
        return batches_per_epoch(self.n_train, self.batch_size, self.steps_per_call)

    @property
    def steps_per_epoch(self) -> int:
        return self.items_per_epoch * self.steps_per_call


def plan_run(*, n_train: int, epochs: Any, batch_size: Any, seed: Any, steps_per_call: Any,
             microbatches: Any, mesh: Mesh | None, policy: Policy | None = None, ema: Any = None,
             clip_norm: Any = None) -> Plan:
    """Checks the schedule arguments of ``fit`` and returns the run's ``Plan``.

    Raises:
      ValueError: a count below 1, a seed outside ``[0, MAX_SEED]``, ``microbatches``
        not dividing ``batch_size``, a batch larger than the data, a batch
        that does not split over the mesh's ``"data"`` axis, an ``ema`` decay
        outside ``(0, 1)`` or a ``clip_norm`` that is not > 0.
    """
    plan = Plan(seed=integer(seed, "seed", context="fit", minimum=0, maximum=MAX_SEED),
                batch_size=integer(batch_size, "batch_size", context="fit", minimum=1),
                steps_per_call=integer(steps_per_call, "steps_per_call", context="fit", minimum=1),
                microbatches=integer(microbatches, "microbatches", context="fit", minimum=1),
                n_train=n_train, epochs=integer(epochs, "epochs", context="fit", minimum=1),
                policy=(policy or get_policy(None)).name,
                ema=0.0 if ema is None else number(ema, "ema", context="fit", minimum=0, maximum=1,
                                                   exclusive_minimum=True, exclusive_maximum=True),
                clip_norm=0.0 if clip_norm is None else number(clip_norm, "clip_norm", context="fit", minimum=0,
                                                               exclusive_minimum=True))
    if plan.batch_size % plan.microbatches:
        raise ValueError(f"fit: microbatches={plan.microbatches} must divide batch_size={plan.batch_size}")
    if mesh is not None:
        check_batch_size(plan.batch_size, check_mesh(mesh, context="fit"), context="fit")
    if plan.items_per_epoch < 1:
        raise ValueError(f"fit: batch_size * steps_per_call = {plan.batch_size * plan.steps_per_call} "
                         f"exceeds the {n_train} training examples")
    return plan


def _all_finite(tree: PyTree) -> bool:
    """Whether every float leaf of the (replicated) ``tree`` is finite, checked on the host.

    NumPy on host copies: no compilation per leaf shape, as eager JAX ops would need.
    """
    return all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(fetch(tree))
               if jnp.issubdtype(x.dtype, jnp.inexact))


class Checkpointer:
    """Writes a run's checkpoints to one directory and finds the newest intact one to resume from.

    Only process 0 writes (the replicated state is the same on every process);
    with a mesh, every process waits after a write so that others may read it.
    Retention keeps the newest ``keep`` checkpoints up to the one just written
    (``rundir.prune_checkpoints``).

    Attributes:
      last: the newest checkpoint written or resumed from (``None`` before).
    """

    def __init__(self, directory: str, plan: Plan, *, every: int | None, keep: int | None,
                 metadata: dict | None, mesh: Mesh | None):
        self.directory, self.plan, self.every, self.keep = directory, plan, every, keep
        self.metadata, self.mesh = dict(metadata or {}), mesh
        self.last: str | None = None

    def restore(self, like: TrainState, log: Callable[[str], None] | None) -> tuple[TrainState, dict] | None:
        """``(train_state, metadata["fit"])`` of the newest checkpoint that reads back intact, or ``None``.

        Corrupt checkpoints are skipped (and logged); the first intact one must
        have been written with this run's ``RESUME_FIELDS``.
        """
        ckpt.remove_stale_temporaries(self.directory)
        for _, path in reversed(ckpt.list_checkpoints(self.directory)):
            try:
                loaded, meta = ckpt.load_with_metadata(path, like)
            except ckpt.CorruptCheckpointError as e:
                if log is not None:
                    log(f"skipping {e}")
                continue
            except ckpt.CheckpointError:  # another tree: say so if the run's settings explain it
                self._check_fields(path, ckpt.read_metadata(path).get("fit", {}))
                raise
            info = meta.get("fit", {})
            self._check_fields(path, info)
            self.last = path
            return loaded, info
        return None

    def _check_fields(self, path: str, info: dict) -> None:
        """Raises unless a checkpoint's ``metadata["fit"]`` has this run's ``RESUME_FIELDS``."""
        for name in RESUME_FIELDS:
            if name in info and info[name] != getattr(self.plan, name):
                raise ValueError(f"fit: cannot resume from {path}: it was written with {name}="
                                 f"{info[name]!r}, this run has {name}={getattr(self.plan, name)!r}")

    def due(self, step: int) -> bool:
        """Whether the call that reached ``step`` crossed a multiple of ``every`` (mid-epoch checkpoints)."""
        return self.every is not None and step // self.every > (step - self.plan.steps_per_call) // self.every

    def save(self, train_state: TrainState, step: int, progress: dict[str, Any]) -> None:
        """Writes ``train_state`` with ``progress`` (``epochs_done``, ``history``, ``partial``).

        Raises:
          NonFiniteLossError: the parameters are not finite (nothing is written).
        """
        if not _all_finite(train_state.params):
            raise NonFiniteLossError(f"non-finite parameters after step {step}")
        meta = dict(self.metadata, fit=dict(self.plan._asdict(), step=step, **progress))
        if is_primary():
            self.last = ckpt.save_checkpoint(self.directory, step, train_state, meta, keep=None)
            rundir.prune_checkpoints(self.directory, step, self.keep)
        if self.mesh is not None:
            barrier(self.mesh)


class EpochMetrics:
    """Running sums of the per-step loss and accuracy of one epoch.

    Step metrics stay on the device until ``drain`` fetches them as a group,
    so the host does not wait on every step. ``sums`` goes into mid-epoch
    checkpoints, so a resumed epoch reports what an uninterrupted one would.
    """

    def __init__(self, sums: dict[str, Any] | None = None, callbacks: CallbackList | None = None):
        self.sums = dict(sums) if sums else {"loss": 0.0, "accuracy": 0.0, "steps": 0}
        self._pending: list[tuple[int, dict[str, Any]]] = []
        self.callbacks = callbacks
        self.stop = False  # a callback's on_step_end asked to stop

    def add(self, first_step: int, metrics: dict[str, Any]) -> None:
        """Queues the metrics of the call whose first step is ``first_step`` (0-based)."""
        self._pending.append((first_step, metrics))

    def drain(self) -> None:
        """Adds the queued metrics to the sums, calling the callbacks' ``on_step_end`` for each step.

        Raises:
          NonFiniteLossError: naming the (1-based) step of the first NaN/inf loss.
        """
        for first, metrics in jax.device_get(self._pending):
            losses, accs = np.reshape(metrics["loss"], -1), np.reshape(metrics["accuracy"], -1)
            for j, (loss, acc) in enumerate(zip(losses, accs)):
                if not np.isfinite(loss):
                    raise NonFiniteLossError(f"non-finite loss {float(loss)} at step {first + j + 1}")
                self.sums["loss"] += float(loss)
                self.sums["accuracy"] += float(acc)
                self.sums["steps"] += 1
                if self.callbacks is not None and self.callbacks.step_end(
                        first + j + 1, {"loss": float(loss), "accuracy": float(acc)}):
                    self.stop = True
        self._pending.clear()

    def means(self) -> tuple[float, float]:
        """Mean loss and accuracy over the steps drained so far."""
        count = max(self.sums["steps"], 1)
        return self.sums["loss"] / count, self.sums["accuracy"] / count


class Run(NamedTuple):
    """What every epoch of a ``fit`` uses."""

    plan: Plan
    train_step: Any
    eval_step: Any
    train: tuple[Any, Any] | LoaderBatches
    test: tuple[Any, Any] | Loader | None
    shuffle_key: Any
    checkpointer: Checkpointer | None
    mesh: Mesh | None
    progress: bool
    log: Callable[[str], None] | None
    callbacks: CallbackList


def _progress(run: Run, epochs_done: int, history: list, partial: dict, stopped: bool = False) -> dict:
    """The ``progress`` part of a checkpoint's ``metadata["fit"]`` (callbacks' state included)."""
    progress = {"epochs_done": epochs_done, "history": history, "partial": partial, "stopped": stopped,
                "callbacks": run.callbacks.state()}
    if isinstance(run.train, LoaderBatches):
        progress.update(data_state=run.train.state, data_seed=run.train.loader.layout.seed)
    return progress


def _check_data_seed(train: Any, info: dict[str, Any]) -> None:
    """A run resumed on a ``Loader`` must read it with the seed its checkpoint was written with."""
    if isinstance(train, Loader) and info.get("data_seed", train.layout.seed) != train.layout.seed:
        raise ValueError(f"fit: cannot resume: the checkpoint was written with a Loader of seed "
                         f"{info['data_seed']}, this run's Loader has seed {train.layout.seed}")


def _epoch_items(run: Run, epoch: int, first_item: int) -> Any:
    """The compiled calls' batches of ``epoch`` from item ``first_item`` (placed on the mesh, if any)."""
    plan = run.plan
    if isinstance(run.train, LoaderBatches):
        return run.train.epoch(epoch, first_item)
    batches = epoch_batches(jax.random.fold_in(run.shuffle_key, epoch), *run.train, plan.batch_size,
                            steps_per_call=plan.steps_per_call, start=first_item)
    if run.mesh is None:
        return batches
    return (shard_batch(batch, run.mesh, steps_per_call=plan.steps_per_call) for batch in batches)


def run_epoch(run: Run, ts: TrainState, step: int, epoch: int, metrics: EpochMetrics,
              history: list[dict[str, float]]) -> tuple[TrainState, int]:
    """Trains from ``step`` to the end of ``epoch``; returns ``(train_state, step)``.

    Checkpoints every ``checkpoint_every`` steps, except at the epoch's last
    call (``end_epoch`` writes that one). Ends early when a callback's
    ``on_step_end`` asked to stop (``metrics.stop``).
    """
    plan = run.plan
    first_item = (step - epoch * plan.steps_per_epoch) // plan.steps_per_call
    bar = tqdm(total=plan.steps_per_epoch, initial=first_item * plan.steps_per_call,
               desc=f"epoch {epoch + 1}/{plan.epochs}", disable=not run.progress, leave=False, unit="step")
    for i, batch in enumerate(_epoch_items(run, epoch, first_item), start=first_item):
        ts, step_metrics = run.train_step(ts, batch)
        metrics.add(step, step_metrics)
        step += plan.steps_per_call
        bar.update(plan.steps_per_call)
        last = i == plan.items_per_epoch - 1
        if i % 10 == 9 or last:
            metrics.drain()
            if run.progress and metrics.sums["steps"]:
                loss, acc = metrics.means()
                bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.3f}")
        if metrics.stop:
            break
        if run.checkpointer is not None and not last and run.checkpointer.due(step):
            metrics.drain()
            run.checkpointer.save(ts, step, _progress(run, epoch, history, metrics.sums))
    bar.close()
    return ts, step


def _test_metrics(run: Run, ts: TrainState) -> dict[str, float]:
    """Loss and accuracy of the (EMA) params on ``run.test``: arrays, or a ``Loader``'s padded batches."""
    if isinstance(run.test, Loader):
        return evaluate_loader(run.eval_step, ts.eval_params, ts.state, run.test, mesh=run.mesh)
    return evaluate_batches(run.eval_step, ts.eval_params, ts.state, *run.test, batch_size=512, mesh=run.mesh)


def end_epoch(run: Run, ts: TrainState, step: int, epoch: int, metrics: EpochMetrics,
              history: list[dict[str, float]], start: float) -> bool:
    """Appends the epoch's record to ``history``, gives it to the callbacks, checkpoints and logs it.

    The record's ``seconds`` count from ``start`` (``time.perf_counter``) to
    the end of the test evaluation, which uses the EMA params when there are.
    Returns whether the run stops here (a callback asked, at a step or now).
    """
    metrics.drain()
    train_loss, train_accuracy = metrics.means()
    record = {"epoch": epoch + 1, "train_loss": train_loss, "train_accuracy": train_accuracy}
    if run.test is not None:
        ev = _test_metrics(run, ts)
        record.update(test_loss=ev["loss"], test_accuracy=ev["accuracy"])
    record["seconds"] = time.perf_counter() - start
    history.append(record)
    stop = run.callbacks.epoch_end(epoch + 1, record, ts) or metrics.stop
    if run.checkpointer is not None:
        run.checkpointer.save(ts, step, _progress(run, epoch + 1, history, EpochMetrics().sums, stop))
    if run.log is not None:
        run.log(format_record(record, run.plan.epochs))
        if stop:
            run.log(f"stopped after epoch {epoch + 1} at step {step}: a callback asked to stop")
    return stop


def train_epochs(run: Run, ts: TrainState, history: list[dict[str, float]],
                 sums: dict[str, Any] | None) -> TrainState:
    """Runs the epochs left after ``ts.step``, until a callback stops the run; ``sums``: the
    partial epoch's metrics (resume).

    Raises:
      NonFiniteLossError: naming the step, the epoch and the last good checkpoint.
    """
    step = int(ts.step)
    epoch = step // run.plan.steps_per_epoch
    try:
        for epoch in range(step // run.plan.steps_per_epoch, run.plan.epochs):
            start = time.perf_counter()
            metrics = EpochMetrics(sums, run.callbacks)
            ts, step = run_epoch(run, ts, step, epoch, metrics, history)
            sums = None
            if end_epoch(run, ts, step, epoch, metrics, history, start):
                break
    except NonFiniteLossError as e:
        last = run.checkpointer.last if run.checkpointer is not None else None
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written"
        raise NonFiniteLossError(f"fit: {e} (epoch {epoch + 1}); training stopped, {kept}") from None
    return ts


def _check_checkpointing(checkpoint_dir: str | None, checkpoint_every: Any, keep: Any, resume: Any) -> None:
    """The checkpoint arguments of ``fit``: counts of at least 1 (or ``None``), resume with a directory."""
    if checkpoint_every is not None:
        integer(checkpoint_every, "checkpoint_every", context="fit", minimum=1)
    if keep is not None:
        integer(keep, "keep", context="fit", minimum=1)
    if boolean(resume, "resume", context="fit") and checkpoint_dir is None:
        raise ValueError("fit: resume=True needs checkpoint_dir")


def _writer_lock(checkpoint_dir: str | None) -> contextlib.AbstractContextManager:
    """The lock of ``checkpoint_dir`` on process 0, which writes there; nothing elsewhere."""
    if checkpoint_dir is None or not is_primary():
        return contextlib.nullcontext()
    return rundir.locked(checkpoint_dir, context="fit")


def _start(checkpointer: Checkpointer, ts: TrainState, resume: bool, log: Callable[[str], None] | None
           ) -> tuple[TrainState, dict[str, Any]]:
    """``(train_state, metadata["fit"] of the checkpoint)`` to start from: resumed, or fresh (``{}``).

    A fresh run refuses a directory that already holds checkpoints (their
    retention would mix with its own).
    """
    if not resume:
        if is_primary():
            rundir.check_fresh(checkpointer.directory, context="fit")
        return ts, {}
    restored = checkpointer.restore(ts, log)
    if restored is None:
        return ts, {}
    ts, info = restored
    if log is not None:
        log(f"resumed from {checkpointer.last} at step {int(ts.step)}"
            + (" (a callback had stopped the run there)" if info.get("stopped") else ""))
    return ts, info


def _loader_example(loader: Loader) -> np.ndarray:
    """One zero image shaped like ``loader``'s: ``(1, H, W, C)`` float32 (for shapes only)."""
    pre = loader.split.preprocess
    return np.zeros((1, *pre.image_size, pre.channels), np.float32)


def _checked_splits(train: Any, test: Any) -> tuple[Any, Any, tuple[Any, Any] | Loader | None]:
    """``(train images, train labels, test)`` after checking both splits (see ``fit``).

    For a ``Loader`` the images are one zero example of its shape and the
    labels those of its whole split.
    """
    if isinstance(train, Loader):
        check_train_loader(train, context="fit")
        images, labels = _loader_example(train), train.split.labels
    else:
        images, labels = check_split(train, name="train", context="fit")
    if isinstance(test, Loader):
        check_same_shape(images, _loader_example(test), names=("train", "test"), context="fit")
    elif test is not None:
        test = check_split(test, name="test", context="fit")
        check_same_shape(images, test[0], names=("train", "test"), context="fit")
    return images, labels, test


def _check_labels(model: Layer, ts: TrainState, images: Any, labels: Any, test: Any) -> None:
    """Every class id of both splits must be a class of the model (see ``check_labels``)."""
    output = output_shape(model, ts.params, ts.state, images)
    test_labels = test.split.labels if isinstance(test, Loader) else None if test is None else test[1]
    for name, split in (("train", labels), ("test", test_labels)):
        if split is not None:
            check_labels(split, output, name=name, context="fit")


def _train_source(train: Any, images: Any, labels: Any, plan: Plan, mesh: Mesh | None
                  ) -> tuple[Any, Any] | LoaderBatches:
    """What ``Run.train`` holds: the arrays on the device, or a ``Loader``'s ``LoaderBatches``."""
    if isinstance(train, Loader):
        return LoaderBatches(train, steps_per_call=plan.steps_per_call, epochs=plan.epochs, mesh=mesh)
    return jnp.asarray(images), jnp.asarray(labels)


def _batch_size(train: Any, batch_size: Any) -> Any:
    """``fit``'s batch size: a ``Loader``'s own (``batch_size`` must be it or ``None``), else 64 by default."""
    if not isinstance(train, Loader):
        return 64 if batch_size is None else batch_size
    size = train.layout.batch_size
    if batch_size is not None and batch_size != size:
        raise ValueError(f"fit: batch_size={batch_size!r} differs from the Loader's batch_size {size} "
                         "(leave it None)")
    return size


def fit(
    model: Layer,
    optimizer: optax.GradientTransformation,
    train: Split | tuple[Any, Any] | Loader,
    *,
    test: Split | tuple[Any, Any] | Loader | None = None,
    epochs: int = 10,
    batch_size: int | None = None,
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
    callbacks: list | tuple | None = None,
    policy: str | Policy | None = None,
    ema: float | None = None,
    clip_norm: float | None = None,
    mix: MixFn | None = None,
) -> tuple[TrainState, list[dict[str, float]]]:
    """Trains ``model`` for ``epochs`` passes over shuffled mini-batches.

    Randomness depends only on ``(seed, epoch, step)``: epoch ``e`` is shuffled
    with ``fold_in(shuffle_key, e)`` and step ``t`` uses ``fold_in(key, t)``
    (dropout, augmentation). A run resumed from a checkpoint therefore ends
    with bitwise the same parameters as an uninterrupted one.

    The data are checked once, on the host, before anything is compiled: both
    splits non-empty, as many labels as images, the same image shape, and
    integer labels in ``[0, K)`` for a model with ``K`` outputs.

    Args:
      model: the network; its input shape is taken from ``train``.
      optimizer: an Optax transformation.
      train, test: ``(images, labels)`` splits, or ``jaxconv.data.Loader``s of
        an image folder's splits; ``test`` is evaluated after each epoch. A
        training ``Loader`` (``drop_remainder=True``) is read through one
        resumable stream whose state each checkpoint keeps
        (``metadata["fit"]["data_state"]``, with ``data_seed``); its seed orders
        and augments the images (a resumed run must use the same), ``seed``
        still seeds init and the step keys. A test ``Loader``
        (``shuffle=False, drop_remainder=False``) has its padding rows masked.
      epochs, batch_size: the schedule (the last incomplete batch is dropped);
        ``batch_size`` defaults to 64, or to a ``Loader``'s own batch size.
      loss_fn: ``(logits, labels) -> scalar``.
      seed: an int in ``[0, MAX_SEED]`` (``2**32 - 1``); it seeds init,
        shuffling and augmentation, and the same seed gives the same result.
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
        end of every epoch and every ``checkpoint_every`` steps. The run holds
        the directory's lock meanwhile (``jaxconv.rundir``); a fresh run
        (``resume=False``) refuses a directory that already holds checkpoints.
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
        its own rows of each batch. The progress bar, ``log``, the lock and the
        checkpoints are process 0's only.
      callbacks: objects with hooks at step and epoch ends that may stop the
        run (``jaxconv.callbacks``: ``EarlyStopping``, ``BestCheckpoint``,
        ``CSVLogger``, ``TensorBoard``). Their state is saved in every
        checkpoint and restored on resume; a stopped run stays stopped.
      policy: the precision policy, ``"f32"`` (default), ``"bf16"`` or ``"fp16"``
        (dynamic loss scaling), or a ``jaxconv.precision.Policy``; evaluation
        uses it too.
      ema: keep an exponential moving average of the params with this decay in
        ``(0, 1)`` (e.g. ``0.999``; ramped up over the first steps, see
        ``jaxconv.train.ema_decay_at``). Evaluation uses the EMA params with the
        layer state (BatchNorm running statistics) of the trained params.
      clip_norm: clip the gradients to this global norm before the optimizer.
      mix: a batch mix ``(key, images, labels) -> (images, targets)`` applied in
        the step before ``augment`` (``jaxconv.augment.mixup``, ``cutmix``,
        ``mixing``); ``loss_fn`` then receives probability targets.

    Returns:
      ``(train_state, history)`` (ended early if a callback stopped the run), one history dict per epoch with
      ``train_loss``, ``train_accuracy``, ``test_loss``, ``test_accuracy``, ``seconds``.

    Raises:
      ValueError: a bad argument or data set (see above); a checkpoint to resume
        from that was written with another seed, batch size, ``steps_per_call``,
        ``microbatches``, training-set size, ``policy``, ``ema`` or ``clip_norm``.
      jaxconv.rundir.RunDirectoryError: ``checkpoint_dir`` is in use by another
        process (``DirectoryLockedError``), or holds checkpoints and ``resume`` is off.
      NonFiniteLossError: a loss (or the parameters) became NaN/inf; the message
        names the step (the 1-based count of optimizer steps) and the last good
        checkpoint, which is kept.
    """
    images, labels, test = _checked_splits(train, test)
    policy = get_policy(policy, context="fit")
    plan = plan_run(n_train=len(labels), epochs=epochs, batch_size=_batch_size(train, batch_size), seed=seed,
                    steps_per_call=steps_per_call, microbatches=microbatches, mesh=mesh, policy=policy,
                    ema=ema, clip_norm=clip_norm)
    _check_checkpointing(checkpoint_dir, checkpoint_every, keep, resume)
    callbacks = CallbackList(callbacks)
    if not is_primary():
        progress, log = False, None
    init_key, shuffle_key = jax.random.split(jax.random.PRNGKey(plan.seed))
    if train_state is None:
        train_state = create_train_state(model, init_key, (-1,) + tuple(np.shape(images)[1:]), optimizer,
                                         ema=plan.ema > 0, policy=policy)
    _check_labels(model, train_state, images, labels, test)
    checkpointer = None if checkpoint_dir is None else Checkpointer(
        checkpoint_dir, plan, every=checkpoint_every, keep=keep, metadata=metadata, mesh=mesh)
    with _writer_lock(checkpoint_dir):
        info = {}
        if checkpointer is not None:
            train_state, info = _start(checkpointer, train_state, resume, log)
            _check_data_seed(train, info)
        if int(train_state.step) % plan.steps_per_call:
            raise ValueError(f"fit: step {int(train_state.step)} of the train state is not a multiple of "
                             f"steps_per_call={plan.steps_per_call}")
        callbacks.restore(info.get("callbacks", {}))
        history = list(info.get("history", []))
        train_step = make_train_step(with_augmentation(model, augment), optimizer, loss_fn,
                                     steps_per_call=plan.steps_per_call, microbatches=plan.microbatches, mesh=mesh,
                                     policy=policy, mix=mix, clip_norm=plan.clip_norm or None,
                                     ema_decay=plan.ema or None)
        run = Run(plan, train_step, make_eval_step(model, loss_fn, mesh=mesh, policy=policy),
                  _train_source(train, images, labels, plan, mesh), test, shuffle_key, checkpointer, mesh, progress,
                  log, callbacks)
        if mesh is not None:
            train_state = replicate(train_state, mesh)
        callbacks.fit_start(FitInfo(checkpoint_dir, dict(metadata or {}), plan.epochs, plan.steps_per_epoch,
                                    int(train_state.step), list(history), bool(info), is_primary()))
        try:
            if not info.get("stopped"):
                train_state = train_epochs(run, train_state, history, info.get("partial"))
        finally:
            if isinstance(run.train, LoaderBatches):
                run.train.close()
            callbacks.fit_end(history)
        return train_state, history


def format_record(record: dict[str, float], epochs: int) -> str:
    """One log line for an epoch's ``record`` (``fit``'s history entries)."""
    line = (f"epoch {record['epoch']:>3}/{epochs}  train loss {record['train_loss']:.4f} "
            f"acc {record['train_accuracy']:.4f}")
    if "test_accuracy" in record:
        line += f"  test loss {record['test_loss']:.4f} acc {record['test_accuracy']:.4f}"
    return line + f"  ({record['seconds']:.1f}s)"
