"""The program: ``main`` runs one command, ``run`` sets the process up first."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from jaxconv import runtime
from jaxconv.cli.parser import build_parser, check_args


def main(argv: Sequence[str] | None = None) -> int:
    """Parses ``argv`` (default ``sys.argv[1:]``), checks it and runs the command; returns the exit status.

    Exit status 2 and one line on stderr for a bad argument, a bad data set or
    an unusable output directory; 1 for a failure while running (a training
    that diverged, a file that could not be written); 130 for Ctrl-C.
    """
    args = build_parser().parse_args(argv)
    try:
        check_args(args)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:  # bad options, missing or corrupt data files
        print(f"jaxconv {args.command}: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the output directory or disk failed under us
        print(f"jaxconv {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the checkpoints written so far stay (train --resume continues them)
        print(f"jaxconv {args.command}: interrupted", file=sys.stderr)
        return 130


def run() -> int:
    """The ``jaxconv`` program: process-wide settings first, then :func:`main`.

    Before JAX starts, freed host buffers are kept for reuse (no page faults
    per step, ``runtime.retain_host_memory``) and JAX's persistent compilation
    cache is turned on (``runtime.enable_compilation_cache``; directory
    ``$JAXCONV_COMPILATION_CACHE``, ``0`` for none). ``main`` alone, as the
    tests call it, changes neither.
    """
    runtime.retain_host_memory(warn=False)
    runtime.enable_compilation_cache()
    return main()
