"""The command line's argument table and the checks of the values it parses."""

from __future__ import annotations

import argparse
import os
from typing import Any

from jaxconv import augment
from jaxconv.checkpoint import latest_checkpoint
from jaxconv.cli.converter import cmd_convert
from jaxconv.cli.exporter import cmd_export
from jaxconv.cli.predict import cmd_predict
from jaxconv.cli.tools import cmd_bench, cmd_summary, cmd_verify
from jaxconv.cli.training import DEFAULT_AUGMENT, FOLDER_DATASET, cmd_evaluate, cmd_train
from jaxconv.models import MODELS
from jaxconv.precision import POLICIES
from jaxconv.recipes import OPTIMIZERS, SCHEDULES
from jaxconv.rundir import BEST_FILE, CSV_FILE, EXPORTS, TENSORBOARD_DIR, check_output_dir
from jaxconv.train import MAX_SEED
from jaxconv.validate import int_tuple, integer, number

DATASETS = ["digits", "mnist", "fashion_mnist", "cifar10"]

# The int options of each command: (dest, minimum, maximum); None means "not given" and is not checked.
INT_OPTIONS = {
    "train": (("epochs", 1, None), ("batch_size", 1, None), ("seed", 0, MAX_SEED),
              ("steps_per_call", 1, None), ("microbatches", 1, None), ("checkpoint_every", 1, None),
              ("keep", 1, None), ("devices", 1, None), ("num_processes", 1, None), ("process_id", 0, None),
              ("early_stopping", 1, None), ("workers", 0, None)),
    "predict": (("top_k", 1, None), ("batch_size", 1, None)),
    "summary": (("num_classes", 1, None),),
    "convert": (("num_classes", 1, None),),
    "verify": (("cases", 1, None), ("seed", 0, MAX_SEED)),
    "bench": (("rounds", 1, None),),
}


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr (exit status 2), without the usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def warmup_value(text: str, *, context: str) -> int | float:
    """``--warmup-steps``: an int count of steps (``100``) or a fraction of the run in (0, 1) (``0.05``)."""
    try:
        value = int(text) if text.strip().lstrip("+").isdigit() else float(text)
    except ValueError:
        value = None
    if value is None or (isinstance(value, int) and value < 0) or (
            isinstance(value, float) and not 0 < value < 1):
        raise ValueError(f"{context}: --warmup-steps must be an int >= 0 or a fraction in (0, 1), got {text!r}")
    return value


def _check_recipe_args(args: argparse.Namespace, context: str) -> None:
    """``--warmup-steps`` (converted in place), ``--clip-norm``, ``--ema`` and ``--augment``."""
    args.warmup_steps = warmup_value(args.warmup_steps, context=context)
    if args.clip_norm is not None:
        number(args.clip_norm, "--clip-norm", context=context, minimum=0, exclusive_minimum=True)
    if args.ema is not None:
        number(args.ema, "--ema", context=context, minimum=0, maximum=1, exclusive_minimum=True,
               exclusive_maximum=True)
    spec = DEFAULT_AUGMENT[FOLDER_DATASET if args.data else args.dataset] if args.augment == "auto" else args.augment
    try:
        augment.parse(spec)
    except ValueError as e:
        raise ValueError(f"{context}: {e}") from None


def _check_train_args(args: argparse.Namespace) -> None:
    """The values of ``jaxconv train`` that are not plain counts, and its output directory."""
    context = "jaxconv train"
    number(args.lr, "--lr", context=context, minimum=0, exclusive_minimum=True)
    number(args.weight_decay, "--weight-decay", context=context, minimum=0)
    number(args.label_smoothing, "--label-smoothing", context=context, minimum=0, maximum=1,
           exclusive_maximum=True)
    if args.batch_size % args.microbatches:
        raise ValueError(f"{context}: --microbatches {args.microbatches} must divide --batch-size "
                         f"{args.batch_size}")
    if args.process_id is not None and args.num_processes is not None:  # one of --num-processes P
        integer(args.process_id, "--process-id", context=context, minimum=0, maximum=args.num_processes - 1)
    _check_recipe_args(args, context)
    _check_folder_args(args, context)
    if args.init_from is not None and latest_checkpoint(os.path.join(args.init_from, "checkpoints")) is None:
        raise ValueError(f"{context}: --init-from {args.init_from} holds no run checkpoint "
                         "(a directory written by `jaxconv train` or `jaxconv convert`)")
    check_output_dir(args.out, context=f"{context}: --out")


