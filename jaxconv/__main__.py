"""``python -m jaxconv``: the ``jaxconv`` program."""

from jaxconv.cli import run

raise SystemExit(run())
