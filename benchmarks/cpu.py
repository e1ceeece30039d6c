"""CPU benchmark: jaxconv against plain JAX, Flax and PyTorch (MNIST CNN, convolutions, zoo).

Run from the repository root::

    python benchmarks/cpu.py            # full run, writes the "cpu" section of RESULTS.md
    python benchmarks/cpu.py --quick    # tiny sizes, a smoke test (writes nothing by default)

Sections (``--sections``, comma-separated; default all):

* ``step``: one training step of the MNIST CNN (28x28x1 -> Conv 32 3x3 VALID
  -> ReLU -> Conv 64 3x3 VALID -> ReLU -> MaxPool 2 -> Dense 128 -> ReLU ->
  Dense 10; batch 128; float32; Adam 1e-3; softmax cross-entropy) in jaxconv
  (``impl`` lax, patches, auto; patches with the row-shift form off; auto
  with ``make_train_step(microbatches=8)``), plain JAX with
  ``lax.conv_general_dilated``,
  Flax linen and PyTorch eager (``torch.set_num_threads(cores)``). All cases
  live in one process and are timed in interleaved rounds after a warm-up.
* ``micro``: convolution forward and forward+backward, per implementation, for
  the network's layer shapes and wider 64-256 channel layers (and PyTorch's
  ``conv2d`` for reference).
* ``rows``: forward+backward of 3x3 layers (1-256 channels, VALID and SAME)
  with the patches path's full patch tensor, with its default (the row-shift
  form where ``autotune.PATCH_ROWS`` takes it) and with lax: the measurements
  behind the CPU rule.
* ``depthwise``: forward+backward of depthwise layers (MobileNetV2's 3x3 on
  144 channels at 56x56 and 96 channels at 112x112 with stride 2, ConvNeXt-T's
  7x7 on 96 channels; batch 32): ``impl="patches"`` in its depthwise form
  (``autotune.PATCH_DEPTHWISE``), lax, and PyTorch ``conv2d(groups=C)`` with
  contiguous and channels_last tensors: the measurements behind the CPU rule.
* ``zoo``: torchvision's architectures from ``jaxconv.models`` (impl auto and
  lax) against torchvision's own in PyTorch eager (contiguous NCHW and
  channels_last; the ratio is against the faster), 10 classes, float32, the
  same parameter counts checked: the ResNet-18 and MobileNetV2 training steps
  (batch 32, 64x64x3, BatchNorm in training mode, Adam 1e-3, softmax
  cross-entropy; ``make_train_step`` defaults) and ResNet-18's inference
  latency (batch 1, 224x224x3; ``train=False`` against ``eval()`` under
  ``torch.inference_mode()``).
* ``layer``: the ``Conv`` layer (lax impl) against a bare
  ``lax.conv_general_dilated`` call, forward and forward+backward.
* ``spc``: ``make_train_step(steps_per_call=10)`` against ``steps_per_call=1``,
  per step.
* ``train``: wall time of ``python -m jaxconv train --no-progress`` for this
  tree and for a baseline commit (default ``943fcf5``, the foundation),
  alternated, in subprocesses.

The network is the MNIST CNN of ``jaxconv.models.mnist_cnn`` without its
dropout layer (the peers have none).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import (  # noqa: E402
    Case,
    check_same_network,
    fmt,
    import_torchvision,
    markdown_table,
    measure_interleaved,
    ratio,
)

from jaxconv.bench import ConvShape  # noqa: E402

NUM_CLASSES = 10
# Adam's learning rate in every training step of this file (every framework).
LEARNING_RATE = 1e-3


# --------------------------------------------------------------------------
# The network in every framework.


def jaxconv_model(impl: str):
    import jaxconv as jc

    return jc.serial(
        jc.Conv(32, 3, padding="VALID", impl=impl), jc.Relu(),
        jc.Conv(64, 3, padding="VALID", impl=impl), jc.Relu(), jc.MaxPool(2),
        jc.Flatten(), jc.Dense(128), jc.Relu(), jc.Dense(NUM_CLASSES))


def raw_jax_init(key, size: int):
    """Plain parameter dict for the same network (LeCun-normal kernels, zero biases)."""
    import jax
    import jax.numpy as jnp

    flat = 64 * ((size - 4) // 2) ** 2
    shapes = {"c1": (3, 3, 1, 32), "c2": (3, 3, 32, 64), "d1": (flat, 128), "d2": (128, NUM_CLASSES)}
    init = jax.nn.initializers.lecun_normal()
    keys = jax.random.split(key, len(shapes))
    params = {}
    for k, (name, shape) in zip(keys, shapes.items()):
        params[name] = {"w": init(k, shape), "b": jnp.zeros(shape[-1])}
    return params


def raw_jax_apply(params, x):
    """The network written directly with ``lax.conv_general_dilated``."""
    import jax
    from jax import lax

    dn = ("NHWC", "HWIO", "NHWC")
    for name in ("c1", "c2"):
        x = lax.conv_general_dilated(x, params[name]["w"], (1, 1), "VALID", dimension_numbers=dn)
        x = jax.nn.relu(x + params[name]["b"])
    x = lax.reduce_window(x, -float("inf"), lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    x = x.reshape(x.shape[0], -1)
    x = jax.nn.relu(x @ params["d1"]["w"] + params["d1"]["b"])
    return x @ params["d2"]["w"] + params["d2"]["b"]


def flax_module():
    import flax.linen as nn

    class MnistCNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(32, (3, 3), padding="VALID")(x))
            x = nn.relu(nn.Conv(64, (3, 3), padding="VALID")(x))
            x = nn.max_pool(x, (2, 2), (2, 2))
            x = x.reshape(x.shape[0], -1)
            x = nn.relu(nn.Dense(128)(x))
            return nn.Dense(NUM_CLASSES)(x)

    return MnistCNN()


def torch_model(size: int):
    import torch

    flat = 64 * ((size - 4) // 2) ** 2
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 32, 3), torch.nn.ReLU(),
        torch.nn.Conv2d(32, 64, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(flat, 128), torch.nn.ReLU(),
        torch.nn.Linear(128, NUM_CLASSES))


def functional_step(apply_fn, optimizer):
    """A jitted, donating Adam step for ``apply_fn(params, x) -> logits`` (raw JAX, Flax)."""
    import jax
    import optax

    def loss(params, x, y):
        return optax.losses.softmax_cross_entropy_with_integer_labels(apply_fn(params, x), y).mean()

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, x, y):
        value, grads = jax.value_and_grad(loss)(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return step


class Holder:
    """Carries a donated training state from call to call."""

    def __init__(self, value):
        self.value = value


def jaxconv_train_case(name: str, model, x, y, *, microbatches: int = 1) -> Case:
    """One ``make_train_step`` step (Adam 1e-3, softmax cross-entropy) of ``model`` as a ``Case``.

    ``x``: a channels-last NumPy batch ``(N, H, W, C)``, ``y``: its int labels
    ``(N,)``; the (donated) train state is carried from call to call.
    """
    import jax
    import optax

    import jaxconv as jc

    opt = optax.adam(LEARNING_RATE)
    step = jc.make_train_step(model, opt, microbatches=microbatches)
    holder = Holder(jc.create_train_state(model, jax.random.PRNGKey(0), (-1, *x.shape[1:]), opt))
    batch = (jax.device_put(x), jax.device_put(y))

    def run():
        holder.value, _ = step(holder.value, batch)
        return holder.value

    return Case(name, run, items=len(x))


def torch_threads():
    """``torch``, set to use every core."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    return torch