def _check_folder_args(args: argparse.Namespace, context: str) -> None:
    """``--data DIR`` (a folder) needs ``--image-size`` (parsed in place: ``S`` or ``H,W``)."""
    if args.data is None:
        for flag, value in (("--image-size", args.image_size), ("--workers", args.workers or None),
                            ("--host-augment", args.host_augment or None)):
            if value is not None:
                raise ValueError(f"{context}: {flag} applies to an image folder (--data DIR) only")
        return
    if not os.path.isdir(args.data):
        raise ValueError(f"{context}: --data {args.data} is not a folder")
    if args.image_size is None:
        raise ValueError(f"{context}: --data needs --image-size S (or H,W): the size every image is resized to")
    try:
        dims = [int(d) for d in args.image_size.split(",")]
    except ValueError:
        dims = args.image_size
    dims = dims * 2 if isinstance(dims, list) and len(dims) == 1 else dims
    args.image_size = int_tuple(dims, "--image-size", context=context, length=2, minimum=1)


def _check_convert_args(args: argparse.Namespace) -> None:
    """``jaxconv convert``: the weights file, ``--input-shape`` (parsed in place) and ``--out``."""
    context = "jaxconv convert"
    if not os.path.isfile(args.torch):
        raise ValueError(f"{context}: --torch {args.torch} is not a file")
    if args.input_shape is not None:
        try:
            dims = [int(d) for d in args.input_shape.split(",")]
        except ValueError:
            dims = args.input_shape
        args.input_shape = int_tuple(dims, "--input-shape", context=context, length=3, minimum=1)
    check_output_dir(args.out, context=f"{context}: --out")


def check_args(args: argparse.Namespace) -> None:
    """Checks every value of the parsed command line, before anything runs.

    Raises:
      ValueError: one line, ``jaxconv train: --epochs must be an int >= 1, got 0``.
    """
    context = f"jaxconv {args.command}"
    for dest, minimum, maximum in INT_OPTIONS.get(args.command, ()):
        value = getattr(args, dest)
        if value is not None:
            flag = "--" + dest.replace("_", "-")
            integer(value, flag, context=context, minimum=minimum, maximum=maximum)
    if args.command == "train":
        _check_train_args(args)
    if args.command == "convert":
        _check_convert_args(args)
    if args.command == "export" and args.batch != "dynamic" and not (args.batch.isdigit() and int(args.batch) >= 1):
        raise ValueError(f"{context}: --batch must be 'dynamic' or an int >= 1, got {args.batch!r}")


def _train_arguments(train: argparse.ArgumentParser) -> None:
    """``jaxconv train``: the data, the model, the optimizer, the run directory."""
    train.add_argument("--dataset", default="digits", choices=DATASETS)
    train.add_argument("--data-dir", default=None,
                       help="directory with the data set files (default $JAXCONV_DATA or ./data)")
    train.add_argument("--data", default=None, metavar="DIR",
                       help="train on an image folder (DIR/<class>/<image>, or DIR/train and DIR/val) "
                            "read from disk, instead of --dataset")
    train.add_argument("--model", default="digits_cnn", choices=sorted(MODELS))
    train.add_argument("--optimizer", default="adamw", choices=list(OPTIMIZERS))
    train.add_argument("--lr", type=float, default=3e-3, help="(peak) learning rate, > 0")
    train.add_argument("--schedule", default="onecycle", choices=list(SCHEDULES))
    train.add_argument("--weight-decay", type=float, default=1e-4, help=">= 0")
    train.add_argument("--label-smoothing", type=float, default=0.1, help="in [0, 1)")
    train.add_argument("--augment", default="auto",
                       help="'auto' (per data set), 'none', or a comma list of crop:P, flip, cutout:S, "
                            "mixup:ALPHA and cutmix:ALPHA (both: one of the two per batch)")
    train.add_argument("--epochs", type=int, default=None, help="default 30 on digits, else 10")
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--seed", type=int, default=0, help=f"an int in [0, {MAX_SEED}] (2**32 - 1)")
    train.add_argument("--impl", default="auto", choices=["auto", "lax", "patches"],
                       help="convolution implementation (default: auto, per backend and shape)")
    train.add_argument("--steps-per-call", type=int, default=1, metavar="K",
                       help="optimizer steps per compiled call (default 1)")
    train.add_argument("--microbatches", type=int, default=1, metavar="M",
                       help="split each batch into M micro-batches inside the step, one "
                            "update from their mean gradient (default 1; see make_train_step)")
    train.add_argument("--out", default="runs/latest",
                       help="output directory; it belongs to one run (see --resume, --overwrite)")
    train.add_argument("--checkpoint-every", type=int, default=None,
                       help="also checkpoint every N steps (always at the end of each epoch)")
    train.add_argument("--keep", type=int, default=3, help="number of newest checkpoints kept")
    owner = train.add_mutually_exclusive_group()
    owner.add_argument("--resume", action="store_true",
                       help="continue the run in --out from its newest complete checkpoint "
                            "(with the options it was started with)")
    owner.add_argument("--overwrite", action="store_true",
                       help="replace the run in --out: delete the files jaxconv wrote there first")
    train.add_argument("--init-from", default=None, metavar="DIR",
                       help="start from the weights of the run in DIR (e.g. `jaxconv convert`'s); layers "
                            "whose shape differs, such as a head for other classes, start fresh")


