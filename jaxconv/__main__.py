from jaxconv.cli import run

raise SystemExit(run())