def torch_images(x, memory_format: str = "contiguous_format"):
    """The channels-last NumPy batch ``x`` as an NCHW tensor in ``memory_format`` (a torch name)."""
    import numpy as np

    torch = torch_threads()
    nchw = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    return nchw.to(memory_format=getattr(torch, memory_format))


def torch_train_case(name: str, net, x, y, memory_format: str = "contiguous_format") -> Case:
    """One PyTorch eager training step (Adam 1e-3, cross-entropy) of ``net`` as a ``Case``.

    ``net`` runs in train mode, its parameters and the images ``x``
    (channels-last NumPy, see ``torch_images``) in ``memory_format``.
    """
    torch = torch_threads()
    net = net.to(memory_format=getattr(torch, memory_format)).train()
    opt = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
    tx, ty = torch_images(x, memory_format), torch.from_numpy(y.astype("int64"))

    def run():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(tx), ty)
        loss.backward()
        opt.step()
        return loss

    return Case(name, run, sync=common.no_sync, items=len(x))


def functional_case(name: str, apply_fn, params, x, y) -> Case:
    """``functional_step`` (Adam 1e-3) of ``apply_fn(params, x) -> logits`` as a ``Case``."""
    import optax

    opt = optax.adam(LEARNING_RATE)
    step = functional_step(apply_fn, opt)
    holder = Holder((params, opt.init(params)))

    def run():
        p, o, _ = step(*holder.value, x, y)
        holder.value = (p, o)
        return holder.value

    return Case(name, run, items=len(x))


def training_cases(batch: int, size: int, impls, peers=True, log=print,
                   model_fn=jaxconv_model, microbatches: int = 1) -> list[Case]:
    """One training-step ``Case`` per implementation, all on the same random batch.

    ``model_fn(impl)`` builds jaxconv's network (default: the MNIST CNN); the
    peers (Flax, PyTorch, plain JAX) are always the MNIST CNN.
    """
    import jax
    import numpy as np

    rng = np.random.default_rng(0)
    x_np = rng.random((batch, size, size, 1), dtype=np.float32)
    y_np = rng.integers(0, NUM_CLASSES, batch).astype(np.int32)
    suffix = f", {microbatches} micro-batches" if microbatches > 1 else ""
    cases = [jaxconv_train_case(f"jaxconv {impl}{suffix}", model_fn(impl), x_np, y_np,
                                microbatches=microbatches) for impl in impls]
    if not peers:
        return cases
    x, y = jax.device_put(x_np), jax.device_put(y_np)
    cases.append(functional_case("JAX lax.conv (plain)", raw_jax_apply,
                                 raw_jax_init(jax.random.PRNGKey(0), size), x, y))
    try:
        module = flax_module()
        variables = module.init(jax.random.PRNGKey(0), x[:1])
        cases.append(functional_case("Flax linen", module.apply, variables, x, y))
    except ImportError as exc:
        log(f"  Flax skipped: {exc}")
    try:
        torch = torch_threads()
        torch.manual_seed(0)
        cases.append(torch_train_case(f"PyTorch eager ({torch.get_num_threads()} threads)",
                                      torch_model(size), x_np, y_np))
    except ImportError as exc:
        log(f"  PyTorch skipped: {exc}")
    return cases


