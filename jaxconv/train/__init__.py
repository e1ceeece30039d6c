"""Training: a ``TrainState`` pytree, a jit-compiled Optax step, evaluation and ``fit``.

The parts, each a module of small factories and pure functions:

- ``state``: ``TrainState``, ``create_train_state``;
- ``step``: ``make_train_step`` and the factories it composes (``loss_and_grad``,
  ``microbatched``, ``optimizer_step``, ``repeated``, ``compile_step``), and the
  recipe's pieces (``clipped``, ``ema_decay_at``, ``updated_ema``);
- ``evaluation``: ``make_eval_step``, ``evaluate``, ``predict``;
- ``inputs``: the checks of the data that enters ``fit`` and ``evaluate``;
- ``loop``: ``fit`` and the parts it orchestrates;
- ``streams``: ``fit``'s batches from a ``jaxconv.data.Loader`` (``LoaderBatches``)
  and ``evaluate_loader``.

Optimizers and schedules by name live in ``jaxconv.recipes``.
"""

from jaxconv.train.evaluation import evaluate as evaluate
from jaxconv.train.evaluation import make_eval_step as make_eval_step
from jaxconv.train.evaluation import predict as predict
from jaxconv.train.loop import MAX_SEED as MAX_SEED
from jaxconv.train.loop import NonFiniteLossError as NonFiniteLossError
from jaxconv.train.loop import fit as fit
from jaxconv.train.loop import format_record as format_record
from jaxconv.train.state import TrainState as TrainState
from jaxconv.train.state import create_train_state as create_train_state
from jaxconv.train.step import clipped as clipped
from jaxconv.train.step import compile_step as compile_step
from jaxconv.train.step import contains_convolution as contains_convolution
from jaxconv.train.step import ema_decay_at as ema_decay_at
from jaxconv.train.step import loss_and_grad as loss_and_grad
from jaxconv.train.step import make_train_step as make_train_step
from jaxconv.train.step import microbatched as microbatched
from jaxconv.train.step import optimizer_step as optimizer_step
from jaxconv.train.step import repeated as repeated
from jaxconv.train.step import run_steps as run_steps
from jaxconv.train.step import updated_ema as updated_ema
from jaxconv.train.step import with_augmentation as with_augmentation
from jaxconv.train.streams import LoaderBatches as LoaderBatches
from jaxconv.train.streams import evaluate_loader as evaluate_loader

__all__ = [
    "LoaderBatches",
    "MAX_SEED",
    "NonFiniteLossError",
    "TrainState",
    "clipped",
    "compile_step",
    "contains_convolution",
    "create_train_state",
    "ema_decay_at",
    "evaluate",
    "evaluate_loader",
    "fit",
    "format_record",
    "loss_and_grad",
    "make_eval_step",
    "make_train_step",
    "microbatched",
    "optimizer_step",
    "predict",
    "repeated",
    "run_steps",
    "updated_ema",
    "with_augmentation",
]
