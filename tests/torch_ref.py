"""PyTorch for the cross-checks: imported once, never silently skipped in CI.

Outside CI a missing torch skips the test (``pip install -e '.[test]'``
installs it); with ``CI`` set in the environment it fails the test instead,
so a CI run can never pass with its PyTorch checks skipped.
"""

import os

import pytest


def import_torch():
    """The ``torch`` module, in float64 by default for the cross-checks' references."""
    try:
        import torch
    except ImportError as e:
        if os.environ.get("CI"):
            pytest.fail(f"PyTorch is needed for the cross-checks in CI: {e}")
        pytest.skip(f"PyTorch is not installed: {e}")
    return torch
