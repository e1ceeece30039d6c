"""Convolution: the public ops, the lax implementation, and the dispatch to an implementation.

Layout is channels-last: ``x`` is ``(N, *spatial, C)`` and ``kernel`` is
``(*kernel_size, C // groups, F)``. 1-D, 2-D and 3-D are supported.

A call is resolved once (``jaxconv.ops.spec``: the arguments checked by
``conv_options``, then ``resolve_conv`` against the shapes, giving a
``ConvSpec``), and :func:`convolve` evaluates the spec with one of the two
implementations: ``impl="lax"`` (:func:`lax_conv_general`, here) or
``impl="patches"`` (``jaxconv.ops.patches.patches_conv_general``: pad, slice,
matmul). ``impl="auto"`` looks the choice up in ``jaxconv.ops.autotune``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxconv.ops import autotune
from jaxconv.ops.pallas_conv import pallas_conv_general
from jaxconv.ops.patches import patches_conv_general
from jaxconv.ops.spec import ConvOptions, ConvSpec, Padding, apply_padding_mode, conv_options, resolve_conv


def flip_swap_kernel(kernel: Any, groups: int) -> Any:
    """The kernel of a transposed convolution, as the kernel of a plain one.

    ``(*k, A, groups * B)`` -> spatially reversed ``(*k, B, groups * A)``: within
    each group the in- and out-channel axes are exchanged.
    """
    nd = kernel.ndim - 2
    a, gb = kernel.shape[-2:]
    b = gb // groups
    k = lax.rev(kernel, tuple(range(nd)))
    k = k.reshape(*kernel.shape[:nd], a, groups, b)
    k = jnp.moveaxis(k, (nd, nd + 2), (nd + 2, nd))
    return k.reshape(*kernel.shape[:nd], b, groups * a)


def dimension_numbers(nd: int) -> lax.ConvDimensionNumbers:
    """Channels-last dimension numbers of an ``nd``-D convolution (``NHWC``, ``HWIO``, ``NHWC``)."""
    spatial = "DHW"[-nd:]
    return lax.conv_dimension_numbers(
        (1,) * (nd + 2), (1,) * (nd + 2), (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"))


def _crop(x: Any, crops: Sequence[tuple[int, int]]) -> Any:
    """Removes ``(low, high)`` elements from each spatial dimension of ``x``."""
    if not any(lo or hi for lo, hi in crops):
        return x
    start = (0, *(lo for lo, _ in crops), 0)
    limit = (x.shape[0], *(n - hi for n, (_, hi) in zip(x.shape[1:-1], crops)), x.shape[-1])
    return lax.slice(x, start, limit)


def _dilate_here(x: Any, kernel: Any, spec: ConvSpec) -> bool:
    """Whether the input dilation of ``spec`` must be done with a ``pad`` (see ``lax_conv_general``).

    XLA's algebraic simplifier may swap the operands of a convolution whose
    kernel is larger than its input (on CPU also in the weight-gradient
    convolution, whose "kernel" is the output gradient) and aborts when that
    convolution has input dilation: so on CPU, and for small inputs elsewhere.
    """
    if all(a == 1 for a in spec.lhs_dilation):
        return False
    nd = kernel.ndim - 2
    spans = [(k - 1) * d + 1 for k, d in zip(kernel.shape[:nd], spec.rhs_dilation)]
    dilated = [(n - 1) * a + 1 for n, a in zip(x.shape[1:-1], spec.lhs_dilation)]
    return jax.default_backend() == "cpu" or any(n < k for n, k in zip(dilated, spans))


def lax_conv_general(x: Any, kernel: Any, spec: ConvSpec) -> Any:
    """Evaluates a ``ConvSpec`` with ``lax.conv_general_dilated``.

    Works around an XLA:CPU abort (``Window dimensions do not match RHS
    shape`` in the algebraic simplifier, seen with jaxlib 0.10.2 on random
    ``conv_transpose`` configurations): input dilation is done with a ``pad``
    on CPU, and negative padding (a crop) with a slice, never passed to XLA.
    Without input dilation the input is cropped; with it (``conv_transpose``,
    whose window stride is 1) the output is cropped, which is the same.
    """
    x, spec = apply_padding_mode(x, spec)
    nd = kernel.ndim - 2
    if _dilate_here(x, kernel, spec):
        config = [(0, 0, 0)] + [(0, 0, a - 1) for a in spec.lhs_dilation] + [(0, 0, 0)]
        x = lax.pad(x, jnp.zeros((), x.dtype), config)
        spec = spec._replace(lhs_dilation=(1,) * nd)
    crops = tuple((max(-lo, 0), max(-hi, 0)) for lo, hi in spec.padding)
    pads = tuple((max(lo, 0), max(hi, 0)) for lo, hi in spec.padding)
    crop_output = any(a > 1 for a in spec.lhs_dilation)
    if crop_output and any(s > 1 for s in spec.strides):
        raise ValueError("lax_conv_general: input dilation with window strides is not supported")
    if not crop_output:
        x = _crop(x, crops)
    y = lax.conv_general_dilated(
        x, kernel, window_strides=spec.strides, padding=pads,
        lhs_dilation=spec.lhs_dilation, rhs_dilation=spec.rhs_dilation,
        dimension_numbers=dimension_numbers(nd),
        feature_group_count=spec.groups, precision=spec.precision)
    return _crop(y, crops) if crop_output else y


#: ``impl`` -> the function that evaluates a ``ConvSpec`` as ``fn(x, kernel, spec)``.
#: ``"pallas"`` (``jaxconv.ops.pallas_conv``) is only ever chosen by name, never by ``"auto"``.
IMPLEMENTATIONS = {"lax": lax_conv_general, "patches": patches_conv_general,
                   "pallas": pallas_conv_general}


def choose_impl(options: ConvOptions, x: Any, kernel: Any, spec: ConvSpec) -> str:
    """``options.impl``, or for ``"auto"`` the choice of ``jaxconv.ops.autotune``.

    ``x``, ``kernel`` and ``spec`` are what the implementation will evaluate
    (for ``conv_transpose``, the flipped, channel-swapped kernel).
    """
    if options.impl != "auto":
        return options.impl
    rows = autotune.rows_apply(x.shape, kernel.shape, spec, autotune.rows_rule())
    depthwise = autotune.depthwise_apply(kernel.shape, spec.groups, autotune.depthwise_rule())
    return autotune.choose_impl(options.op, tuple(x.shape), tuple(kernel.shape), spec.groups,
                                rows=rows, depthwise_form=depthwise)


def _promote(x, kernel):
    x, kernel = jnp.asarray(x), jnp.asarray(kernel)
    dtype = jnp.result_type(x, kernel)
    return x.astype(dtype), kernel.astype(dtype)


def convolve(x: Any, kernel: Any, options: ConvOptions) -> Any:
    """``conv`` or ``conv_transpose`` (``options.op``) with arguments already checked.

    Resolves ``options`` (from ``jaxconv.ops.spec.conv_options``) against the
    shapes of ``x`` and ``kernel`` once, and evaluates the resulting spec with
    ``options.impl``. A layer checks its options once, in its factory, and
    calls this in ``apply``.
    """
    x, kernel = _promote(x, kernel)
    spec, _ = resolve_conv(options, x.shape, kernel.shape)
    if options.op == "conv_transpose":
        kernel = flip_swap_kernel(kernel, spec.groups)
    return IMPLEMENTATIONS[choose_impl(options, x, kernel, spec)](x, kernel, spec)


# --------------------------------------------------------------------------
# Public ops.


def conv(
    x: Any,
    kernel: Any,
    *,
    stride: Any = 1,
    padding: Padding = "SAME",
    dilation: Any = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    impl: str = "lax",
    precision: Any = None,
) -> Any:
    """N-D convolution (cross-correlation, as in every deep-learning library).

    Args:
      x: ``(N, *spatial, C)``, 1 to 3 spatial dimensions.
      kernel: ``(*kernel_size, C // groups, F)``.
      stride, dilation: int or one int per spatial dimension (>= 1).
      padding: ``"SAME"`` (``ceil(n / stride)`` outputs, odd extra pad on the
        high side), ``"SAME_LOWER"`` (extra pad on the low side), ``"VALID"``,
        an int ``p`` (``p`` on both sides, PyTorch), one int per dimension, or
        one ``(low, high)`` pair per dimension; negative values crop.
      groups: feature groups; ``groups == C`` is depthwise (``F = multiplier * C``).
      padding_mode: ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"``
        (as PyTorch's ``padding_mode``).
      impl: ``"lax"`` (``lax.conv_general_dilated``), ``"patches"``
        (``jaxconv.ops.patches``: pad/slice + one matmul per group) or ``"auto"``
        (per backend, from ``jaxconv.ops.autotune``).
      precision: passed to the contraction (``lax.Precision.HIGHEST`` avoids TF32).

    Returns:
      ``(N, *out_spatial, F)`` with, per dimension,
      ``out = floor((n + low + high - dilation * (k - 1) - 1) / stride) + 1``.

    Raises:
      ValueError: mismatched ranks or channels, groups not dividing the
        channels, kernel larger than the padded input, stride or dilation < 1,
        unknown padding / padding_mode / impl, reflect padding wider than the input.
    """
    return convolve(x, kernel, conv_options(
        "conv", stride=stride, padding=padding, dilation=dilation, groups=groups,
        padding_mode=padding_mode, impl=impl, precision=precision))


def conv_transpose(
    x: Any,
    kernel: Any,
    *,
    stride: Any = 1,
    padding: Padding = "SAME",
    dilation: Any = 1,
    output_padding: Any = 0,
    groups: int = 1,
    impl: str = "lax",
    precision: Any = None,
) -> Any:
    """Transposed convolution: the adjoint of ``conv``, with PyTorch's semantics.

    ``y = conv_transpose(x, kernel, ...)`` is the gradient with respect to the
    input of ``conv(·, kernel, stride, padding, dilation, groups)``: every input
    element ``x[i]`` adds ``x[i] * kernel[j]`` at output position
    ``i * stride + j * dilation - low``.

    Args:
      x: ``(N, *spatial, C)``.
      kernel: ``(*kernel_size, F // groups, C)``, the layout of the convolution
        it transposes (from ``F`` to ``C`` channels). A PyTorch
        ``ConvTranspose`` weight ``(C, F // groups, *k)`` converts with
        ``w.permute(2, ..., 1, 0)`` (spatial axes first, then ``F // groups``, ``C``).
      stride, dilation: int or one per spatial dimension.
      padding: int / per-dimension ints / ``(low, high)`` pairs as in PyTorch
        (removed from the output), or ``"SAME"`` / ``"SAME_LOWER"`` (output
        ``n * stride``) or ``"VALID"``.
      output_padding: extra elements on the high side of the output
        (``0 <= output_padding < max(stride, dilation)``, as in PyTorch).
      groups, impl, precision: as in ``conv``.

    Returns:
      ``(N, *out_spatial, F)`` with, per dimension,
      ``out = (n - 1) * stride - low - high + dilation * (k - 1) + 1 + output_padding``.
    """
    return convolve(x, kernel, conv_options(
        "conv_transpose", stride=stride, padding=padding, dilation=dilation,
        output_padding=output_padding, groups=groups, impl=impl, precision=precision))