def _recipe_arguments(train: argparse.ArgumentParser) -> None:
    """``jaxconv train``: the recipe beyond the optimizer (warmup, clipping, EMA, precision, callbacks)."""
    recipe = train.add_argument_group("recipe", "training options beyond the optimizer")
    recipe.add_argument("--warmup-steps", default="0", metavar="W",
                        help="linear learning-rate warmup before the schedule: W steps, or a fraction of "
                             "the run such as 0.05 (default 0: none; warmup_cosine: 5%%)")
    recipe.add_argument("--clip-norm", type=float, default=None, metavar="C",
                        help="clip the gradients to global norm C")
    recipe.add_argument("--ema", type=float, default=None, metavar="DECAY",
                        help="keep an exponential moving average of the params (e.g. 0.999); evaluation, "
                             "checkpoints' 'ema' entry and export use it")
    recipe.add_argument("--precision", default="f32", choices=list(POLICIES),
                        help="f32, bf16 (bfloat16 compute) or fp16 (float16 compute, dynamic loss scaling)")
    recipe.add_argument("--early-stopping", type=int, default=None, metavar="PATIENCE",
                        help="stop when --monitor has not improved for PATIENCE epochs")
    recipe.add_argument("--monitor", default="test_loss",
                        choices=["test_loss", "test_accuracy", "train_loss", "train_accuracy"],
                        help="the metric of --early-stopping and --save-best (default test_loss; "
                             "losses are minimised, accuracies maximised)")
    recipe.add_argument("--save-best", action="store_true",
                        help=f"keep the best epoch's checkpoint in OUT/{BEST_FILE}")
    recipe.add_argument("--csv", action="store_true", help=f"write the history to OUT/{CSV_FILE}")
    recipe.add_argument("--tensorboard", action="store_true",
                        help=f"write TensorBoard event files to OUT/{TENSORBOARD_DIR}/ (needs tensorboardX)")


def _folder_and_device_arguments(train: argparse.ArgumentParser) -> None:
    """``jaxconv train``: image folders, output switches, devices and hosts."""
    folder = train.add_argument_group("image folders", "options of --data DIR")
    folder.add_argument("--image-size", default=None, metavar="S",
                        help="the size every image is resized to: S or H,W (required with --data)")
    folder.add_argument("--channels", type=int, default=3, choices=[1, 3], help="3 (RGB, default) or 1 (grey)")
    folder.add_argument("--workers", type=int, default=0, metavar="N",
                        help="loader worker processes (default 0: read in this process)")
    folder.add_argument("--host-augment", action="store_true",
                        help="random resized crop and flip on the host, per image (data.Augment())")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train.add_argument("--no-plots", action="store_true", help="do not write the PNG plots")
    scale = train.add_argument_group(
        "devices and hosts", "data-parallel training over a device mesh; the multi-host settings "
        "default to the environment variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID")
    scale.add_argument("--devices", type=int, default=None, metavar="N",
                       help="train on N devices (default: all; the batch must divide by N)")
    scale.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                       help="address of process 0 of a multi-host run")
    scale.add_argument("--num-processes", type=int, default=None, metavar="P",
                       help="number of processes of a multi-host run")
    scale.add_argument("--process-id", type=int, default=None, metavar="I",
                       help="this process's index in [0, P)")
    scale.add_argument("--auto-distributed", action="store_true",
                       help="let JAX detect the cluster (Cloud TPU pod slice, SLURM, Open MPI, Kubernetes)")


