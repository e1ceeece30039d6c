"""Shared timing and reporting utilities for the benchmark scripts.

Everything a benchmark needs to be fair and reproducible:

* ``measure_interleaved``: warm-up, then several rounds in which every case
  runs once in turn (so slow drifts of the machine hit all cases alike); the
  statistic is the median over rounds, the spread is ``(max - min) / median``.
* ``machine_info``: CPU/GPU, core count, library versions, date (UTC).
* ``markdown_table`` and ``write_section``: several scripts share
  ``benchmarks/RESULTS.md``; each one replaces only its own section, delimited
  by ``<!-- BEGIN name -->`` / ``<!-- END name -->`` markers, written atomically.
* ``PartialLog``: appends every finished measurement as one JSON line to a
  file (under ``$OUT`` on the device machine) so that a run killed by a time
  limit still leaves its data behind.

The timing core (``Case``, ``Stats``, ``measure_interleaved``) and the table
helpers live in ``jaxconv.bench`` (the ``jaxconv bench`` subcommand uses them
too) and are re-exported here. The scripts run from the repository root
(``python benchmarks/cpu.py``); ``REPO_ROOT`` is put on ``sys.path`` so that
``jaxconv`` imports without being installed.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
import time
import traceback
import types
from collections.abc import Callable, Sequence
from typing import Any

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from jaxconv.bench import Case, Stats, fmt, jax_sync, markdown_table, measure_interleaved, no_sync, ratio, time_calls  # noqa: E402,F401
from jaxconv.checkpoint import write_atomic as write_bytes_atomic  # noqa: E402

RESULTS_MD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")


# --------------------------------------------------------------------------
# Machine description.


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except Exception:  # noqa: BLE001 - absent or broken: report as missing
        return None
    return getattr(mod, "__version__", "?")


def machine_info(extra_modules: Sequence[str] = ()) -> dict[str, Any]:
    """Host, accelerator and library versions, and the UTC date."""
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        load = os.getloadavg()
        info["load_avg_1m"] = round(load[0], 2)
    except OSError:
        pass
    for m in ("jax", "jaxlib", "optax", "flax", "torch", "numpy", *extra_modules):
        if m in sys.modules or _version(m) is not None:
            info[m] = _version(m)
    try:
        import jax

        info["backend"] = jax.default_backend()
        info["devices"] = [d.device_kind for d in jax.devices()]
    except Exception:  # noqa: BLE001
        pass
    return info


def describe_machine(info: dict[str, Any]) -> str:
    """A few markdown lines describing ``info``."""
    libs = ", ".join(f"{k} {info[k]}" for k in ("jax", "jaxlib", "optax", "flax", "torch", "numpy")
                     if info.get(k))
    lines = [f"- date: {info['date']}",
             f"- machine: {info['cpu']}, {info['cores']} cores"
             + (f", load average at start {info['load_avg_1m']}" if "load_avg_1m" in info else ""),
             f"- python {info['python']}; {libs}"]
    if info.get("devices"):
        lines.append(f"- jax backend {info.get('backend')}: {', '.join(sorted(set(info['devices'])))}")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Reporting.






def write_atomic(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` atomically (``jaxconv.checkpoint.write_atomic``)."""
    write_bytes_atomic(path, text.encode())


def replace_section(document: str, name: str, body: str) -> str:
    """Returns ``document`` with the ``name`` section replaced (or appended).

    A section is everything between ``<!-- BEGIN name -->`` and
    ``<!-- END name -->``; other sections and text are kept as they are.
    """
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    i = document.find(begin)
    j = document.find(end, i + len(begin)) if i >= 0 else -1
    if i >= 0 and j >= 0:
        return document[:i] + block + document[j + len(end):]
    if document and not document.endswith("\n"):
        document += "\n"
    return document + ("\n" if document else "") + block + "\n"


def write_section(path: str, name: str, body: str) -> None:
    """Replaces the ``name`` section of the markdown file ``path`` (created if absent)."""
    try:
        with open(path) as f:
            document = f.read()
    except FileNotFoundError:
        document = "# Benchmark results\n\nEach section is written by the script named in it.\n"
    write_atomic(path, replace_section(document, name, body))


class PartialLog:
    """Appends JSON lines to ``path`` (no-op when ``path`` is None); flushed per record."""

    def __init__(self, path: str | None):
        self.path = path
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def write(self, section: str, record: dict[str, Any]) -> None:
        if not self.path:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"section": section, **record}, default=str) + "\n")
            f.flush()


def run_section(name: str, fn: Callable[[], Any], log: Callable[[str], None] = print) -> Any:
    """Runs one benchmark section; an exception is printed and returns None instead of aborting."""
    start = time.perf_counter()
    log(f"\n=== {name}")
    try:
        result = fn()
    except Exception:  # noqa: BLE001 - a broken section must not kill the others
        log(f"=== {name}: FAILED after {time.perf_counter() - start:.1f}s")
        log(traceback.format_exc())
        return None
    log(f"=== {name}: done in {time.perf_counter() - start:.1f}s")
    return result


# --------------------------------------------------------------------------
# torchvision's networks beside jaxconv's (the zoo comparisons of cpu.py and gpu.py).


def import_torchvision():
    """``torchvision`` with its model code usable beside a CPU torch its compiled ops do not fit.

    On import torchvision registers "meta" kernels for its compiled operators,
    which fails when they do not load ("operator torchvision::nms does not
    exist"); the models need none of them, so an empty module stands in.
    """
    meta = "torchvision._meta_registrations"
    sys.modules.setdefault(meta, types.ModuleType(meta))
    import torchvision

    return torchvision


def check_same_network(name: str, model, input_shape, net, log) -> int:
    """Raises unless jaxconv's ``model`` and torchvision's ``net`` have the same numbers of
    parameters and of (floating-point) BatchNorm statistics; returns the parameter count."""
    import math

    import jax
    import jax.numpy as jnp

    params, state = jax.eval_shape(lambda k: model.init(k, input_shape)[1:], jax.random.PRNGKey(0))
    ours = (sum(math.prod(a.shape) for a in jax.tree_util.tree_leaves(params)),
            sum(math.prod(a.shape) for a in jax.tree_util.tree_leaves(state)
                if jnp.issubdtype(a.dtype, jnp.floating)))
    theirs = (sum(p.numel() for p in net.parameters()),
              sum(b.numel() for b in net.buffers() if b.is_floating_point()))
    log(f"  {name}: parameters jaxconv {ours[0]:,}, torchvision {theirs[0]:,}; "
        f"BatchNorm statistics jaxconv {ours[1]:,}, torchvision {theirs[1]:,}")
    if ours != theirs:
        raise RuntimeError(f"{name}: jaxconv and torchvision differ (parameters, statistics): "
                           f"{ours} against {theirs}; the comparison would be meaningless")
    return ours[0]
