"""The ``jaxconv`` command line: train, evaluate, predict, export, convert, summary, verify, bench.

``run`` is the program (``jaxconv``, ``python -m jaxconv``); ``main(argv)``
parses and runs one command and returns its exit status. Every argument and
the output directory are checked before any data is loaded or any step runs;
a bad value is one line on stderr and exit status 2, never a traceback.

- ``parser``: the argument table (``build_parser``) and the checks of the values;
- ``training``: ``train`` (built-in data sets and image folders, ``--init-from``) and ``evaluate``;
- ``predict``: class names and probabilities for image files;
- ``exporter``: ``export`` (StableHLO, ONNX);
- ``converter``: ``convert`` (PyTorch weights into a run);
- ``tools``: ``summary``, ``verify`` and ``bench``;
- ``program``: ``main`` and ``run``.
"""

from jaxconv.cli.parser import build_parser as build_parser
from jaxconv.cli.program import main as main
from jaxconv.cli.program import run as run
from jaxconv.rundir import PLOTS as PLOTS

__all__ = ["PLOTS", "build_parser", "main", "run"]
