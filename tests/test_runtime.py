"""jaxconv.runtime: retain_host_memory removes the per-call page faults of large buffers."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import jax.numpy as jnp
import pytest

from jaxconv import runtime

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# A jitted op with a 96 MiB output, called repeatedly: minor page faults per call.
PROBE = """
import json, resource, sys
from jaxconv import runtime
applied = runtime.retain_host_memory() if sys.argv[1] == "retain" else False
import jax, jax.numpy as jnp
x = jnp.ones((24, 1024, 1024), jnp.float32)
f = jax.jit(lambda x: x * 2)
for _ in range(12):  # the heap settles after a few calls
    f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    f(x).block_until_ready()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5
print(json.dumps({"applied": applied, "faults": faults}))
"""


def _probe(mode):
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         check=True, env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"},
                         cwd=runtime.__file__.rsplit("/jaxconv/", 1)[0])
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_retain_host_memory_removes_per_call_page_faults():
    default, retained = _probe("default"), _probe("retain")
    pages = 24 * 1024 * 1024 * 4 / 4096
    assert not default["applied"] and retained["applied"]
    assert default["faults"] > 0.5 * pages, default  # the output is faulted in on every call
    assert retained["faults"] < 0.05 * pages, retained  # ... and reused with the setting


def test_retain_host_memory_after_backend_start_warns_and_changes_nothing(monkeypatch):
    jnp.zeros(1).block_until_ready()  # the backend has started in this process
    monkeypatch.setattr(runtime, "_retained", False)
    reason = "JAX's backends have already started" if GLIBC else "not available"
    with pytest.warns(RuntimeWarning, match=f"retain_host_memory: {reason}"):
        assert runtime.retain_host_memory() is False
    assert runtime.retain_host_memory(warn=False) is False
