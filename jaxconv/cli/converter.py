"""``jaxconv convert``: PyTorch weights into a run that ``evaluate``, ``export`` and ``train --init-from`` accept."""

from __future__ import annotations

import argparse
import os
import sys

import jax

from jaxconv import checkpoint as ckpt
from jaxconv import rundir
from jaxconv.cli.training import NO_DATASET, build_run, write_json_atomic
from jaxconv.convert import load_torch_state_dict
from jaxconv.models import INPUT_SHAPES
from jaxconv.train import create_train_state


def converted_config(args: argparse.Namespace, shape: tuple[int, ...]) -> dict:
    """The run config of converted weights: the model, its classes and input, and neutral training options."""
    return {"dataset": args.dataset or NO_DATASET, "model": args.model, "num_classes": args.num_classes,
            "input_shape": [-1, *shape], "optimizer": "adam", "lr": 1e-3, "schedule": "constant",
            "weight_decay": 0.0, "label_smoothing": 0.0, "augment": "none", "epochs": 0, "batch_size": 1,
            "seed": 0, "impl": "auto", "steps_per_call": 1, "microbatches": 1, "total_steps": 1,
            "warmup_steps": 0, "clip_norm": 0.0, "ema": 0.0, "precision": "f32", "early_stopping": 0,
            "monitor": "test_loss", "converted_from": os.path.abspath(args.torch)}


def cmd_convert(args: argparse.Namespace) -> int:
    shape = tuple(args.input_shape) if args.input_shape else INPUT_SHAPES[args.model]
    config = converted_config(args, shape)
    model, optimizer, _ = build_run(config)
    try:
        params, state = load_torch_state_dict(model, (-1, *shape), args.torch)
    except (OSError, ImportError, ValueError) as e:
        print(f"jaxconv convert: {e}", file=sys.stderr)
        return 1
    ts = create_train_state(model, jax.random.PRNGKey(0), (-1, *shape), optimizer)
    ts = ts._replace(params=params, state=state, opt_state=optimizer.init(params))
    with rundir.locked(args.out, context="--out"):
        rundir.claim(args.out, resume=False, overwrite=args.overwrite, context="--out")
        path = ckpt.save_checkpoint(os.path.join(args.out, rundir.CHECKPOINTS), 0, ts, {"config": config},
                                    keep=None)
        write_json_atomic(os.path.join(args.out, rundir.METRICS_FILE),
                          {"config": config, "history": [], "checkpoint": path})
    print(f"jaxconv convert: {args.model} ({args.num_classes} classes, input {shape}) from {args.torch} "
          f"-> {path}")
    return 0