# --------------------------------------------------------------------------
# Sections.


# The step section's micro-batched row: make_train_step(microbatches=8), 16 images each.
MICROBATCHES = 8


@contextlib.contextmanager
def full_patch_tensor():
    """``impl="patches"`` without its row-shift form while tracing (jit traces on first call)."""
    from jaxconv.ops import autotune

    with mock.patch.dict(autotune.PATCH_ROWS, clear=True):
        yield


def compiled(case: Case) -> Case:
    """``case`` after one call (which traces and compiles it)."""
    case.sync(case.run())
    return case


def section_step(args, log):
    impls = ["lax", "patches", "auto"]
    cases = training_cases(args.batch, args.size, impls, log=log)
    with full_patch_tensor():
        full = compiled(training_cases(args.batch, args.size, ["patches"], peers=False)[0])
    full.name = "jaxconv patches, full patch tensor"
    micro = training_cases(args.batch, args.size, ["auto"], peers=False,
                           microbatches=MICROBATCHES)
    cases[len(impls):len(impls)] = [full, *micro]
    stats = measure_interleaved(cases, rounds=args.rounds, target_s=args.target, log=log)
    peers = {"PyTorch": next((s for n, s in stats.items() if n.startswith("PyTorch")), None),
             "Flax": stats.get("Flax linen"), "plain lax": stats.get("JAX lax.conv (plain)")}
    rows = []
    for name, s in stats.items():
        rows.append([name, fmt(s.rate), fmt(s.median * 1e3, 1), f"{s.spread:.0%}"]
                    + [ratio(s.rate, p.rate) if p else "-" for p in peers.values()])
    table = markdown_table(["implementation", "images/s", "ms/step", "spread"]
                           + [f"vs {p}" for p in peers], rows)
    text = (f"MNIST CNN training step (batch {args.batch}, {args.size}x{args.size}x1, float32, "
            f"Adam), median of {args.rounds} interleaved rounds:\n\n{table}")
    log(text)
    return text, {n: s.as_dict() for n, s in stats.items()}


def section_micro(args, log):
    from jaxconv.bench import DEFAULT_SHAPES, QUICK_SHAPES, conv_bench_table, run_conv_bench

    shapes = QUICK_SHAPES if args.quick else DEFAULT_SHAPES
    rows = run_conv_bench(shapes, ("lax", "patches", "auto"), rounds=args.rounds,
                          target_s=args.target, log=log)
    torch_rows = torch_conv_rows(shapes, args.rounds, args.target, log)
    table = conv_bench_table(rows + torch_rows)
    text = (f"Convolution micro-benchmarks (float32; fwd+bwd = gradients for input and kernel; "
            f"median of {args.rounds} interleaved rounds):\n\n{table}")
    log(text)
    return text, [{"shape": r["shape"].label, "impl": r["impl"], "mode": r["mode"],
                   **r["stats"].as_dict()} for r in rows + torch_rows]


def torch_conv_rows(shapes, rounds, target, log):
    """PyTorch ``conv2d`` (NCHW) on the same shapes, as extra rows of the micro table."""
    try:
        torch = torch_threads()
    except ImportError:
        return []
    from jaxconv.bench import measure_interleaved as measure

    rows = []
    for shape in shapes:
        x = torch.randn(shape.batch, shape.c_in, shape.size, shape.size, requires_grad=True)
        w = torch.randn(shape.c_out, shape.c_in, shape.k, shape.k, requires_grad=True)
        pad = 0 if shape.padding == "VALID" else shape.k // 2
        g = torch.randn(shape.batch, shape.c_out, shape.out_size, shape.out_size)

        def fwd(x=x, w=w, pad=pad, stride=shape.stride):
            with torch.no_grad():
                return torch.nn.functional.conv2d(x, w, padding=pad, stride=stride)

        def both(x=x, w=w, g=g, pad=pad, stride=shape.stride):
            return torch.autograd.grad(
                torch.nn.functional.conv2d(x, w, padding=pad, stride=stride), (x, w), g)

        cases = [Case(f"{shape.label} torch fwd", fwd, sync=common.no_sync, items=shape.batch,
                      flops=shape.flops),
                 Case(f"{shape.label} torch fwd+bwd", both, sync=common.no_sync,
                      items=shape.batch, flops=3 * shape.flops)]
        stats = measure(cases, rounds=rounds, target_s=target, log=log)
        for mode in ("fwd", "fwd+bwd"):
            s = stats.get(f"{shape.label} torch {mode}")
            if s:
                rows.append({"shape": shape, "impl": "torch", "mode": mode, "stats": s,
                             "gflops": s.flops_rate / 1e9})
    return rows


