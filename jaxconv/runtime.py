"""Process settings that make XLA:CPU training faster.

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
import platform
import warnings

# mallopt parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
TRIM_THRESHOLD_MAX = 2**31 - 1

GLIBC_TUNABLES = ("glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:"
                  f"glibc.malloc.trim_threshold={TRIM_THRESHOLD_MAX}")

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
