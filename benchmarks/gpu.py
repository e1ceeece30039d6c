"""GPU benchmark: ResNet-9 and ResNet-50 training, jaxconv against Flax and PyTorch.

One run measures, in this order (each section under its own time cap, the
whole run under ``--budget`` seconds, and a crash in one section never stops
the others):

1. ``ceilings``: the bf16 matmul rate (TFLOP/s of a large ``jnp.dot``) and the
   device copy bandwidth: the hardware limits the other numbers are read against.
2. ``main``: the ResNet-9 training step (batch 512, random 32x32x3 data, SGD
   Nesterov momentum 0.9, softmax cross-entropy) in bf16 compute with float32
   parameters, interleaved: jaxconv ``impl`` lax / patches / auto
   (``jaxconv.models.resnet9``), Flax linen (the same network, defined here)
   and PyTorch eager (channels_last, bf16 autocast).
3. ``spc``: jaxconv ``steps_per_call`` 10 against 1 (bf16, lax and patches).
4. ``f32``: jaxconv in float32 (lax, patches).
5. ``micro``: ResNet-9's convolution layers alone, bf16, both impls, forward
   and forward+backward.
6. ``compile``: PyTorch ``torch.compile`` (its compile time is the least
   predictable).
7. ``profile``: where jaxconv's bf16 step spends its device time, from a
   ``jax.profiler`` trace: kernel time per class (convolution, matmul,
   elementwise fusion, fusion with a reduction, copy) and the longest kernels.
8. ``chunks``: the patches path with its batch in chunks (patch tensors of
   24 and 48 MB) against the default (on GPU: unchunked) patches and lax.
9. ``pallas``: the Pallas kernel (``impl="pallas"``, ``jaxconv.ops.pallas_conv``)
   against lax and patches, bf16: ResNet-9's convolution layers alone
   (forward+backward) and the full training step. Off GPU its kernels run in
   Pallas's interpret mode: a smoke test of the section, not a measurement.
10. ``resnet50``: the bf16 training step (float32 parameters, SGD Nesterov) of
    torchvision's ResNet-50 (v1.5) at 224x224x3, batch 256, 1000 classes
    (``--quick``: batch 2 at 32x32), interleaved: jaxconv
    (``jaxconv.models.get_model("resnet50")``, ``impl`` lax and auto), Flax
    linen (the same network, defined here), PyTorch eager and
    ``torch.compile`` (torchvision's ``resnet50``, channels_last, bf16
    autocast). The three networks' parameter and BatchNorm-statistics counts
    must be equal (else the section fails). Its own table has ResNet-9's
    columns, with the ratios to this network's peers. Its compiles (one XLA
    program per JAX case, Inductor's for ``torch.compile``) need minutes:
    after the ResNet-9 sections the default budget has little left, so run it
    alone, ``--sections resnet50``; it then measures the ``ceilings`` first
    (for the fraction of the matmul rate) and writes the ``gpu-resnet50``
    section of the results file instead of ``gpu``.

Prints a table (images/s, TFLOP/s, fraction of the measured matmul rate,
ratios to each peer), writes the ``gpu`` section of ``benchmarks/RESULTS.md``
and, with ``--out DIR``, everything as it goes into ``DIR``
(``gpu_partial.jsonl``, ``gpu_section.md``, ``RESULTS.md``), so that a run cut
off by a time limit still leaves its data.

Runs from the repository root without installing jaxconv::

    PYTHONPATH=. python3 benchmarks/gpu.py --out $OUT     # on the GPU (see run_gpu.sh)
    python benchmarks/gpu.py --quick                      # tiny sizes, CPU smoke test

Flax and PyTorch are optional: missing ones are skipped with a note.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import re
import sys
import time
import traceback

# JAX must not grab most of the GPU memory at start-up: PyTorch shares the device.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

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

NUM_CLASSES = 10
LR = 0.01
# ResNet-50: blocks per stage (torchvision's resnet50) and ImageNet's classes.
RESNET50_BLOCKS = (3, 4, 6, 3)
RESNET50_CLASSES = 1000
# Each row's peers in the tables: (column label, row name).
PEERS = [("Flax", "Flax linen bf16"), ("torch eager", "PyTorch eager bf16"),
         ("torch.compile", "PyTorch torch.compile bf16")]


class Run:
    """The run's configuration, clock, logs and accumulated results."""

    def __init__(self, args):
        self.args = args
        self.start = time.perf_counter()
        self.partial = common.PartialLog(os.path.join(args.out, "gpu_partial.jsonl")
                                         if args.out else None)
        self.results: dict[str, dict] = {}  # row name -> {"stats": Stats, "note": str, ...}
        self.notes: list[str] = []
        self.ceilings: dict[str, float] = {}
        self.micro_rows: list = []
        self.extra_tables: list[str] = []
        self.cases: dict[str, Case] = {}  # section main's built steps, reused by later sections

    def remaining(self) -> float:
        return self.args.budget - (time.perf_counter() - self.start)

    def log(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.start:6.1f}s] {msg}", flush=True)

    def note(self, msg: str) -> None:
        self.notes.append(msg)
        self.log(msg)

    def record(self, name: str, stats, **extra) -> None:
        self.results[name] = {"stats": stats, **extra}
        self.partial.write("result", {**stats.as_dict(), **{k: str(v) for k, v in extra.items()}})


# --------------------------------------------------------------------------
# Work counts.