ROWS_SHAPES = tuple(
    ConvShape(f"c{c} {size}x{size} {pad}", batch, size, c, f, padding=pad)
    for pad in ("VALID", "SAME")
    for batch, size, c, f in ((128, 28, 1, 32), (128, 26, 8, 32), (128, 26, 16, 32),
                              (128, 26, 32, 64), (64, 32, 32, 32), (64, 16, 64, 64),
                              (64, 16, 128, 128), (32, 8, 256, 256)))


def section_rows(args, log):
    """The patches path's row-shift form against its full patch tensor and lax, fwd+bwd."""
    from jaxconv.bench import QUICK_SHAPES, conv_cases
    from jaxconv.ops import autotune

    rule = autotune.rows_rule()
    rows = []
    for shape in QUICK_SHAPES if args.quick else ROWS_SHAPES:
        with full_patch_tensor():
            full, = (compiled(c) for c in conv_cases(shape, ["patches"], modes=["fwd+bwd"]))
        full.name = "full"
        default, lax_case = conv_cases(shape, ["patches", "lax"], modes=["fwd+bwd"])
        default.name, lax_case.name = "default", "lax"
        stats = measure_interleaved([full, default, lax_case], rounds=args.rounds,
                                    target_s=args.target, log=log)
        takes = rows_taken(shape, rule)
        ms = {name: s.median * 1e3 for name, s in stats.items()}
        rows.append([shape.label, shape.describe(), "rows" if takes else "full",
                     fmt(ms["full"], 2), fmt(ms["default"], 2), fmt(ms["lax"], 2),
                     f"{ms['default'] / ms['full']:.2f}", f"{ms['default'] / ms['lax']:.2f}"])
    table = markdown_table(["layer", "shape", "default form", "full ms", "default ms", "lax ms",
                            "default / full", "default / lax"], rows)
    text = (f"3x3 convolutions, forward+backward (float32), `impl=\"patches\"` with the full "
            f"patch tensor and with its default form (rule {rule}), and lax; median of "
            f"{args.rounds} interleaved rounds:\n\n{table}")
    log(text)
    return text, rows


def rows_taken(shape, rule) -> bool:
    """Whether the patches path takes the row-shift form for ``shape`` under ``rule``."""
    from jaxconv.ops.autotune import rows_apply
    from jaxconv.ops.spec import ConvSpec, padding_pairs

    window, stride = (shape.k, shape.k), (shape.stride, shape.stride)
    pads = padding_pairs(shape.padding, (shape.size, shape.size), window, stride, (1, 1))
    spec = ConvSpec(stride, pads, (1, 1), (1, 1), 1)
    x_shape = (shape.batch, shape.size, shape.size, shape.c_in)
    return rows_apply(x_shape, (*window, shape.c_in, shape.c_out), spec, rule)


