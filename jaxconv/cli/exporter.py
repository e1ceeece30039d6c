"""``jaxconv export``: a trained run's model for inference, written next to the run."""

from __future__ import annotations

import argparse
import os
import sys

from jaxconv import export
from jaxconv.cli.training import load_run
from jaxconv.rundir import EXPORTS

# --format -> the file written into the run directory.


def cmd_export(args: argparse.Namespace) -> int:
    """Loads the run's newest (or best) checkpoint and writes ``OUT/model.stablehlo`` or ``OUT/model.onnx``.

    The model is rebuilt with ``impl="lax"`` (the params do not depend on the
    implementation, and every platform and batch size supports it) and
    exported in inference mode with the EMA params when the run kept them.
    """
    try:
        run = load_run(args.out, which=args.checkpoint, impl="lax")
    except (FileNotFoundError, ValueError) as e:
        print(f"jaxconv export: {e}", file=sys.stderr)
        return 1
    ts, config = run.train_state, run.config
    batch = args.batch if args.batch == "dynamic" else int(args.batch)
    input_shape = tuple(config["input_shape"])
    path = os.path.join(args.out, EXPORTS[args.format])
    if args.format == "onnx":
        export.save_onnx(export.onnx(run.model, ts.eval_params, ts.state, input_shape, batch=batch), path)
    else:
        platforms = tuple(p.strip() for p in args.platforms.split(",") if p.strip())
        exported = export.stablehlo(run.model, ts.eval_params, ts.state, input_shape, batch=batch,
                                    platforms=platforms)
        export.save(exported, path)
    weights = "EMA params" if ts.ema is not None else "params"
    print(f"wrote {path}: {config['model']} ({weights} of {run.path}, step {int(ts.step)}), "
          f"input (batch {batch}, {', '.join(map(str, input_shape[1:]))}) float32 -> logits")
    return 0