def resnet9_conv_layers(size: int, width: int):
    """``(label, spatial size, c_in, c_out)`` of ResNet-9's 3x3 convolutions, in order."""
    w = width
    return [("prep", size, 3, w), ("layer1", size, w, 2 * w),
            ("res1a", size // 2, 2 * w, 2 * w), ("res1b", size // 2, 2 * w, 2 * w),
            ("layer2", size // 2, 2 * w, 4 * w), ("layer3", size // 4, 4 * w, 8 * w),
            ("res3a", size // 8, 8 * w, 8 * w), ("res3b", size // 8, 8 * w, 8 * w)]


def distinct_resnet9_conv_layers(size: int, width: int):
    """``resnet9_conv_layers`` without repeats: the first layer of each (size, c_in, c_out)."""
    seen = set()
    for label, s, ci, co in resnet9_conv_layers(size, width):
        if (s, ci, co) not in seen:
            seen.add((s, ci, co))
            yield label, s, ci, co


def train_flops(convs, features: int, classes: int) -> float:
    """FLOPs of one training step per image: 3x the forward convolutions and classifier.

    ``convs``: ``(output size, kernel size, c_in, c_out)`` of each (square)
    convolution; the classifier maps ``features`` to ``classes``. A
    multiply-add counts 2 FLOPs.
    """
    fwd = sum(2.0 * s * s * k * k * ci * co for s, k, ci, co in convs)
    return 3 * (fwd + 2.0 * features * classes)


def resnet9_train_flops(size: int, width: int) -> float:
    """FLOPs of one ResNet-9 training step per image (``train_flops``)."""
    convs = [(s, 3, ci, co) for _, s, ci, co in resnet9_conv_layers(size, width)]
    return train_flops(convs, 8 * width, NUM_CLASSES)


def resnet50_conv_layers(size: int):
    """``(input size, kernel size, stride, c_in, c_out)`` of torchvision's ResNet-50's convolutions.

    On ``size x size`` images, in order: ``conv1`` 7x7/2, then per bottleneck
    1x1, 3x3 (the block's stride: v1.5), the ``downsample`` projection (first
    block of a stage) and 1x1. Every convolution pads ``kernel // 2``, so its
    output is ``ceil(input / stride)``; ``conv1`` and the 3x3/2 max pool
    together divide the size by 4, rounding up.
    """
    layers = [(size, 7, 2, 3, 64)]
    s, c_in = -(-size // 4), 64
    for stage, blocks in enumerate(RESNET50_BLOCKS):
        planes = 64 << stage
        for b in range(blocks):
            stride = 2 if stage and not b else 1
            layers += [(s, 1, 1, c_in, planes), (s, 3, stride, planes, planes)]
            if not b:
                layers.append((s, 1, stride, c_in, 4 * planes))
            s, c_in = -(-s // stride), 4 * planes
            layers.append((s, 1, 1, planes, c_in))
    return layers


def resnet50_train_flops(size: int, classes: int) -> float:
    """FLOPs of one ResNet-50 training step per image (``train_flops``).

    At 224x224 the forward is 8.2 GFLOP (4.1 G multiply-adds: the "4.09 GFLOPS"
    torchvision's model table lists for resnet50 counts multiply-adds), the
    step 24.5 GFLOP.
    """
    convs = [(-(-s // stride), k, ci, co) for s, k, stride, ci, co in resnet50_conv_layers(size)]
    return train_flops(convs, 2048, classes)


@dataclasses.dataclass(frozen=True)
class Workload:
    """One training step's data: ``batch`` random ``size x size x 3`` images, ``classes`` labels;
    ``flops``: FLOPs per image of the step."""

    batch: int
    size: int
    classes: int
    flops: float


def resnet9_workload(args) -> Workload:
    return Workload(args.batch, args.size, NUM_CLASSES, resnet9_train_flops(args.size, args.width))


def resnet50_workload(args) -> Workload:
    return Workload(args.resnet50_batch, args.resnet50_size, RESNET50_CLASSES,
                    resnet50_train_flops(args.resnet50_size, RESNET50_CLASSES))


# --------------------------------------------------------------------------
# Ceilings.


def section_ceilings(run: Run):
    import jax
    import jax.numpy as jnp

    n = 256 if run.args.quick else 8192
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.bfloat16)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.bfloat16)
    mm = jax.jit(lambda a, b: a @ b)  # bf16 in and out, f32 accumulation
    elems = (1 << 16) if run.args.quick else (1 << 28)  # 512 MiB of float16 per buffer
    src = jnp.ones((elems,), jnp.float16)
    copy = jax.jit(lambda x: x + 1)  # one read and one write (x * 1 would be simplified away)
    cases = [Case(f"bf16 matmul {n}^3", lambda: mm(a, b), flops=2.0 * n ** 3),
             Case(f"copy {elems * 2 >> 20} MiB", lambda: copy(src), flops=0.0, items=2.0 * elems * 2)]
    stats = measure_interleaved(cases, rounds=5, warmup=2, target_s=0.1 if run.args.quick else 0.3,
                                time_cap_s=30, log=run.log)
    for s in stats.values():
        run.partial.write("ceilings", s.as_dict())
    mm_s = stats.get(cases[0].name)
    cp_s = stats.get(cases[1].name)
    if mm_s:
        run.ceilings["matmul_tflops"] = mm_s.flops_rate / 1e12
    if cp_s:
        run.ceilings["copy_gbs"] = cp_s.rate / 1e9  # items = bytes moved (read + write)
    run.log(f"ceilings: bf16 matmul {run.ceilings.get('matmul_tflops', float('nan')):.1f} TFLOP/s, "
            f"copy {run.ceilings.get('copy_gbs', float('nan')):.0f} GB/s (read + write)")


# --------------------------------------------------------------------------
# The networks.


class Holder:
    """Carries a donated training state from call to call."""

    def __init__(self, value):
        self.value = value


def make_data(run: Run, k: int = 1, work: Workload | None = None):
    """``(images, labels)`` on the device: ``k`` batches of ``work`` (default ResNet-9's)."""
    import jax
    import numpy as np

    w = work or resnet9_workload(run.args)
    rng = np.random.default_rng(0)
    shape = (k, w.batch, w.size, w.size, 3) if k > 1 else (w.batch, w.size, w.size, 3)
    x = rng.standard_normal(shape, dtype=np.float32)
    y = rng.integers(0, w.classes, shape[:-3]).astype(np.int32)
    return jax.device_put(x), jax.device_put(y)


def f32_cross_entropy(logits, labels):
    import jax.numpy as jnp

    import jaxconv as jc

    return jc.cross_entropy(logits.astype(jnp.float32), labels)


def jaxconv_case(run: Run, impl: str, dtype_name: str, spc: int = 1, data=None):
    """A Case for jaxconv's ResNet-9 training step (``jaxconv_step_case``)."""
    import jax.numpy as jnp

    from jaxconv.models import resnet9

    dtype = {"bf16": jnp.bfloat16, "f32": None}[dtype_name]
    model = resnet9(width=run.args.width, impl=impl, dtype=dtype)
    name = f"jaxconv {impl} {dtype_name}" + (f" spc={spc}" if spc > 1 else "")
    return jaxconv_step_case(run, name, model, resnet9_workload(run.args), spc, data)


def jaxconv_step_case(run: Run, name: str, model, work: Workload, spc: int = 1, data=None):
    """A Case for a jaxconv ``model``'s training step on ``work`` (float32 parameters, SGD
    Nesterov, ``spc`` steps per call; the first call, trace + compile, is done here)."""
    import jax
    import optax

    import jaxconv as jc

    opt = optax.sgd(LR, momentum=0.9, nesterov=True)
    step = jc.make_train_step(model, opt, f32_cross_entropy, steps_per_call=spc)
    shape = (-1, work.size, work.size, 3)
    holder = Holder(jc.create_train_state(model, jax.random.PRNGKey(0), shape, opt))
    x, y = data if data is not None else make_data(run, spc, work)
    t0 = time.perf_counter()
    holder.value, _ = step(holder.value, (x, y))
    jax.block_until_ready(holder.value)
    run.log(f"  {name}: first call (trace + compile) {time.perf_counter() - t0:.1f} s")

    def go():
        holder.value, _ = step(holder.value, (x, y))
        return holder.value

    return Case(name, go, items=work.batch * spc, flops=work.flops * work.batch * spc)


def flax_conv_bn(dtype):
    """Flax linen's ``ConvBN`` module class: a bias-free square convolution padded by
    ``kernel // 2`` (as torchvision's), BatchNorm with PyTorch's momentum and epsilon and
    an optional ReLU, computing in ``dtype`` with float32 parameters."""
    import flax.linen as nn
    import jax.numpy as jnp

    class ConvBN(nn.Module):
        features: int
        kernel: int = 3
        stride: int = 1
        relu: bool = True

        @nn.compact
        def __call__(self, x, train):
            pad = ((self.kernel // 2,) * 2,) * 2
            x = nn.Conv(self.features, (self.kernel,) * 2, strides=self.stride, padding=pad,
                        use_bias=False, dtype=dtype, param_dtype=jnp.float32)(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                             dtype=dtype, param_dtype=jnp.float32)(x)
            return nn.relu(x) if self.relu else x

    return ConvBN


def flax_resnet9(width: int, dtype):
    """ResNet-9 (as ``jaxconv.models.resnet9``) as a Flax linen module."""
    import flax.linen as nn
    import jax.numpy as jnp

    ConvBN = flax_conv_bn(dtype)  # noqa: N806 - a class

    class ResNet9(nn.Module):
        @nn.compact
        def __call__(self, x, train=True):
            w = width
            pool = functools.partial(nn.max_pool, window_shape=(2, 2), strides=(2, 2))
            x = ConvBN(w)(x, train)
            x = pool(ConvBN(2 * w)(x, train))
            x = x + ConvBN(2 * w)(ConvBN(2 * w)(x, train), train)
            x = pool(ConvBN(4 * w)(x, train))
            x = pool(ConvBN(8 * w)(x, train))
            x = x + ConvBN(8 * w)(ConvBN(8 * w)(x, train), train)
            x = jnp.max(x, axis=(1, 2))
            x = nn.Dense(NUM_CLASSES, use_bias=False, dtype=dtype, param_dtype=jnp.float32)(x)
            return x * 0.125

    return ResNet9()


def flax_resnet50(classes: int, dtype):
    """torchvision's ResNet-50 (v1.5: the bottleneck strides on its 3x3 convolution) as a
    Flax linen module: the same layers and widths as ``jaxconv.models.resnet50``."""
    import flax.linen as nn
    import jax.numpy as jnp

    ConvBN = flax_conv_bn(dtype)  # noqa: N806 - a class

    class Bottleneck(nn.Module):
        planes: int
        stride: int

        @nn.compact
        def __call__(self, x, train):
            out = 4 * self.planes
            y = ConvBN(self.planes, 1)(x, train)
            y = ConvBN(self.planes, 3, self.stride)(y, train)
            y = ConvBN(out, 1, relu=False)(y, train)
            if self.stride != 1 or x.shape[-1] != out:
                x = ConvBN(out, 1, self.stride, relu=False)(x, train)
            return nn.relu(x + y)

    class ResNet50(nn.Module):
        @nn.compact
        def __call__(self, x, train=True):
            x = ConvBN(64, 7, 2)(x, train)
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
            for stage, blocks in enumerate(RESNET50_BLOCKS):
                for b in range(blocks):
                    x = Bottleneck(64 << stage, 2 if stage and not b else 1)(x, train)
            x = jnp.mean(x, axis=(1, 2))
            return nn.Dense(classes, dtype=dtype, param_dtype=jnp.float32)(x)

    return ResNet50()


def flax_case(run: Run, dtype_name: str = "bf16"):
    """A Case for the Flax ResNet-9's training step (``flax_step_case``)."""
    import jax.numpy as jnp

    dtype = {"bf16": jnp.bfloat16, "f32": jnp.float32}[dtype_name]
    return flax_step_case(run, f"Flax linen {dtype_name}", flax_resnet9(run.args.width, dtype),
                          resnet9_workload(run.args))


def flax_step_case(run: Run, name: str, module, work: Workload, data=None):
    """A Case for a Flax linen ``module``'s training step on ``work`` (SGD Nesterov, the
    parameters as the module makes them; the first call, trace + compile, is done here)."""
    import jax
    import optax

    x, y = data if data is not None else make_data(run, work=work)
    variables = module.init(jax.random.PRNGKey(0), x[:1], train=False)
    opt = optax.sgd(LR, momentum=0.9, nesterov=True)

    def loss_fn(params, stats, x, y):
        logits, new = module.apply({"params": params, "batch_stats": stats}, x, train=True,
                                   mutable=["batch_stats"])
        return f32_cross_entropy(logits, y), new["batch_stats"]

    @functools.partial(jax.jit, donate_argnums=(0,))
    def step(carry, x, y):
        params, stats, opt_state = carry
        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, x, y)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), stats, opt_state), loss

    params = variables["params"]
    holder = Holder((params, variables["batch_stats"], opt.init(params)))
    t0 = time.perf_counter()
    holder.value, _ = step(holder.value, x, y)
    jax.block_until_ready(holder.value)
    run.log(f"  {name}: first call {time.perf_counter() - t0:.1f} s")

    def go():
        holder.value, _ = step(holder.value, x, y)
        return holder.value

    return Case(name, go, items=work.batch, flops=work.flops * work.batch)


def torch_net(width: int):
    import torch
    from torch import nn

    def block(ci, co):
        return nn.Sequential(nn.Conv2d(ci, co, 3, padding=1, bias=False), nn.BatchNorm2d(co),
                             nn.ReLU(inplace=True))

    class Residual(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.body = nn.Sequential(block(c, c), block(c, c))

        def forward(self, x):
            return x + self.body(x)

    class ResNet9(nn.Module):
        def __init__(self, w):
            super().__init__()
            self.features = nn.Sequential(
                block(3, w),
                block(w, 2 * w), nn.MaxPool2d(2), Residual(2 * w),
                block(2 * w, 4 * w), nn.MaxPool2d(2),
                block(4 * w, 8 * w), nn.MaxPool2d(2), Residual(8 * w))
            self.classifier = nn.Linear(8 * w, NUM_CLASSES, bias=False)

        def forward(self, x):
            x = torch.amax(self.features(x), dim=(2, 3))
            return self.classifier(x) * 0.125

    return ResNet9(width)


def torch_case(run: Run, compiled: bool = False):
    """A Case for the PyTorch ResNet-9's training step (``torch_step_case``)."""
    label = "PyTorch torch.compile bf16" if compiled else "PyTorch eager bf16"
    return torch_step_case(run, label, lambda: torch_net(run.args.width),
                           resnet9_workload(run.args), compiled)


def torchvision_resnet50(classes: int):
    """torchvision's ``resnet50`` (random weights) with ``classes`` outputs."""
    return import_torchvision().models.resnet50(weights=None, num_classes=classes)


def torch_step_case(run: Run, name: str, make_net, work: Workload, compiled: bool = False):
    """A Case for the training step of the PyTorch network ``make_net()`` (built after seeding)
    on ``work``: channels_last, bf16 autocast, SGD Nesterov; eager or ``torch.compile``d. The
    first call (with ``torch.compile``, the compile) is done here."""
    import numpy as np
    import torch

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if not cuda:
        torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True
    net = make_net().to(device).to(memory_format=torch.channels_last)
    model = torch.compile(net) if compiled else net
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=0.9, nesterov=True)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((work.batch, 3, work.size, work.size),
                                             dtype=np.float32))
    x = x.to(device).contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(rng.integers(0, work.classes, work.batch).astype(np.int64)).to(device)

    def go():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        loss.backward()
        opt.step()
        return loss

    def sync(_):
        if cuda:
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    sync(go())
    run.log(f"  {name}: first call {time.perf_counter() - t0:.1f} s")
    return Case(name, go, sync=sync, items=work.batch, flops=work.flops * work.batch)


def auto_alias(run: Run, convs=None) -> str | None:
    """The impl that ``impl="auto"`` picks for every one of ``convs``, if one for all.

    ``convs``: ``(batch, input size, kernel size, c_in, c_out)`` of square
    convolutions; default: ResNet-9's.
    """
    try:
        from jaxconv.ops.autotune import choose_impl
    except ImportError:
        return None
    a = run.args
    convs = convs or [(a.batch, s, 3, ci, co)
                      for _, s, ci, co in resnet9_conv_layers(a.size, a.width)]
    picks = {choose_impl("conv", (n, s, s, ci), (k, k, ci, co), 1) for n, s, k, ci, co in convs}
    return picks.pop() if len(picks) == 1 else None


def build(run: Run, label: str, make, min_left: float):
    """Calls ``make()`` unless the budget is short; a failure is logged, not raised."""
    if run.remaining() < min_left:
        run.note(f"skipped {label}: {run.remaining():.0f} s of budget left")
        return None
    try:
        return make()
    except ImportError as exc:
        run.note(f"skipped {label}: {exc}")
    except Exception as exc:  # noqa: BLE001 - keep going with the other cases
        run.note(f"{label} failed: {type(exc).__name__}: {exc}")
        run.log(traceback.format_exc())
    return None


def measure_steps(run: Run, cases: list, cap_s: float) -> dict:
    """``measure_interleaved`` of training-step ``cases`` with the run's rounds and target,
    within ``cap_s`` seconds (or what is left of the budget, at least 5)."""
    return measure_interleaved(cases, rounds=run.args.rounds, warmup=1, target_s=run.args.target,
                               time_cap_s=min(cap_s, max(run.remaining(), 5)), log=run.log)


# --------------------------------------------------------------------------
# Sections.


def compile_cost(run: Run) -> float:
    return 5.0 if run.args.quick else 45.0


def resnet9_step_case(run: Run, impl: str, data=None):
    """jaxconv's bf16 ResNet-9 step with ``impl``: the one an earlier section built, else built
    now and kept for later sections (``None`` if the budget is short or the build fails)."""
    name = f"jaxconv {impl} bf16"
    if name not in run.cases:
        data = make_data(run) if data is None else data
        case = build(run, name, lambda: jaxconv_case(run, impl, "bf16", data=data),
                     compile_cost(run))
        if case is None:
            return None
        run.cases[name] = case
    return run.cases[name]


def section_main(run: Run):
    alias = auto_alias(run)
    data = make_data(run)
    for impl in ("lax", "patches", "auto"):
        if impl == "auto" and alias in ("lax", "patches"):
            run.note(f"impl='auto' picks '{alias}' for every ResNet-9 convolution on this "
                     f"backend: the 'jaxconv auto' rows are the '{alias}' measurements")
            continue
        case = build(run, f"jaxconv {impl} bf16",
                     lambda impl=impl: jaxconv_case(run, impl, "bf16", data=data), compile_cost(run))
        if case:
            run.cases[case.name] = case
    for label, make in (("Flax bf16", lambda: flax_case(run, "bf16")),
                        ("PyTorch eager", lambda: torch_case(run))):
        case = build(run, label, make, compile_cost(run))
        if case:
            run.cases[case.name] = case
    stats = measure_steps(run, list(run.cases.values()), 60)
    for name, s in stats.items():
        run.record(name, s, section="main")
    if alias in ("lax", "patches") and f"jaxconv {alias} bf16" in stats:
        run.results["jaxconv auto bf16"] = {**run.results[f"jaxconv {alias} bf16"],
                                            "alias": alias}


def section_spc(run: Run):
    k = 10
    cases = []
    datak = make_data(run, k)
    for impl in ("lax", "patches"):
        one = run.cases.get(f"jaxconv {impl} bf16")
        if one is None:
            continue
        ten = build(run, f"jaxconv {impl} bf16 spc={k}",
                    lambda impl=impl: jaxconv_case(run, impl, "bf16", spc=k, data=datak),
                    compile_cost(run))
        if ten:
            cases += [one, ten]
    stats = measure_steps(run, cases, 40)
    rows = []
    for impl in ("lax", "patches"):
        s1, s10 = stats.get(f"jaxconv {impl} bf16"), stats.get(f"jaxconv {impl} bf16 spc={k}")
        if s10:
            run.record(s10.name, s10, section="spc")
        if s1 and s10:
            per1, per10 = s1.median, s10.median / k
            rows.append([impl, fmt(per1 * 1e3, 2), fmt(per10 * 1e3, 2), f"{per10 / per1:.3f}"])
    if rows:
        run.extra_tables.append(
            "`steps_per_call` (bf16, same interleaved rounds), time per step:\n\n"
            + markdown_table(["impl", "ms/step K=1", f"ms/step K={k}", f"ratio K={k} / K=1"], rows))
        run.log(run.extra_tables[-1])


def section_f32(run: Run):
    cases = []
    data = make_data(run)
    alias = auto_alias(run)
    for impl in ("lax", "patches", "auto"):
        if impl == "auto" and alias in ("lax", "patches"):
            continue
        case = build(run, f"jaxconv {impl} f32",
                     lambda impl=impl: jaxconv_case(run, impl, "f32", data=data), compile_cost(run))
        if case:
            cases.append(case)
    stats = measure_steps(run, cases, 30)
    for name, s in stats.items():
        run.record(name, s, section="f32")
    if alias in ("lax", "patches") and f"jaxconv {alias} f32" in stats:
        run.results["jaxconv auto f32"] = {**run.results[f"jaxconv {alias} f32"], "alias": alias}


def section_micro(run: Run):
    import jax.numpy as jnp

    from jaxconv.bench import ConvShape, conv_cases

    a = run.args
    for label, s, ci, co in distinct_resnet9_conv_layers(a.size, a.width):
        if run.remaining() < (3 if a.quick else 20):
            run.note(f"micro: stopped before {label} ({run.remaining():.0f} s left)")
            break
        shape = ConvShape(label, a.batch, s, ci, co)
        cases = conv_cases(shape, ("lax", "patches"), dtype=jnp.bfloat16)
        stats = measure_interleaved(cases, rounds=3, warmup=2, target_s=0.05 if a.quick else 0.1,
                                    time_cap_s=20, log=run.log)
        for impl in ("lax", "patches"):
            for mode in ("fwd", "fwd+bwd"):
                st = stats.get(f"{label} {impl} {mode}")
                if st:
                    run.micro_rows.append({"shape": shape, "impl": impl, "mode": mode,
                                           "stats": st, "gflops": st.flops_rate / 1e9})
                    run.partial.write("micro", st.as_dict())


def torch_compile_wanted(run: Run, section: str) -> bool:
    """False, with a note, in ``--quick`` mode without ``--torch-compile``."""
    if run.args.quick and not run.args.torch_compile:
        run.note(f"{section}: torch.compile skipped in --quick mode (pass --torch-compile to "
                 "include it)")
        return False
    return True


def section_compile(run: Run):
    if not torch_compile_wanted(run, "compile"):
        return
    need = 20 if run.args.quick else 100
    case = build(run, "torch.compile", lambda: torch_case(run, compiled=True), need)
    if case is None:
        return
    stats = measure_steps(run, [case], 20)
    for name, s in stats.items():
        run.record(name, s, section="compile")


def kernel_category(name: str) -> str:
    """A coarse class of a device kernel (or, on CPU, an XLA op) from its name."""
    low = name.lower()
    if re.search(r"conv(?!ert)|fprop|dgrad|wgrad|implicit_gemm", low):
        return "convolution"
    if any(k in low for k in ("gemm", "cublas", "matmul", "dot")):
        return "matmul"
    if any(k in low for k in ("nccl", "allreduce", "all-reduce", "all_reduce")):
        return "communication"
    if any(k in low for k in ("memcpy", "memset", "copy")):
        return "copy"
    if "reduce" in low:
        return "fusion with a reduction"
    if "fusion" in low or low.startswith(("loop_", "input_", "wrapped_")):
        return "elementwise fusion"
    return "other"


def trace_kernel_times(trace_dir: str) -> dict[str, tuple[float, int]]:
    """``{kernel name: (total microseconds, count)}`` from a ``jax.profiler`` perfetto trace.

    Device kernels when the trace has a device process (``/device:GPU:...``),
    else the host's XLA ops (Python frames and executor bookkeeping excluded).
    """
    import collections
    import glob
    import gzip
    import json

    paths = glob.glob(os.path.join(trace_dir, "**", "*.json.gz"), recursive=True)
    with gzip.open(paths[0]) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    names = {e["pid"]: e.get("args", {}).get("name", "") for e in events
             if e.get("ph") == "M" and e.get("name") == "process_name"}
    device = {pid for pid, n in names.items() if "/device:" in n and "host" not in n.lower()}
    totals: dict[str, list] = collections.defaultdict(lambda: [0.0, 0])
    for e in events:
        if e.get("ph") != "X":
            continue
        name = e["name"]
        if device:
            if e["pid"] not in device:
                continue
        elif name.startswith("$") or "::" in name or name.startswith(("Pjit", "end:")):
            continue
        totals[name][0] += e.get("dur", 0.0)
        totals[name][1] += 1
    return {k: (v[0], v[1]) for k, v in totals.items()}


def section_profile(run: Run):
    """Where the jaxconv (auto) bf16 step spends its device time: kernel classes, top kernels."""
    import tempfile

    import jax

    case = resnet9_step_case(run, "lax")
    if case is None:
        return
    steps = 3 if run.args.quick else 20
    for _ in range(3):
        case.sync(case.run())
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            for _ in range(steps):
                out = case.run()
            case.sync(out)
        wall = (time.perf_counter() - start) / steps
        kernels = trace_kernel_times(tmp)
    per_step = {k: (us / steps / 1e3, n // steps) for k, (us, n) in kernels.items()}
    busy = sum(ms for ms, _ in per_step.values())
    by_class: dict[str, float] = {}
    for name, (ms, _) in per_step.items():
        by_class[kernel_category(name)] = by_class.get(kernel_category(name), 0.0) + ms
    rows = [[c, fmt(ms, 3), f"{ms / busy:.0%}" if busy else "-"]
            for c, ms in sorted(by_class.items(), key=lambda kv: -kv[1])]
    top = sorted(per_step.items(), key=lambda kv: -kv[1][0])[:15]
    top_rows = [[f"`{name[:70]}`", kernel_category(name), str(n), fmt(ms, 3)]
                for name, (ms, n) in top]
    text = (f"Profile of the `jaxconv lax bf16` step ({steps} steps under `jax.profiler`, "
            f"{wall * 1e3:.2f} ms per step with the profiler on; kernel time summed per "
            f"step: {busy:.2f} ms):\n\n"
            + markdown_table(["kernel class", "ms/step", "share of kernel time"], rows)
            + "\n\nThe 15 longest kernels (per step):\n\n"
            + markdown_table(["kernel", "class", "calls", "ms"], top_rows))
    run.extra_tables.append(text)
    run.partial.write("profile", {"wall_ms": wall * 1e3, "busy_ms": busy,
                                  "classes": by_class, "top": top})
    run.log(text)


def step_rows(run: Run, cases: list, section: str) -> list[list[str]]:
    """Times training-step ``cases`` in interleaved rounds: ``[name, images/s, ms, spread, vs lax bf16]`` rows."""
    stats = measure_steps(run, cases, 40)
    base = stats.get("jaxconv lax bf16")
    rows = []
    for name, st in stats.items():
        run.partial.write(section, st.as_dict())
        rows.append([name, fmt(st.rate), fmt(st.median * 1e3, 2), f"{st.spread:.0%}",
                     ratio(st.rate, base.rate) if base else "-"])
    return rows


def section_chunks(run: Run):
    """The patches path with its batch split into chunks (``autotune.PATCH_CHUNK_BYTES``).

    Smaller patch tensors might stay in the GPU's L2 cache between the patch
    build and the matmul; measured against unchunked patches and lax.
    """
    import dataclasses

    import jax

    from jaxconv.ops import autotune

    backend = jax.default_backend()
    data = make_data(run)
    cases = [c for c in (resnet9_step_case(run, impl, data) for impl in ("lax", "patches")) if c]
    budgets = (1, 4) if run.args.quick else (24, 48)
    for mb in budgets:
        saved = autotune.PATCH_CHUNK_BYTES.get(backend)
        autotune.PATCH_CHUNK_BYTES[backend] = mb << 20
        try:
            case = build(run, f"patches, {mb} MB chunks",
                         lambda: jaxconv_case(run, "patches", "bf16", data=data), compile_cost(run))
        finally:
            autotune.PATCH_CHUNK_BYTES[backend] = saved
        if case:
            cases.append(dataclasses.replace(case, name=f"jaxconv patches bf16, {mb} MB chunks"))
    rows = step_rows(run, cases, "chunks")
    if rows:
        run.extra_tables.append(
            "Patches in batch chunks (bf16 ResNet-9 step, interleaved rounds; the plain patches "
            f"row is the backend's default budget, {autotune.PATCH_CHUNK_BYTES.get(backend)!r} "
            "bytes, None = the whole batch):\n\n"
            + markdown_table(["implementation", "images/s", "ms/call", "spread", "vs lax"], rows))
        run.log(run.extra_tables[-1])


def _accept_pallas(run: Run) -> None:
    """Lets the options validation take ``impl="pallas"`` if ``IMPLS`` does not list it yet."""
    from jaxconv.ops import spec

    if "pallas" not in spec.IMPLS:
        spec.IMPLS = (*spec.IMPLS, "pallas")
        run.note("pallas: jaxconv.ops.spec.IMPLS did not list 'pallas'; added for this run")


def _pallas_layer_rows(run: Run) -> list:
    """ResNet-9's distinct convolution layers, fwd+bwd bf16, lax / patches / pallas interleaved."""
    import jax.numpy as jnp

    from jaxconv.bench import ConvShape, conv_cases

    a = run.args
    rows = []
    for label, s, ci, co in distinct_resnet9_conv_layers(a.size, a.width):
        if run.remaining() < (10 if a.quick else 30):
            run.note(f"pallas: layers stopped before {label} ({run.remaining():.0f} s left)")
            break
        shape = ConvShape(label, a.batch, s, ci, co)
        cases = conv_cases(shape, ("lax", "patches", "pallas"), dtype=jnp.bfloat16,
                           modes=("fwd+bwd",))
        stats = measure_interleaved(cases, rounds=3, warmup=2, target_s=0.05 if a.quick else 0.1,
                                    time_cap_s=20, log=run.log)
        base = stats.get(f"{label} lax fwd+bwd")
        for impl in ("lax", "patches", "pallas"):
            st = stats.get(f"{label} {impl} fwd+bwd")
            if st:
                run.partial.write("pallas", st.as_dict())
                rows.append([label, shape.describe(), impl, fmt(st.median * 1e3, 3),
                             fmt(st.flops_rate / 1e9, 1), ratio(st.rate, base.rate) if base else "-"])
    return rows


def _pallas_step_rows(run: Run) -> list:
    """The bf16 ResNet-9 step with lax, patches and pallas, interleaved."""
    data = make_data(run)
    cases = [resnet9_step_case(run, impl, data) for impl in ("lax", "patches", "pallas")]
    return step_rows(run, [c for c in cases if c], "pallas")


def section_pallas(run: Run):
    """The Pallas convolution against lax and patches: ResNet-9's layers and its full step."""
    import jax

    _accept_pallas(run)
    mode = "compiled with Triton" if jax.default_backend() == "gpu" else (
        "in Pallas's interpret mode (not on a GPU): the times are the interpreter's")
    layer_rows = _pallas_layer_rows(run)
    if layer_rows:
        run.extra_tables.append(
            f"Pallas convolution (`impl=\"pallas\"`, {mode}) on ResNet-9's layers, bf16, batch "
            f"{run.args.batch}, forward + both gradients, interleaved rounds:\n\n"
            + markdown_table(["layer", "shape", "impl", "ms/call", "GFLOP/s", "vs lax"],
                             layer_rows))
        run.log(run.extra_tables[-1])
    step_rows = _pallas_step_rows(run)
    if step_rows:
        run.extra_tables.append(
            f"Pallas convolution ({mode}) in the bf16 ResNet-9 training step, interleaved "
            "rounds:\n\n"
            + markdown_table(["implementation", "images/s", "ms/call", "spread", "vs lax"],
                             step_rows))
        run.log(run.extra_tables[-1])


def tree_size(tree) -> int:
    """The number of elements of a pytree of arrays (or of ``jax.ShapeDtypeStruct``)."""
    import math

    import jax

    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))


def resnet50_param_counts(run: Run, work: Workload) -> dict[str, int]:
    """``{framework: parameters}`` of the three ResNet-50s; raises unless they are the same.

    jaxconv's and Flax's parameters and BatchNorm statistics are counted from
    their ``init`` shapes (nothing is allocated) and compared;
    ``check_same_network`` compares jaxconv's with torchvision's (built on the
    "meta" device). A framework that is not installed is left out, with a note.
    """
    import jax
    import jax.numpy as jnp

    from jaxconv.models import get_model

    x = jax.ShapeDtypeStruct((1, work.size, work.size, 3), jnp.float32)
    key = jax.random.PRNGKey(0)
    model = get_model("resnet50", work.classes, impl="lax")
    ours = tuple(map(tree_size, jax.eval_shape(lambda k: model.init(k, x.shape)[1:], key)))
    counts = {"jaxconv": ours[0]}
    try:
        module = flax_resnet50(work.classes, jnp.bfloat16)
        v = jax.eval_shape(functools.partial(module.init, train=False), key, x)
        theirs = (tree_size(v["params"]), tree_size(v["batch_stats"]))
        run.log(f"  ResNet-50: parameters jaxconv {ours[0]:,}, Flax {theirs[0]:,}; BatchNorm "
                f"statistics jaxconv {ours[1]:,}, Flax {theirs[1]:,}")
        if theirs != ours:
            raise RuntimeError(f"ResNet-50: jaxconv and Flax differ (parameters, statistics): "
                               f"{ours} against {theirs}; the comparison would be meaningless")
        counts["Flax"] = theirs[0]
    except ImportError as exc:
        run.note(f"resnet50: Flax's parameters not counted: {exc}")
    try:
        import torch

        with torch.device("meta"):
            net = torchvision_resnet50(work.classes)
        counts["torchvision"] = check_same_network("ResNet-50", model, x.shape, net, run.log)
    except ImportError as exc:
        run.note(f"resnet50: torchvision's parameters not counted: {exc}")
    return counts


def resnet50_cases(run: Run, work: Workload, data) -> tuple[list[Case], str | None]:
    """The ResNet-50 step cases the budget allows (jaxconv lax and auto, unless auto is lax for
    every layer; Flax linen; PyTorch eager) and the impl auto picks for every layer, if one."""
    import jax.numpy as jnp

    from jaxconv.models import get_model

    def jaxconv(impl):
        model = get_model("resnet50", work.classes, impl=impl, dtype=jnp.bfloat16)
        return jaxconv_step_case(run, f"jaxconv {impl} bf16", model, work, data=data)

    alias = auto_alias(run, [(work.batch, s, k, ci, co)
                             for s, k, _, ci, co in resnet50_conv_layers(work.size)])
    if alias:
        run.note(f"resnet50: impl='auto' picks '{alias}' for every ResNet-50 convolution on this "
                 "backend" + (": its row is the lax measurement" if alias == "lax" else ""))
    makes = {f"jaxconv {impl} bf16": functools.partial(jaxconv, impl)
             for impl in (("lax",) if alias == "lax" else ("lax", "auto"))}
    makes["Flax linen bf16"] = lambda: flax_step_case(
        run, "Flax linen bf16", flax_resnet50(work.classes, jnp.bfloat16), work, data)
    makes["PyTorch eager bf16"] = lambda: torch_step_case(
        run, "PyTorch eager bf16", lambda: torchvision_resnet50(work.classes), work)
    need = 10 if run.args.quick else 90
    cases = [build(run, f"ResNet-50 {name}", make, need) for name, make in makes.items()]
    return [c for c in cases if c], alias


def resnet50_compiled_case(run: Run, work: Workload) -> Case | None:
    """torchvision's ResNet-50 step under ``torch.compile``, if wanted and the budget allows."""
    if not torch_compile_wanted(run, "resnet50"):
        return None
    return build(run, "ResNet-50 torch.compile",
                 lambda: torch_step_case(run, "PyTorch torch.compile bf16",
                                         lambda: torchvision_resnet50(work.classes), work,
                                         compiled=True), 30 if run.args.quick else 150)


def resnet50_measure(run: Run, cases: list) -> dict:
    """The cases' interleaved rounds, each result written to the partial log at once."""
    stats = measure_steps(run, cases, 90)
    for st in stats.values():
        run.partial.write("resnet50", st.as_dict())
    return stats


def section_resnet50(run: Run):
    """ResNet-50's bf16 training step: jaxconv, Flax linen, PyTorch eager and torch.compile.

    The eager cases are measured first (their results written at once), so
    that a slow ``torch.compile`` leaves them behind; with it, all the cases
    are measured again in the same interleaved rounds, and the table has those.
    """
    if "matmul_tflops" not in run.ceilings:
        run.log("resnet50: measuring the ceilings first (for the fraction of the matmul rate)")
        section_ceilings(run)
    work = resnet50_workload(run.args)
    counts = resnet50_param_counts(run, work)
    cases, alias = resnet50_cases(run, work, make_data(run, work=work))
    stats = resnet50_measure(run, cases)
    compiled = resnet50_compiled_case(run, work)
    if compiled:
        stats = resnet50_measure(run, cases + [compiled])
    results = {name: {"stats": st} for name, st in stats.items()}
    if alias == "lax" and "jaxconv lax bf16" in results:
        results["jaxconv auto bf16"] = {**results["jaxconv lax bf16"], "alias": "lax"}
    table = speed_table(results, PEERS, run.ceilings.get("matmul_tflops"))
    if not table:
        return
    params = ", ".join(f"{k} {n:,}" for k, n in counts.items())
    run.extra_tables.append(
        "ResNet-50 training step (torchvision's architecture: `jaxconv.models.get_model"
        f"(\"resnet50\")`, a Flax linen copy and torchvision's `resnet50`; parameters {params}): "
        f"batch {work.batch}, {work.size}x{work.size}x3 random images, {work.classes} classes, "
        "bf16 compute with float32 parameters, BatchNorm in training mode, SGD Nesterov "
        f"(momentum 0.9); {work.flops / 1e9:.2f} GFLOP per image per step (3x the forward "
        "convolutions and classifier, from the layer shapes); median of up to "
        f"{run.args.rounds} interleaved rounds:\n\n{table}")
    run.log(run.extra_tables[-1])


SECTIONS = {"ceilings": section_ceilings, "main": section_main, "spc": section_spc,
            "f32": section_f32, "micro": section_micro, "compile": section_compile,
            "profile": section_profile, "chunks": section_chunks, "pallas": section_pallas,
            "resnet50": section_resnet50}


# --------------------------------------------------------------------------
# Report.


def speed_table(results: dict, peers, matmul_tflops: float | None) -> str | None:
    """The markdown table of training-step ``results`` (``{name: {"stats": Stats, "alias": impl
    (optional)}}``): images/s, ms per call, spread, TFLOP/s, the fraction of the measured bf16
    matmul rate and the ratio of images/s to each ``(label, row name)`` of ``peers``;
    ``None`` without results."""
    rows = []
    for name, r in results.items():
        s = r["stats"]
        tflops = s.flops_rate / 1e12
        label = name + (f" (= {r['alias']})" if r.get("alias") else "")
        rows.append([label, fmt(s.rate), fmt(s.median * 1e3, 2), f"{s.spread:.0%}",
                     fmt(tflops, 1 if tflops >= 1 else 4),
                     f"{tflops / matmul_tflops:.0%}" if matmul_tflops else "-"]
                    + [ratio(s.rate, results[p]["stats"].rate) if p in results else "-"
                       for _, p in peers])
    if not rows:
        return None
    return markdown_table(["implementation", "images/s", "ms/call", "spread", "TFLOP/s",
                           "of matmul rate"] + [f"vs {label}" for label, _ in peers], rows)


def report(run: Run, info: dict) -> str:
    from jaxconv.bench import conv_bench_table

    a = run.args
    mm = run.ceilings.get("matmul_tflops")
    nets = ((["ResNet-9"] if set(a.section_list) - {"ceilings", "resnet50"} else [])
            + (["ResNet-50"] if "resnet50" in a.section_list else []))
    parts = [
        f"## GPU: {' and '.join(nets) + ' training' if nets else 'ceilings'} (`benchmarks/gpu.py"
        + ("" if a.section_list == list(SECTIONS) else f" --sections {','.join(a.section_list)}")
        + "`)",
        common.describe_machine(info),
        f"- measured ceilings: bf16 matmul {fmt(mm, 1)} TFLOP/s, device copy "
        f"{fmt(run.ceilings.get('copy_gbs'), 0)} GB/s (read + write)",
    ]
    if "ResNet-9" in nets:
        parts.append(
            f"- ResNet-9 width {a.width}, batch {a.batch}, {a.size}x{a.size}x3 random data, SGD "
            f"Nesterov (momentum 0.9), {resnet9_train_flops(a.size, a.width) / 1e9:.2f} GFLOP per "
            "image per training step (3x the forward convolutions and classifier); median of up "
            f"to {a.rounds} interleaved rounds per section; `spc=10` rows process 10 batches per "
            "call.")
    table = speed_table(run.results, PEERS + [("jaxconv lax", "jaxconv lax bf16")], mm)
    if table:
        parts.append(table)
    parts += run.extra_tables
    if run.micro_rows:
        parts.append("ResNet-9 convolution layers alone (bf16, batch "
                     f"{a.batch}; fwd+bwd = input and kernel gradients):\n\n"
                     + conv_bench_table(run.micro_rows))
    if run.notes:
        parts.append("Notes:\n\n" + "\n".join(f"- {n}" for n in run.notes))
    return "\n\n".join(parts)


def write_outputs(run: Run, info: dict, final: bool) -> None:
    text = report(run, info)
    if run.args.out:
        common.write_atomic(os.path.join(run.args.out, "gpu_section.md"), text + "\n")
    if final:
        print("\n" + text, flush=True)
        if not (run.args.no_write or run.args.quick):
            common.write_section(run.args.results, run.args.section, text)
            run.log(f"wrote the '{run.args.section}' section of {run.args.results}")
            if run.args.out:
                with open(run.args.results) as f:
                    common.write_atomic(os.path.join(run.args.out, "RESULTS.md"), f.read())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a CPU smoke test")
    parser.add_argument("--out", default=os.environ.get("OUT"),
                        help="directory for partial results (default: $OUT if set)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for the whole run (default 420; quick: 300)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--resnet50-batch", type=int, default=None,
                        help="batch of the resnet50 section (default 256; quick: 2)")
    parser.add_argument("--torch-compile", action="store_true",
                        help="include torch.compile in --quick mode")
    parser.add_argument("--results", default=common.RESULTS_MD)
    parser.add_argument("--section", default=None,
                        help="the section of the results file to replace (default: gpu; "
                             "gpu-resnet50 when --sections is resnet50 alone)")
    parser.add_argument("--no-write", action="store_true", help="do not update the results file")
    args = parser.parse_args(argv)
    sections = args.section_list = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; expected some of {list(SECTIONS)}")
    args.budget = args.budget or (300.0 if args.quick else 420.0)
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.batch = args.batch or (4 if args.quick else 512)
    args.size = 16 if args.quick else 32
    args.width = 4 if args.quick else 64
    args.target = 0.02 if args.quick else 0.25
    args.resnet50_batch = args.resnet50_batch or (2 if args.quick else 256)
    args.resnet50_size = 32 if args.quick else 224
    args.section = args.section or ("gpu-resnet50" if sections == ["resnet50"] else "gpu")

    run = Run(args)
    info = common.machine_info()
    run.log(common.describe_machine(info).replace("\n", "; "))
    for name in sections:
        if run.remaining() <= 0:
            run.note(f"section {name} skipped: budget of {args.budget:.0f} s spent")
            continue
        common.run_section(name, lambda name=name: SECTIONS[name](run), run.log)
        try:
            write_outputs(run, info, final=False)
        except Exception:  # noqa: BLE001 - reporting must not stop the measurements
            run.log(traceback.format_exc())
    write_outputs(run, info, final=True)
    run.log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
