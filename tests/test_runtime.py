"""jaxconv.runtime: retain_host_memory removes the per-call page faults of large buffers."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import jax.numpy as jnp
import pytest

from jaxconv import runtime

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# A jitted op with a 96 MiB output, called repeatedly: minor page faults of the
# median call among the last 10 of 40 (with the setting, the heap takes a few
# calls to settle, freed outputs being released asynchronously, and the odd call
# still faults, e.g. after the host reclaimed idle pages).
PROBE = """
import json, resource, sys
from jaxconv import runtime
applied = runtime.retain_host_memory() if sys.argv[1] == "retain" else False
import jax, jax.numpy as jnp
x = jnp.ones((24, 1024, 1024), jnp.float32)
f = jax.jit(lambda x: x * 2)
for _ in range(30):
    f(x).block_until_ready()
faults = []
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": sorted(faults)[5]}))  # the median call
"""


def _run_python(code, *args, **env):
    """Runs ``code`` in a fresh CPU-only process; its last stdout line, parsed as JSON."""
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         check=True, env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin", **env},
                         cwd=runtime.__file__.rsplit("/jaxconv/", 1)[0])
    return json.loads(out.stdout.strip().splitlines()[-1])


def _probe(mode):
    return _run_python(PROBE, mode)


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


CACHE_PROBE = """
import json, os, sys
from jaxconv import runtime
used = runtime.enable_compilation_cache()
import jax, jax.numpy as jnp
jax.jit(lambda x: jnp.sin(x) * 2)(jnp.ones(3)).block_until_ready()
print(json.dumps({"used": used}))
"""


def _cache_probe(tmp_path, **env):
    return _run_python(CACHE_PROBE, HOME=str(tmp_path / "home"), **env)["used"]


def _files(path):
    return [f for _, _, fs in os.walk(path) for f in fs] if os.path.isdir(path) else []


def test_compilation_cache_directory_default_off_and_user_setting(tmp_path):
    cache = str(tmp_path / "cache")
    assert _cache_probe(tmp_path, JAXCONV_COMPILATION_CACHE=cache) == cache
    assert _files(cache), "nothing was cached"
    # Default: under $XDG_CACHE_HOME (else ~/.cache).
    assert _cache_probe(tmp_path, XDG_CACHE_HOME=str(tmp_path / "xdg")) == str(
        tmp_path / "xdg" / "jaxconv" / "xla")
    assert _files(tmp_path / "xdg" / "jaxconv" / "xla")
    # Off.
    assert _cache_probe(tmp_path, JAXCONV_COMPILATION_CACHE="0") is None
    assert not _files(tmp_path / "home")
    # A directory the user gave JAX itself wins (with JAX's own thresholds, untouched).
    mine, ours = str(tmp_path / "mine"), str(tmp_path / "ours")
    assert _cache_probe(tmp_path, JAX_COMPILATION_CACHE_DIR=mine,
                        JAXCONV_COMPILATION_CACHE=ours) == mine
    assert not _files(ours)
