"""``impl="auto"``: which convolution implementation to use where.

The choice is a lookup in :data:`TABLE`, a list of rules tried in order; the
first rule whose every field matches wins. Fields:

- ``backend``: ``jax.default_backend()`` of the arrays' platform (``"cpu"``,
  ``"gpu"``, ``"tpu"``, ...) or ``"*"``;
- ``op``: ``"conv"`` or ``"conv_transpose"`` or ``"*"``;
- ``shape``: the shape class from :func:`shape_class` (``"pointwise"``,
  ``"depthwise_form"``, ``"depthwise"``, ``"grouped"``, ``"rows"``, ``"narrow"``,
  ``"wide"``) or ``"*"``;
- ``impl``: ``"lax"`` or ``"patches"``;
- ``note``: where the rule comes from (a section of
  ``benchmarks/RESULTS.md``, or a default); for the reader, not read by the code.

To refine the table from new measurements, edit :data:`TABLE` (more specific
rules first); nothing else needs to change.

This module's tables (:data:`TABLE`, :data:`PATCH_CHUNK_BYTES`,
:data:`PATCH_ROWS`, :data:`PATCH_DEPTHWISE`) are read when a convolution is
traced. A function that ``jax.jit`` has already traced keeps the choices it
was traced with: change them before its first call, or call
``jax.clear_caches()``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax

TABLE: list[dict[str, str]] = [
    {"backend": "cpu", "op": "*", "shape": "depthwise_form", "impl": "patches",
     "note": "RESULTS.md cpu, table depthwise (benchmarks/cpu.py --sections depthwise): "
             "the depthwise form beats XLA:CPU's grouped convolution in fwd+bwd, conv "
             "and conv_transpose"},
    {"backend": "cpu", "op": "*", "shape": "rows", "impl": "patches",
     "note": "RESULTS.md cpu, table rows: the row-shift form beats lax in fwd+bwd on every "
             "layer measured"},
    {"backend": "cpu", "op": "*", "shape": "narrow", "impl": "patches",
     "note": "RESULTS.md cpu and cpu-autotune: with fewer than 64 input channels the MNIST "
             "and digits CNN steps are faster with patches (layer by layer it loses on small "
             "padded maps; the full steps decide here)"},
    {"backend": "cpu", "op": "conv", "shape": "*", "impl": "patches",
     "note": "RESULTS.md cpu-zoo (benchmarks/cpu.py --sections zoo): in whole networks "
             "(ResNet-18 and MobileNetV2 training steps, ResNet-18 at batch 1) the patches "
             "path beats XLA:CPU's convolutions, which are slowest on grouped convolutions and "
             "on maps smaller than the kernel (ResNet-18's last stage at 64x64 inputs); layer "
             "by layer lax wins some wide ones (RESULTS.md cpu, micro)"},
    {"backend": "cpu", "op": "*", "shape": "*", "impl": "lax",
     "note": "RESULTS.md cpu: transposed convolutions from 64 channels on, where XLA:CPU's "
             "convolution was faster in fwd+bwd"},
    {"backend": "gpu", "op": "*", "shape": "*", "impl": "lax",
     "note": "default: cuDNN convolutions"},
    {"backend": "tpu", "op": "*", "shape": "*", "impl": "lax",
     "note": "default: native TPU convolutions"},
    {"backend": "*", "op": "*", "shape": "*", "impl": "lax", "note": "fallback"},
]


# The largest patch tensor ``impl="patches"`` builds at once, per backend: larger
# batches run in chunks of images (``patches.patches_conv_general``); ``None`` or
# no entry: the whole batch at once. CPU: chosen on the MNIST CNN step (RESULTS.md
# cpu), where chunks that stay in cache make the step faster and much smaller
# ones drown in per-chunk overhead; it leaves the digits CNN unchunked.
PATCH_CHUNK_BYTES: dict[str, int | None] = {
    "cpu": 8 << 20,
}


def patch_chunk_bytes(backend: str | None = None) -> int | None:
    """The :data:`PATCH_CHUNK_BYTES` entry of ``backend`` (default: JAX's default backend)."""
    return PATCH_CHUNK_BYTES.get(backend or jax.default_backend())


class RowsRule(NamedTuple):
    """When ``impl="patches"`` takes its row-shift form (``patches._conv_rows``).

    Attributes:
      min_depth: the smallest patch depth over the trailing spatial axes,
        ``prod(kernel_size[1:]) * C``, that takes it.
      max_waste: it computes the matmul for every padded input row along the
        first spatial axis; it is taken only while ``padded rows / output
        rows`` is below this.
    """

    min_depth: int
    max_waste: float


# Per backend; no entry: always the full patch tensor. CPU (RESULTS.md cpu, tables rows
# and step): in fwd+bwd of 3x3 layers the row-shift form beats the full patch tensor
# from a depth of 24 on, and loses on shallow patches (one channel) and on small maps
# with SAME padding, where the wasted padded rows weigh most.
PATCH_ROWS: dict[str, RowsRule] = {
    "cpu": RowsRule(min_depth=24, max_waste=1.25),
}


def rows_rule(backend: str | None = None) -> RowsRule | None:
    """The :data:`PATCH_ROWS` entry of ``backend`` (default: JAX's default backend)."""
    return PATCH_ROWS.get(backend or jax.default_backend())


def rows_apply(x_shape: tuple[int, ...], kernel_shape: tuple[int, ...], spec: Any,
               rule: RowsRule | None) -> bool:
    """Whether ``impl="patches"`` takes its row-shift form for this convolution under ``rule``.

    Args:
      x_shape, kernel_shape: ``(N, *spatial, C)`` and ``(*k, C // groups, F)``.
      spec: the ``jaxconv.ops.spec.ConvSpec`` evaluated.
      rule: see :data:`PATCH_ROWS`; ``None``: never.

    The form needs a kernel taller than one row, stride 1 and no input
    dilation along the first spatial axis, and one group; ``rule`` then asks
    for a deep enough patch and few wasted rows.
    """
    window = kernel_shape[:len(kernel_shape) - 2]
    if (rule is None or window[0] == 1 or spec.groups != 1 or spec.strides[0] != 1
            or spec.lhs_dilation[0] != 1):
        return False
    depth = math.prod(window[1:]) * x_shape[-1]
    lo, hi = spec.padding[0]
    rows = x_shape[1] + lo + hi
    out_rows = rows - (window[0] - 1) * spec.rhs_dilation[0]
    return depth >= rule.min_depth and out_rows > 0 and rows < rule.max_waste * out_rows


class DepthwiseRule(NamedTuple):
    """When ``impl="patches"`` takes its depthwise form (``patches._conv_depthwise``).

    Attributes:
      max_group_channels: the most input channels per group (``C // groups``;
        1 for a depthwise convolution) that take it. The form adds one
        shifted slice times per-channel weights per kernel position and input
        channel of a group, so its work grows with ``C // groups``.
    """

    max_group_channels: int


# Per backend; no entry: never (the full patch tensor, a matmul batched over the groups).
# CPU (RESULTS.md cpu, table depthwise): depthwise convolutions only; with 2 to 8
# channels per group the full patch tensor's batched matmul was faster.
PATCH_DEPTHWISE: dict[str, DepthwiseRule] = {
    "cpu": DepthwiseRule(max_group_channels=1),
}


def depthwise_rule(backend: str | None = None) -> DepthwiseRule | None:
    """The :data:`PATCH_DEPTHWISE` entry of ``backend`` (default: JAX's default backend)."""
    return PATCH_DEPTHWISE.get(backend or jax.default_backend())


def depthwise_apply(kernel_shape: tuple[int, ...], groups: int,
                    rule: DepthwiseRule | None) -> bool:
    """Whether ``impl="patches"`` takes its depthwise form for this convolution under ``rule``.

    Args:
      kernel_shape: ``(*k, C // groups, F)``.
      groups: the feature groups; the form needs more than one.
      rule: see :data:`PATCH_DEPTHWISE`; ``None``: never.
    """
    return rule is not None and groups > 1 and kernel_shape[-2] <= rule.max_group_channels


# From this many input channels per group on, a dense convolution is "wide".
WIDE_CHANNELS = 64


def shape_class(x_shape: tuple[int, ...], kernel_shape: tuple[int, ...], groups: int,
                rows: bool = False, depthwise_form: bool = False) -> str:
    """A coarse class of a convolution's shapes, the key of :data:`TABLE`.

    ``rows``: the patches path takes its row-shift form for it (:func:`rows_apply`),
    which makes it class ``"rows"``; ``depthwise_form``: it takes its depthwise
    form (:func:`depthwise_apply`), class ``"depthwise_form"``.
    """
    window = kernel_shape[:-2]
    if depthwise_form:
        return "depthwise_form"
    if groups > 1 and groups == x_shape[-1]:
        return "depthwise"
    if groups > 1:
        return "grouped"
    if all(k == 1 for k in window):
        return "pointwise"
    if rows:
        return "rows"
    return "wide" if kernel_shape[-2] >= WIDE_CHANNELS else "narrow"


def choose_impl(op: str, x_shape: tuple[int, ...], kernel_shape: tuple[int, ...],
                groups: int = 1, backend: str | None = None, *, rows: bool = False,
                depthwise_form: bool = False) -> str:
    """The implementation :data:`TABLE` picks for this convolution.

    Args:
      op: ``"conv"`` or ``"conv_transpose"``.
      x_shape, kernel_shape, groups: the convolution evaluated (for a transposed
        convolution, the correlation that computes it: the channel-swapped kernel).
      backend: defaults to ``jax.default_backend()``.
      rows, depthwise_form: whether the patches path would take its row-shift
        form, its depthwise form (see :func:`shape_class`).
    """
    backend = backend or jax.default_backend()
    cls = shape_class(x_shape, kernel_shape, groups, rows, depthwise_form)
    key: dict[str, Any] = {"backend": backend, "op": op, "shape": cls}
    for rule in TABLE:
        if all(rule[f] in ("*", key[f]) for f in key):
            return rule["impl"]
    return "lax"