def section_layer(args, log):
    """Must show 3: the Conv layer (lax) against a bare lax.conv_general_dilated call."""
    import jax
    from jax import lax

    import jaxconv as jc

    n, size, cin, cout = (args.batch, args.size - 2, 32, 64)
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (n, size, size, cin))
    layer = jc.Conv(cout, 3, padding="VALID", impl="lax")
    _, params, state = layer.init(key, x.shape)
    g = jax.random.normal(key, (n, size - 2, size - 2, cout))

    def via_layer(params, x):
        return layer.apply(params, state, x)[0]

    def raw(params, x):
        y = lax.conv_general_dilated(x, params["kernel"], (1, 1), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + params["bias"]

    cases, programs = [], {}
    for name, f in (("Conv layer", via_layer), ("raw lax.conv + bias", raw)):
        fwd = jax.jit(f)
        both = jax.jit(lambda p, x, f=f: jax.vjp(f, p, x)[1](g))
        cases.append(Case(f"{name} fwd", lambda fwd=fwd: fwd(params, x)))
        cases.append(Case(f"{name} fwd+bwd", lambda both=both: both(params, x)))
        programs[name] = {"fwd": hlo_ops(fwd, params, x), "fwd+bwd": hlo_ops(both, params, x)}
    stats = measure_interleaved(cases, rounds=args.rounds, target_s=args.target, log=log)
    rows = []
    for mode in ("fwd", "fwd+bwd"):
        a, b = stats.get(f"Conv layer {mode}"), stats.get(f"raw lax.conv + bias {mode}")
        if a and b:
            same = programs["Conv layer"][mode] == programs["raw lax.conv + bias"][mode]
            rows.append([mode, fmt(a.median * 1e3, 2), fmt(b.median * 1e3, 2),
                         f"{a.median / b.median:.3f}", f"{a.spread:.0%} / {b.spread:.0%}",
                         "yes" if same else "no"])
    table = markdown_table(["pass", "Conv layer ms", "raw lax ms", "time ratio", "spread",
                            "same compiled ops"], rows)
    text = (f"`Conv` layer (impl lax) vs a bare `lax.conv_general_dilated` + bias "
            f"({n}x{size}x{size}x{cin} -> {cout}, 3x3 VALID):\n\n{table}")
    log(text)
    return text, {k: s.as_dict() for k, s in stats.items()}


def hlo_ops(jitted, *args) -> list[str]:
    """The sorted opcodes of a jitted function's optimized HLO (names and metadata dropped)."""
    import re

    text = jitted.lower(*args).compile().as_text()
    ops = re.findall(r"=\s*[^\s]+\s+([a-z][a-z0-9_\-]*)\(", text)
    return sorted(ops)


def section_spc(args, log):
    """Must show 2: steps_per_call=10 against 1, per step."""
    import jax
    import numpy as np
    import optax

    import jaxconv as jc

    k = 10
    rng = np.random.default_rng(0)
    xs = jax.device_put(rng.random((k, args.batch, args.size, args.size, 1), dtype=np.float32))
    ys = jax.device_put(rng.integers(0, NUM_CLASSES, (k, args.batch)).astype(np.int32))
    cases = []
    for impl in args.spc_impls:
        for spc in (1, k):
            model = jaxconv_model(impl)
            opt = optax.adam(LEARNING_RATE)
            step = jc.make_train_step(model, opt, steps_per_call=spc)
            holder = Holder(jc.create_train_state(model, jax.random.PRNGKey(0),
                                                  (-1, args.size, args.size, 1), opt))
            batch = (xs, ys) if spc > 1 else (xs[0], ys[0])
            start = time.perf_counter()
            holder.value, _ = step(holder.value, batch)
            jax.block_until_ready(holder.value)
            log(f"  {impl} steps_per_call={spc}: first call (compile) {time.perf_counter() - start:.1f} s")

            def run(step=step, holder=holder, batch=batch):
                holder.value, _ = step(holder.value, batch)
                return holder.value

            cases.append(Case(f"{impl} spc={spc}", run, items=args.batch * spc))
    stats = measure_interleaved(cases, rounds=args.rounds, target_s=args.target, log=log)
    rows = []
    for impl in args.spc_impls:
        one, ten = stats.get(f"{impl} spc=1"), stats.get(f"{impl} spc={k}")
        if one and ten:
            per1, per10 = one.median, ten.median / k
            rows.append([impl, fmt(per1 * 1e3, 1), fmt(per10 * 1e3, 1), f"{per10 / per1:.3f}",
                         f"{one.spread:.0%} / {ten.spread:.0%}"])
    table = markdown_table(["impl", "ms/step (K=1)", f"ms/step (K={k})", "ratio K=10 / K=1",
                            "spread"], rows)
    text = (f"`make_train_step(steps_per_call=K)`, MNIST CNN, batch {args.batch}, per step:\n\n"
            f"{table}")
    log(text)
    return text, {n: s.as_dict() for n, s in stats.items()}


# (label, batch, size, channels, kernel, stride) of depthwise layers, padding kernel // 2.
DEPTHWISE_SHAPES = (
    ("MobileNetV2 expanded 144, 3x3", 32, 56, 144, 3, 1),
    ("MobileNetV2 expanded 96, 3x3 /2", 32, 112, 96, 3, 2),
    ("ConvNeXt-T stage 1, 7x7", 32, 56, 96, 7, 1),
)
QUICK_DEPTHWISE_SHAPES = (("quick 16, 3x3", 2, 12, 16, 3, 1), ("quick 8, 5x5 /2", 2, 11, 8, 5, 2))


def depthwise_jax_cases(label, batch, size, channels, k, stride):
    """fwd+bwd of a depthwise ``jc.ops.conv``: ``impl="patches"`` (its depthwise form) and lax."""
    import jax

    import jaxconv as jc

    kx, kw, kg = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, (batch, size, size, channels))
    w = jax.random.normal(kw, (k, k, 1, channels)) * 0.1
    cases = []
    for name, impl in (("depthwise form", "patches"), ("lax", "lax")):
        def f(x, w, impl=impl):
            return jc.ops.conv(x, w, stride=stride, padding=k // 2, groups=channels, impl=impl)

        g = jax.random.normal(kg, jax.eval_shape(f, x, w).shape)
        both = jax.jit(lambda x, w, g, f=f: jax.vjp(f, x, w)[1](g))
        cases.append(Case(f"{label}: {name}", lambda both=both, g=g: both(x, w, g), items=batch))
    return cases


def depthwise_torch_cases(label, batch, size, channels, k, stride):
    """fwd+bwd of PyTorch's ``conv2d(groups=C)``, contiguous (NCHW) and channels_last."""
    try:
        torch = torch_threads()
    except ImportError:
        return []
    torch.manual_seed(0)
    out = (size + 2 * (k // 2) - k) // stride + 1
    cases = []
    for name, fmt_ in (("torch NCHW", torch.contiguous_format),
                       ("torch channels_last", torch.channels_last)):
        x = torch.randn(batch, channels, size, size).to(memory_format=fmt_).requires_grad_()
        w = (0.1 * torch.randn(channels, 1, k, k)).to(memory_format=fmt_).requires_grad_()
        g = torch.randn(batch, channels, out, out).to(memory_format=fmt_)

        def both(x=x, w=w, g=g):
            y = torch.nn.functional.conv2d(x, w, stride=stride, padding=k // 2, groups=channels)
            return torch.autograd.grad(y, (x, w), g)

        cases.append(Case(f"{label}: {name}", both, sync=common.no_sync, items=batch))
    return cases


def section_depthwise(args, log):
    """Depthwise layers fwd+bwd: the patches path's depthwise form, lax and PyTorch."""
    names = ("depthwise form", "lax", "torch NCHW", "torch channels_last")
    rows = []
    for shape in QUICK_DEPTHWISE_SHAPES if args.quick else DEPTHWISE_SHAPES:
        label, batch, size, channels, k, stride = shape
        cases = depthwise_jax_cases(*shape) + depthwise_torch_cases(*shape)
        stats = measure_interleaved(cases, rounds=args.rounds, target_s=args.target, log=log)
        found = {n: stats.get(f"{label}: {n}") for n in names}
        ms = [fmt(s.median * 1e3, 2) if s else "-" for s in found.values()]
        spread = " / ".join(f"{s.spread:.0%}" if s else "-" for s in found.values())
        form = found["depthwise form"]
        torch_best = min((s.median for n, s in found.items() if s and n.startswith("torch")),
                         default=None)
        rows.append([label, f"{batch}x{size}x{size}x{channels}, {k}x{k}"
                     + (f" /{stride}" if stride > 1 else ""), *ms, spread,
                     ratio(found["lax"].median if found["lax"] else None,
                           form.median if form else None),
                     ratio(torch_best, form.median if form else None)])
    table = markdown_table(["layer", "shape", *(f"{n} ms" for n in names),
                            "spread (same order)", "lax / form", "best torch / form"], rows)
    text = (f"Depthwise convolutions (groups = C, padding k // 2, float32), forward+backward "
            f"(gradients for input and kernel): `impl=\"patches\"` (its depthwise form), "
            f"`impl=\"lax\"` and PyTorch `conv2d(groups=C)`; median of {args.rounds} "
            f"interleaved rounds (ratios > 1: the depthwise form is faster):\n\n{table}")
    log(text)
    return text, rows


# The zoo section: torchvision's architectures, with this many classes in jaxconv and torchvision.
ZOO_CLASSES = 10
ZOO_TRAINING = ("resnet18", "mobilenet_v2")
ZOO_LATENCY = "resnet18"
ZOO_IMPLS = ("auto", "lax")
# Row label -> torch memory format of PyTorch's parameters and images.
TORCH_FORMATS = {"contiguous": "contiguous_format", "channels_last": "channels_last"}


def torchvision_net(name: str):
    """torchvision's ``name`` with ``ZOO_CLASSES`` outputs, random weights (seed 0)."""
    torch = torch_threads()
    torch.manual_seed(0)
    return getattr(import_torchvision().models, name)(weights=None, num_classes=ZOO_CLASSES)


def jaxconv_infer_case(name: str, model, x) -> Case:
    """The jitted inference forward (``train=False``: BatchNorm uses its running statistics)."""
    import jax

    params, state = jax.jit(lambda k: model.init(k, x.shape)[1:])(jax.random.PRNGKey(0))
    forward = jax.jit(lambda p, s, x: model.apply(p, s, x)[0])
    x = jax.device_put(x)
    return Case(name, lambda: forward(params, state, x), items=len(x))


def torch_infer_case(name: str, net, x, memory_format: str = "contiguous_format") -> Case:
    """``net.eval()`` under ``torch.inference_mode()`` on ``x`` (see ``torch_images``)."""
    torch = torch_threads()
    net = net.to(memory_format=getattr(torch, memory_format)).eval()
    tx = torch_images(x, memory_format)

    def run():
        with torch.inference_mode():
            return net(tx)

    return Case(name, run, sync=common.no_sync, items=len(x))


def zoo_stats(name: str, input_shape, jax_case, torch_case, args, log):
    """Times ``jax_case(label, model)`` per ``ZOO_IMPLS`` against ``torch_case(label, net,
    memory_format=...)`` per ``TORCH_FORMATS``, interleaved; returns ``(stats, parameters)``."""
    import jaxconv as jc

    cases = [jax_case(f"jaxconv {impl}", jc.models.get_model(name, ZOO_CLASSES, impl=impl))
             for impl in ZOO_IMPLS]
    count = check_same_network(name, jc.models.get_model(name, ZOO_CLASSES), input_shape,
                               torchvision_net(name), log)
    cases += [torch_case(f"PyTorch {label}", torchvision_net(name), memory_format=memory_format)
              for label, memory_format in TORCH_FORMATS.items()]
    return measure_interleaved(cases, rounds=args.rounds, target_s=args.target, log=log), count


def zoo_rows(model: str, stats) -> list[list[str]]:
    """Table rows; "vs PyTorch" is the speed relative to the faster PyTorch row, named."""
    torch_rows = {n: s for n, s in stats.items() if n.startswith("PyTorch ")}
    best = max(torch_rows, key=lambda n: torch_rows[n].rate, default=None)
    rows = []
    for name, s in stats.items():
        versus = f"{ratio(s.rate, stats[best].rate)} ({best[len('PyTorch '):]})" if best else "-"
        rows.append([model, name, fmt(s.rate, 1), fmt(s.median * 1e3, 1), f"{s.spread:.0%}",
                     versus])
    return rows


def zoo_batch(batch: int, size: int):
    """Random channels-last float32 images ``(batch, size, size, 3)`` and int labels."""
    import numpy as np

    rng = np.random.default_rng(0)
    return (rng.standard_normal((batch, size, size, 3), dtype=np.float32),
            rng.integers(0, ZOO_CLASSES, batch).astype(np.int32))


def section_zoo(args, log):
    """torchvision's ResNet-18 and MobileNetV2 in jaxconv and PyTorch: training and latency."""
    train_rows, raw, counts = [], {}, {}
    x, y = zoo_batch(args.zoo_batch, args.zoo_size)
    for name in ZOO_TRAINING:
        stats, counts[name] = zoo_stats(
            name, x.shape, functools.partial(jaxconv_train_case, x=x, y=y),
            functools.partial(torch_train_case, x=x, y=y), args, log)
        train_rows += zoo_rows(name, stats)
        raw[f"{name} training"] = {n: s.as_dict() for n, s in stats.items()}
    image, _ = zoo_batch(1, args.zoo_latency_size)
    stats, counts[ZOO_LATENCY] = zoo_stats(
        ZOO_LATENCY, image.shape, functools.partial(jaxconv_infer_case, x=image),
        functools.partial(torch_infer_case, x=image), args, log)
    raw[f"{ZOO_LATENCY} latency"] = {n: s.as_dict() for n, s in stats.items()}
    headers = ["model", "framework", "images/s", "ms", "spread", "vs PyTorch (faster row)"]
    params = ", ".join(f"{name} {count:,}" for name, count in counts.items())
    text = (f"torchvision's architectures in jaxconv (`jaxconv.models`, impl auto and lax) and "
            f"PyTorch eager ({torch_threads().get_num_threads()} threads; contiguous NCHW and "
            f"channels_last), float32, {ZOO_CLASSES} classes, parameters equal in both ({params}); "
            f"median of {args.rounds} interleaved rounds. \"vs PyTorch\": speed relative to the "
            f"faster PyTorch row (named).\n\nTraining step (ms per step): batch {args.zoo_batch}, "
            f"{args.zoo_size}x{args.zoo_size}x3 random images, BatchNorm in training mode, "
            f"Adam 1e-3, softmax cross-entropy; jaxconv `make_train_step` with its defaults, "
            f"PyTorch `model.train()`:\n\n{markdown_table(headers, train_rows)}\n\n"
            f"{ZOO_LATENCY} inference latency (ms per image): batch 1, "
            f"{args.zoo_latency_size}x{args.zoo_latency_size}x3; jaxconv's jitted apply with "
            f"`train=False` (BatchNorm on running statistics), PyTorch `model.eval()` under "
            f"`torch.inference_mode()`:\n\n{markdown_table(headers, zoo_rows(ZOO_LATENCY, stats))}")
    log(text)
    return text, raw


# The training settings of the baseline commit's `jaxconv train`, in this tree's flags.
BASELINE_SETTINGS = ["--optimizer", "adam", "--schedule", "constant", "--lr", "1e-3",
                     "--label-smoothing", "0", "--augment", "none"]


def section_train(args, log):
    """Must show 4: `jaxconv train` wall time, this tree against a baseline commit."""
    repo = common.REPO_ROOT
    trees = {"this tree": repo}
    tmp = tempfile.mkdtemp(prefix="jaxconv-baseline-")
    try:
        base_dir = os.path.join(tmp, "src")
        os.makedirs(base_dir)
        archive = subprocess.run(["git", "-C", repo, "archive", args.baseline],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", base_dir], input=archive, check=True)
        trees[f"baseline {args.baseline}"] = base_dir
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        log(f"  baseline {args.baseline} unavailable ({exc}); timing this tree only")
    # The same schedule length for every run. This tree runs with its own defaults
    # (it also augments, uses one-cycle AdamW with label smoothing and checkpoints
    # every epoch) and with the baseline's training settings (Adam 1e-3, constant,
    # no augmentation or smoothing; it still checkpoints), each with an empty
    # compilation cache ("cold": a fresh JAXCONV_COMPILATION_CACHE directory per
    # run); its defaults also with the cache a previous run left ("warm"). No run
    # writes plots, which the baseline lacks.
    extra = ["--epochs", "1" if args.quick else "15"]
    warm_cache = os.path.join(tmp, "warm-cache")
    runs = {"this tree, its defaults, cold cache": (repo, ["--no-plots"], None),
            "this tree, its defaults, warm cache": (repo, ["--no-plots"], warm_cache),
            "this tree, baseline settings, cold cache": (
                repo, ["--no-plots", *BASELINE_SETTINGS], None)}
    runs.update({name: (tree, [], None) for name, tree in trees.items() if tree != repo})
    times = {name: [] for name in runs}

    def train(name, tree, own_extra, cache, record=True):
        # A fresh directory per run: a run directory belongs to one run.
        out = tempfile.mkdtemp(dir=tmp, prefix=name.replace(" ", "_").replace(",", "") + "-")
        env = dict(os.environ, PYTHONPATH=tree,
                   JAXCONV_COMPILATION_CACHE=cache or tempfile.mkdtemp(dir=tmp, prefix="cache-"))
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "jaxconv", "train", "--no-progress",
                               "--out", out, *extra, *own_extra], cwd=tree, env=env,
                              capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            log(f"  {name}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
            return
        last = [ln for ln in proc.stdout.splitlines() if "final test accuracy" in ln]
        log(f"  {name}: {elapsed:.1f} s  {last[0] if last else ''}" + ("" if record else
                                                                       " (warm-up, not counted)"))
        if record:
            times[name].append(elapsed)

    try:
        train("fill the warm cache", repo, ["--no-plots"], warm_cache, record=False)
        for _ in range(args.train_repeats):
            for name, (tree, own_extra, cache) in runs.items():
                train(name, tree, own_extra, cache)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = [[name, fmt(statistics.median(v), 1) if v else "-",
             " ".join(f"{t:.1f}" for t in v)] for name, v in times.items()]
    table = markdown_table(["tree", "wall s (median)", "runs"], rows)
    text = (f"`python -m jaxconv train --no-progress --epochs {extra[1]}` (digits, digits_cnn), "
            "whole process wall time, alternated runs. This tree runs with `--no-plots` and "
            "either its own defaults (AdamW one-cycle, label smoothing, augmentation, a "
            "checkpoint per epoch) or the baseline's training settings "
            f"(`{' '.join(BASELINE_SETTINGS)}`; still a checkpoint per epoch); \"cold cache\": "
            "an empty persistent compilation cache, \"warm\": the one a previous run "
            f"left:\n\n{table}")
    log(text)
    return text, times


SECTIONS = {"step": section_step, "micro": section_micro, "rows": section_rows,
            "depthwise": section_depthwise, "zoo": section_zoo,
            "layer": section_layer, "spc": section_spc, "train": section_train}


def set_sizes(args) -> None:
    """Fills in the options left unset and the sizes: tiny ones with ``--quick``."""
    quick = args.quick
    args.rounds = args.rounds or (2 if quick else 7)
    args.batch = args.batch or (8 if quick else 128)
    args.size = 12 if quick else 28
    args.target = 0.02 if quick else 0.3
    args.train_repeats = args.train_repeats or (1 if quick else 3)
    args.spc_impls = ["auto"] if quick else ["auto", "lax", "patches"]
    args.zoo_batch, args.zoo_size = (2, 32) if quick else (32, 64)
    args.zoo_latency_size = 64 if quick else 224


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--baseline", default="943fcf5", help="commit for the train section")
    parser.add_argument("--train-repeats", type=int, default=None)
    parser.add_argument("--results", default=common.RESULTS_MD, help="markdown file to update")
    parser.add_argument("--no-write", action="store_true", help="do not update the results file")
    parser.add_argument("--json", default=None, help="also write raw timings here (JSON lines)")
    parser.add_argument("--retain-host-memory", action="store_true",
                        help="call jaxconv.runtime.retain_host_memory() first (the whole process, "
                             "every framework in it); results go to the 'cpu-retained' section")
    args = parser.parse_args(argv)
    if args.retain_host_memory:
        from jaxconv.runtime import retain_host_memory

        if not retain_host_memory():
            parser.error("--retain-host-memory: the setting could not be applied")

    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; expected some of {list(SECTIONS)}")
    set_sizes(args)

    info = common.machine_info()
    log = functools.partial(print, flush=True)
    log(common.describe_machine(info))
    partial = common.PartialLog(args.json)
    texts = []
    for name in sections:
        result = common.run_section(name, lambda name=name: SECTIONS[name](args, log), log)
        if result is not None:
            text, raw = result
            texts.append(text)
            partial.write(name, {"raw": raw})
    if args.no_write or args.quick:
        log("\n(results file not updated: --quick or --no-write)")
    else:
        write_results(args, sections, info, texts, log)
    return 0


def write_results(args, sections, info, texts, log) -> None:
    """Writes the run's section of the results file: "cpu", "cpu-retained", "cpu-<sections>"."""
    section, title = "cpu", "CPU: MNIST CNN, convolutions and the model zoo (`benchmarks/cpu.py`)"
    if args.retain_host_memory:
        section = "cpu-retained"
        title = ("CPU, host memory retained (`benchmarks/cpu.py --retain-host-memory`): glibc "
                 "keeps freed memory for the whole process, every framework included")
    if set(sections) != set(SECTIONS):  # a partial run gets its own section: the full one stays
        section += "-" + "-".join(sections)
        title += f", sections {', '.join(sections)} only"
    body = f"## {title}\n\n{common.describe_machine(info)}\n\n" + "\n\n".join(texts)
    common.write_section(args.results, section, body)
    log(f"\nwrote the '{section}' section of {args.results}")


if __name__ == "__main__":
    sys.exit(main())