def _run_commands(sub: Any) -> None:
    """``evaluate``, ``predict``, ``export`` and ``convert``: the commands that read or write a run."""
    evaluate = sub.add_parser("evaluate", help="reload a training run and report its test accuracy "
                                               "(an image folder run: its validation split)")
    evaluate.add_argument("--out", default="runs/latest", help="the run's output directory")
    evaluate.add_argument("--data-dir", default=None, help="directory with the data set files")
    evaluate.set_defaults(func=cmd_evaluate)

    pred = sub.add_parser("predict", help="classify image files with a run trained on an image folder")
    pred.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders (searched recursively)")
    pred.add_argument("--out", default="runs/latest", help="the run's output directory")
    pred.add_argument("--top-k", type=int, default=5, help="classes shown per image (default 5)")
    pred.add_argument("--csv", default=None, metavar="PATH",
                      help="the CSV written for folder inputs (default OUT/predictions.csv)")
    pred.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    pred.set_defaults(func=cmd_predict)

    export = sub.add_parser("export", help="export a trained run's model for inference "
                                           "(StableHLO for jax.export, or ONNX)")
    export.add_argument("--out", default="runs/latest", help="the run's output directory; the file goes there")
    export.add_argument("--format", default="stablehlo", choices=list(EXPORTS))
    export.add_argument("--batch", default="dynamic", help="'dynamic' (any batch size) or a fixed int")
    export.add_argument("--platforms", default="cpu",
                        help="StableHLO: comma list of platforms to lower for (cpu, cuda, rocm, tpu)")
    export.add_argument("--checkpoint", default="latest", choices=["latest", "best"],
                        help=f"the newest checkpoint, or OUT/{BEST_FILE} (--save-best)")
    export.set_defaults(func=cmd_export)

    conv = sub.add_parser("convert", help="PyTorch weights (torchvision's layout) into a run directory")
    conv.add_argument("--model", required=True, choices=sorted(MODELS))
    conv.add_argument("--torch", required=True, metavar="FILE",
                      help="a state dict: .safetensors, or .pt/.pth (read with torch.load(weights_only=True))")
    conv.add_argument("--out", required=True, help="the run directory to write (it belongs to one run)")
    conv.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    conv.add_argument("--num-classes", type=int, default=1000, help="classes of the weights' head")
    conv.add_argument("--input-shape", default=None, help="H,W,C (default: the model's, e.g. 224,224,3)")
    conv.add_argument("--dataset", default=None, choices=DATASETS,
                      help="the data set `jaxconv evaluate` scores the run on (its classes must match)")
    conv.set_defaults(func=cmd_convert)



def _tool_commands(sub: Any) -> None:
    """``summary``, ``verify`` and ``bench``."""
    summ = sub.add_parser("summary", help="print a model's layers, shapes, parameter counts "
                                          "and multiply-adds")
    summ.add_argument("model", choices=sorted(MODELS))
    summ.add_argument("--input-shape", default=None,
                      help="input shape without the batch, e.g. 32,32,3 (default: the model's)")
    summ.add_argument("--num-classes", type=int, default=10)
    summ.add_argument("--impl", default="auto", choices=["auto", "lax", "patches"],
                      help="convolution implementation; does not change the counts")
    summ.set_defaults(func=cmd_summary)
    verify = sub.add_parser(
        "verify", help="check impl='patches' against impl='lax' on random convolutions")
    verify.add_argument("--cases", type=int, default=100, help="number of random configurations")
    verify.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    verify.add_argument("--seed", type=int, default=0, help=f"an int in [0, {MAX_SEED}]")
    verify.add_argument("--quiet", action="store_true", help="no progress lines")
    verify.set_defaults(func=cmd_verify)
    bench = sub.add_parser("bench", help="time the convolution implementations side by side "
                                         "on this machine (forward, forward+backward)")
    bench.add_argument("--impls", default="lax,patches,auto",
                       help="comma-separated implementations; the first is the baseline")
    bench.add_argument("--mode", default="both", choices=["fwd", "fwd+bwd", "both"])
    bench.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    bench.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    bench.add_argument("--shape", action="append", default=None, metavar="N,H,CIN,COUT[,K[,PAD[,S]]]",
                       help="a layer to time (repeatable); default: the MNIST CNN's layers "
                            "and 64-256 channel layers")
    bench.add_argument("--quick", action="store_true", help="tiny shapes, a smoke test")
    bench.add_argument("--quiet", action="store_true", help="only the table")
    bench.set_defaults(func=cmd_bench)

def build_parser() -> argparse.ArgumentParser:
    """The argument table of every command (each sets ``func``, the function that runs it)."""
    parser = OneLineParser(prog="jaxconv", description="jaxconv: train, evaluate, inspect, verify and "
                                                       "benchmark convolutional networks in JAX")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model (default: digits_cnn on digits)")
    _train_arguments(train)
    _recipe_arguments(train)
    _folder_and_device_arguments(train)
    train.set_defaults(func=cmd_train)
    _run_commands(sub)
    _tool_commands(sub)
    return parser
