"""PyTorch for the cross-checks: imported once, never silently skipped in CI.

Outside CI a missing torch skips the test (``pip install -e '.[test]'``
installs it); with ``CI`` set in the environment it fails the test instead,
so a CI run can never pass with its PyTorch checks skipped.
"""

import importlib
import os

import pytest


def import_or_fail_in_ci(name: str, what: str):
    """``import name``; when it fails, fail the test in CI and skip it elsewhere, naming ``what`` needs it."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is needed for {what} in CI: {e}")
        pytest.skip(f"{name} is not installed: {e}")


def import_torch():
    """The ``torch`` module, for the PyTorch cross-checks."""
    return import_or_fail_in_ci("torch", "the PyTorch cross-checks")
