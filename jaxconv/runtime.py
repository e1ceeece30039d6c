"""Process settings that make training start and run faster.

``enable_compilation_cache()``: JAX's persistent compilation cache, so that
a second run of the same program loads its compiled steps from disk instead
of compiling them again (``jaxconv train --epochs 15`` on the digits, 2 cores: 8.9 s -> 4.3 s).

``retain_host_memory()``: XLA:CPU allocates each executable's temporary buffer,
and every output, with ``malloc`` on every call. glibc serves large blocks
(from 32 MiB; in a worker thread's arena from 64 MiB) with a fresh ``mmap`` and
unmaps them again on ``free``, so every training step touches its whole working
set for the first time again: one page fault per 4 KiB page, about 1.5 us each
on the benchmark machine, or 30 ms for an 85 MB buffer. On the MNIST CNN step
that was about 26,000 faults per step (``benchmarks/RESULTS.md``).

The fix is to have glibc keep freed memory and reuse it: one arena, no
``mmap``, no trimming (``mallopt(M_ARENA_MAX, 1)``, ``M_MMAP_MAX = 0``,
``M_TRIM_THRESHOLD`` at its maximum). The same settings can be given to any
program through the environment::

    GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647

The cost: the process keeps its peak heap size until it exits. It applies to
the whole process (PyTorch in the same process gains too). It must run before
JAX starts its backends (the first computation or device query), because the
threads they start keep the arenas they were given. ``jaxconv train``,
``evaluate`` and ``bench`` call it first thing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import warnings

# mallopt parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
TRIM_THRESHOLD_MAX = 2**31 - 1

_retained = False


def _backends_started() -> bool:
    from jax._src import xla_bridge  # noqa: PLC0415 (no public equivalent)

    started = getattr(xla_bridge, "backends_are_initialized", None)
    return bool(started()) if started is not None else bool(getattr(xla_bridge, "_backends", {}))


def _glibc():
    """glibc's ``mallopt``, or ``None`` on another C library or OS."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is not None:
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


def retain_host_memory(*, warn: bool = True) -> bool:
    """Makes glibc keep freed memory for reuse (see the module docstring).

    Args:
      warn: warn (``RuntimeWarning``) when the setting cannot take effect.

    Returns:
      ``True`` if the setting is in effect (now or from an earlier call);
      ``False`` if it could not be applied: not glibc, or JAX's backends have
      already started (call it before the first JAX computation).
    """
    global _retained
    if _retained:
        return True
    problem = None
    mallopt = _glibc()
    if mallopt is None:
        problem = f"not available on {platform.system()} without glibc"
    elif _backends_started():
        problem = ("JAX's backends have already started; call it before the first JAX "
                   "computation or device query")
    elif not all(mallopt(param, value) == 1 for param, value in (
            (M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD_MAX))):
        problem = "glibc's mallopt refused a setting"
    if problem is not None:
        if warn:
            warnings.warn(f"retain_host_memory: {problem}", RuntimeWarning, stacklevel=2)
        return False
    _retained = True
    return True


# ``JAXCONV_COMPILATION_CACHE``: a directory, or one of these to turn the cache off.
CACHE_ENV = "JAXCONV_COMPILATION_CACHE"
CACHE_OFF = ("", "0", "off", "false", "no")


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/jaxconv/xla`` (``~/.cache/jaxconv/xla`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jaxconv", "xla")


def enable_compilation_cache(directory: str | None = None) -> str | None:
    """Turns on JAX's persistent compilation cache for every compiled function.

    Leaves an existing setting alone (``jax_compilation_cache_dir`` set by the
    user, e.g. through ``JAX_COMPILATION_CACHE_DIR``).

    Args:
      directory: where to keep the cache; default ``$JAXCONV_COMPILATION_CACHE``
        if set (``0``, ``off`` or empty turn the cache off), else
        :func:`default_cache_dir`.

    Returns:
      The cache directory in use, or ``None`` when the cache is off.
    """
    import jax  # noqa: PLC0415

    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    if directory is None:
        directory = os.environ.get(CACHE_ENV, default_cache_dir())
        if directory.strip().lower() in CACHE_OFF:
            return None
    jax.config.update("jax_compilation_cache_dir", directory)
    # Cache every compilation: the small ones add up to seconds at start-up.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return directory
