"""Convolution: the shared argument normalisation, the shape rules and the dispatch.

Layout is channels-last: ``x`` is ``(N, *spatial, C)`` and ``kernel`` is
``(*kernel_size, C // groups, F)``. 1-D, 2-D and 3-D are supported.

Both implementations -- ``impl="lax"`` (``lax.conv_general_dilated``) and
``impl="patches"`` (``jaxconv.ops.patches``, pad / slice / matmul) -- go through
the same functions here: ``conv_output_shape`` / ``conv_transpose_output_shape``
validate the arguments and give the output shape, ``pad_with_mode`` applies a
non-zero ``padding_mode``, and both convolutions are reduced to one
:class:`ConvSpec` (window strides, explicit zero padding, input and kernel
dilation, groups, precision) that each implementation evaluates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxconv.ops import autotune

Padding = Any  # "SAME" | "SAME_LOWER" | "VALID" | int | Sequence[int] | Sequence[(lo, hi)]

PADDING_STRINGS = ("SAME", "SAME_LOWER", "VALID")
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
IMPLS = ("lax", "patches", "auto")


def expand(value: Any, n: int, name: str, *, minimum: int = 1, where: str = "conv") -> tuple[int, ...]:
    """An int or a length-``n`` sequence of ints, as an ``n``-tuple of ints >= ``minimum``."""
    if isinstance(value, int) and not isinstance(value, bool):
        out = (value,) * n
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == n:
        out = tuple(value)
    else:
        raise ValueError(
            f"{where}: {name} must be an int or a sequence of {n} ints, got {value!r}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in out):
        raise ValueError(f"{where}: {name} must be >= {minimum}, got {value!r}")
    return out


def check_padding_string(padding: Any, where: str = "conv") -> None:
    """Rejects a padding string other than ``"SAME"``, ``"SAME_LOWER"``, ``"VALID"``.

    Layer factories call it so that a misspelling fails when the layer is built.
    """
    if isinstance(padding, str) and padding.upper() not in PADDING_STRINGS:
        raise ValueError(
            f"{where}: unknown padding {padding!r}; expected one of {PADDING_STRINGS}, "
            "an int, a sequence of ints or of (low, high) pairs")


def padding_pairs(
    padding: Padding,
    in_sizes: Sequence[int],
    window: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    *,
    where: str = "conv",
) -> tuple[tuple[int, int], ...]:
    """Resolves any accepted padding spec to explicit ``(low, high)`` pairs.

    ``"SAME"`` gives ``ceil(n / stride)`` outputs, putting an odd extra pad on
    the high side (lax/TensorFlow); ``"SAME_LOWER"`` puts it on the low side
    (ONNX). An int ``p`` pads ``p`` on both sides (PyTorch). A sequence gives
    one int per spatial dimension, or one ``(low, high)`` pair each; negative
    values crop.
    """
    n = len(window)
    check_padding_string(padding, where)
    if isinstance(padding, str):
        mode = padding.upper()
        if mode == "VALID":
            return ((0, 0),) * n
        pairs = []
        for size, k, s, d in zip(in_sizes, window, stride, dilation):
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            small, big = total // 2, total - total // 2
            pairs.append((small, big) if mode == "SAME" else (big, small))
        return tuple(pairs)
    if isinstance(padding, int) and not isinstance(padding, bool):
        return ((padding, padding),) * n
    if isinstance(padding, Sequence) and len(padding) == n:
        pairs = []
        for p in padding:
            if isinstance(p, int) and not isinstance(p, bool):
                pairs.append((p, p))
            elif (isinstance(p, Sequence) and len(p) == 2
                  and all(isinstance(v, int) and not isinstance(v, bool) for v in p)):
                pairs.append((p[0], p[1]))
            else:
                break
        else:
            return tuple(pairs)
    raise ValueError(
        f"{where}: padding must be 'SAME', 'SAME_LOWER', 'VALID', an int, or a sequence of "
        f"{n} ints or {n} (low, high) pairs, got {padding!r}")


def conv_output_size(size: int, k: int, stride: int, dilation: int, pad: tuple[int, int]) -> int:
    """Output length of a convolution along one dimension (may be <= 0 for invalid input)."""
    span = (k - 1) * dilation + 1
    padded = size + pad[0] + pad[1]
    return (padded - span) // stride + 1 if padded >= span else 0


def conv_output_shape(
    input_shape: Sequence[int],
    kernel_shape: Sequence[int],
    *,
    stride: Any = 1,
    padding: Padding = "SAME",
    dilation: Any = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    where: str = "conv",
) -> tuple[int, ...]:
    """The shape rule shared by every convolution implementation.

    Validates that ``input_shape`` ``(N, *spatial, C)`` and ``kernel_shape``
    ``(*window, C // groups, F)`` fit together (and that the padding is allowed
    for ``padding_mode``), and returns the output shape ``(N, *out_spatial, F)``.
    ``N`` may be ``-1``.
    """
    check_padding_mode(padding_mode, where)
    input_shape, kernel_shape = tuple(input_shape), tuple(kernel_shape)
    nd = _check_ranks(input_shape, kernel_shape, groups, where,
                      "(*kernel_size, C_in // groups, C_out)")
    c_in, c_out = input_shape[-1], kernel_shape[-1]
    if c_in % groups:
        raise ValueError(f"{where}: groups={groups} must divide the {c_in} input channels")
    if c_out % groups:
        raise ValueError(
            f"{where}: groups={groups} must divide the {c_out} output channels (kernel's last axis)")
    if kernel_shape[-2] * groups != c_in:
        raise ValueError(
            f"{where}: kernel expects {kernel_shape[-2] * groups} input channels "
            f"(kernel shape {kernel_shape}, groups={groups}), got input with {c_in} "
            f"channels (shape {input_shape})")
    window = kernel_shape[:nd]
    strides = expand(stride, nd, "stride", where=where)
    dilations = expand(dilation, nd, "dilation", where=where)
    pads = padding_pairs(padding, input_shape[1:-1], window, strides, dilations, where=where)
    out = []
    for size, k, s, d, p in zip(input_shape[1:-1], window, strides, dilations, pads):
        o = conv_output_size(size, k, s, d, p)
        if o <= 0:
            raise ValueError(
                f"{where}: kernel of size {window} (dilation {dilations}) is larger than the "
                f"padded input {tuple(i + lo + hi for i, (lo, hi) in zip(input_shape[1:-1], pads))} "
                f"(input shape {input_shape}, padding {padding!r})")
        out.append(o)
    check_mode_padding(input_shape[1:-1], pads, padding_mode, where)
    return (input_shape[0], *out, c_out)


def transpose_padding_pairs(
    padding: Padding,
    in_sizes: Sequence[int],
    window: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    *,
    where: str = "conv_transpose",
) -> tuple[tuple[int, int], ...]:
    """``(low, high)`` padding of a transposed convolution (PyTorch's meaning).

    Ints and pairs mean what they mean for ``conv``: the padding of the
    convolution being transposed, removed from the transposed output (an int
    ``p`` removes ``p`` on both sides; a negative value adds). ``"SAME"`` is the
    padding of the ``"SAME"`` convolution of an input of size ``n * stride``,
    so the output has ``n * stride`` elements and the op is exactly that
    convolution's adjoint; ``"SAME_LOWER"`` mirrors it, ``"VALID"`` is zero.
    """
    if isinstance(padding, str) and padding.upper() in ("SAME", "SAME_LOWER"):
        pairs = []
        for k, s, d in zip(window, stride, dilation):
            total = (k - 1) * d + 1 - s  # negative: the output is extended
            if total < 0:  # the convolution had no padding; its last inputs were unread
                pairs.append((0, total))
                continue
            small, big = total // 2, total - total // 2
            pairs.append((small, big) if padding.upper() == "SAME" else (big, small))
        return tuple(pairs)
    return padding_pairs(padding, in_sizes, window, stride, dilation, where=where)


def _check_ranks(input_shape, kernel_shape, groups, where, layout):
    """Checks the ranks of a convolution's input and kernel (and ``groups``); returns ``nd``."""
    nd = len(kernel_shape) - 2
    if nd not in (1, 2, 3):
        raise ValueError(
            f"{where}: kernel must have rank 3, 4 or 5 {layout}, got shape {kernel_shape}")
    if len(input_shape) != nd + 2:
        raise ValueError(
            f"{where}: expected input of rank {nd + 2} (N, *spatial[{nd}], C) for a {nd}-D "
            f"kernel, got shape {input_shape}")
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"{where}: groups must be a positive int, got {groups!r}")
    return nd


def conv_transpose_output_shape(
    input_shape: Sequence[int],
    kernel_shape: Sequence[int],
    *,
    stride: Any = 1,
    padding: Padding = "SAME",
    dilation: Any = 1,
    output_padding: Any = 0,
    groups: int = 1,
    where: str = "conv_transpose",
) -> tuple[int, ...]:
    """The shape rule of ``conv_transpose`` (PyTorch's ``ConvTranspose``).

    ``input_shape`` is ``(N, *spatial, C)`` and ``kernel_shape`` is
    ``(*kernel_size, F // groups, C)`` (the layout of the convolution it
    transposes, which maps ``F`` channels to ``C``). Per spatial dimension,
    ``out = (n - 1) * stride - low - high + dilation * (k - 1) + 1 + output_padding``;
    with ``"SAME"``, ``out = n * stride + output_padding``.
    """
    input_shape, kernel_shape = tuple(input_shape), tuple(kernel_shape)
    nd = _check_ranks(input_shape, kernel_shape, groups, where,
                      "(*kernel_size, C_out // groups, C_in)")
    c_in, f_per_group = input_shape[-1], kernel_shape[-2]
    if kernel_shape[-1] != c_in:
        raise ValueError(
            f"{where}: kernel expects {kernel_shape[-1]} input channels (kernel shape "
            f"{kernel_shape}, layout (*kernel_size, C_out // groups, C_in)), got input with "
            f"{c_in} channels (shape {input_shape})")
    if c_in % groups:
        raise ValueError(f"{where}: groups={groups} must divide the {c_in} input channels")
    window = kernel_shape[:nd]
    strides = expand(stride, nd, "stride", where=where)
    dilations = expand(dilation, nd, "dilation", where=where)
    out_pad = expand(output_padding, nd, "output_padding", minimum=0, where=where)
    for op, s, d in zip(out_pad, strides, dilations):
        if op >= max(s, d):
            raise ValueError(
                f"{where}: output_padding must be smaller than stride or dilation, got "
                f"output_padding={output_padding!r} with stride={stride!r}, "
                f"dilation={dilation!r}")
    pads = transpose_padding_pairs(padding, input_shape[1:-1], window, strides, dilations,
                                   where=where)
    out = []
    for n, k, s, d, (lo, hi), op in zip(input_shape[1:-1], window, strides, dilations, pads,
                                       out_pad):
        o = (n - 1) * s - lo - hi + (k - 1) * d + 1 + op
        if o <= 0:
            raise ValueError(
                f"{where}: padding {padding!r} crops the whole output: output size {o} along "
                f"a dimension of size {n} (input shape {input_shape}, kernel size {window})")
        out.append(o)
    return (input_shape[0], *out, f_per_group * groups)


# --------------------------------------------------------------------------
# padding_mode: reflect / replicate / circular padding, applied before the conv.

_NUMPY_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def check_padding_mode(padding_mode: Any, where: str = "conv") -> str:
    """Validates a ``padding_mode`` name."""
    if padding_mode not in PADDING_MODES:
        raise ValueError(
            f"{where}: unknown padding_mode {padding_mode!r}; expected one of {PADDING_MODES}")
    return padding_mode


def check_mode_padding(in_sizes: Sequence[int], pads: Sequence[tuple[int, int]], mode: str,
                       where: str = "conv") -> None:
    """Reflect padding must be smaller than the input, circular at most its size (PyTorch)."""
    for n, (lo, hi) in zip(in_sizes, pads):
        if mode == "reflect" and max(lo, hi) >= n:
            raise ValueError(
                f"{where}: padding_mode='reflect' needs padding smaller than the input size; "
                f"got padding {tuple(pads)} for spatial size {tuple(in_sizes)}")
        if mode == "circular" and max(lo, hi) > n:
            raise ValueError(
                f"{where}: padding_mode='circular' needs padding at most the input size; "
                f"got padding {tuple(pads)} for spatial size {tuple(in_sizes)}")


def pad_with_mode(x: Any, pads: Sequence[tuple[int, int]], mode: str):
    """Applies the positive part of ``pads`` with ``mode``; returns ``(x, remaining_pads)``.

    For ``mode == "zeros"`` nothing is done here (each implementation zero-pads
    as part of its convolution). Otherwise the positive paddings are filled by
    reflection / replication / wrap-around and the negative ones (crops) are
    left to the convolution as explicit zero "padding".
    """
    if mode == "zeros":
        return x, tuple(pads)
    widths = [(0, 0)] + [(max(lo, 0), max(hi, 0)) for lo, hi in pads] + [(0, 0)]
    if any(w != (0, 0) for w in widths):
        x = jnp.pad(x, widths, mode=_NUMPY_MODES[mode])
    return x, tuple((min(lo, 0), min(hi, 0)) for lo, hi in pads)


# --------------------------------------------------------------------------
# The general convolution both implementations evaluate.


class ConvSpec(NamedTuple):
    """A fully resolved convolution, as evaluated by every implementation.

    Per spatial dimension the input is dilated by ``lhs_dilation`` (zeros
    between elements), zero-padded by ``padding`` (``(low, high)``, negative =
    crop), and correlated with the kernel dilated by ``rhs_dilation`` at
    ``strides``. ``conv`` has ``lhs_dilation == 1``; ``conv_transpose`` is the
    same with ``lhs_dilation == stride``, ``strides == 1`` and the flipped,
    channel-swapped kernel (``flip_swap_kernel``).
    """

    strides: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    lhs_dilation: tuple[int, ...]
    rhs_dilation: tuple[int, ...]
    groups: int
    precision: Any = None


def general_output_size(n: int, k: int, spec_dim: tuple[int, tuple[int, int], int, int]) -> int:
    """Output length along one dimension of a ``ConvSpec`` (stride, pad, lhs, rhs dilation)."""
    s, (lo, hi), a, d = spec_dim
    padded = (n - 1) * a + 1 + lo + hi
    return (padded - (k - 1) * d - 1) // s + 1


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
    spatial = "DHW"[-nd:] if nd <= 3 else None
    return lax.conv_dimension_numbers(
        (1,) * (nd + 2), (1,) * (nd + 2), (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"))


def _crop(x: Any, crops: Sequence[tuple[int, int]]) -> Any:
    """Removes ``(low, high)`` elements from each spatial dimension of ``x``."""
    if not any(lo or hi for lo, hi in crops):
        return x
    start = (0, *(lo for lo, _ in crops), 0)
    limit = (x.shape[0], *(n - hi for n, (_, hi) in zip(x.shape[1:-1], crops)), x.shape[-1])
    return lax.slice(x, start, limit)


def lax_conv_general(x: Any, kernel: Any, spec: ConvSpec) -> Any:
    """Evaluates a ``ConvSpec`` with ``lax.conv_general_dilated``.

    Works around an XLA:CPU abort (``Window dimensions do not match RHS
    shape`` in the algebraic simplifier, seen with jaxlib 0.10.2 on random
    ``conv_transpose`` configurations): input dilation is done with a ``pad``
    on CPU, and negative padding (a crop) with a slice, never passed to XLA.
    Without input dilation the input is cropped; with it (``conv_transpose``,
    whose window stride is 1) the output is cropped, which is the same.
    """
    nd = kernel.ndim - 2
    spans = [(k - 1) * d + 1 for k, d in zip(kernel.shape[:nd], spec.rhs_dilation)]
    dilated = [(n - 1) * a + 1 for n, a in zip(x.shape[1:-1], spec.lhs_dilation)]
    if any(a > 1 for a in spec.lhs_dilation) and (
            jax.default_backend() == "cpu" or any(n < k for n, k in zip(dilated, spans))):
        # XLA's algebraic simplifier may swap the operands of a convolution whose kernel is
        # larger than its input (on CPU also in the weight-gradient convolution, whose
        # "kernel" is the output gradient) and aborts when that convolution has input
        # dilation. So on CPU, and for small inputs elsewhere, dilate here with a pad.
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
        dimension_numbers=dimension_numbers(kernel.ndim - 2),
        feature_group_count=spec.groups, precision=spec.precision)
    return _crop(y, crops) if crop_output else y


def run_spec(x: Any, kernel: Any, spec: ConvSpec, impl: str) -> Any:
    """Evaluates a ``ConvSpec`` with the (already resolved) implementation ``impl``."""
    if impl == "lax":
        return lax_conv_general(x, kernel, spec)
    from jaxconv.ops.patches import patches_conv_general  # noqa: PLC0415 (import cycle)
    return patches_conv_general(x, kernel, spec)


def check_impl(impl: Any, where: str) -> None:
    """``ValueError`` naming ``where`` unless ``impl`` is one of ``IMPLS``."""
    if impl not in IMPLS:
        raise ValueError(f"{where}: unknown impl {impl!r}; expected one of {IMPLS}")


def resolve_impl(impl: str, op: str, x: Any, kernel: Any, spec: ConvSpec) -> str:
    """``"lax"`` / ``"patches"`` as given; ``"auto"`` looks up ``jaxconv.ops.autotune``.

    ``x``, ``kernel`` and ``spec`` are what ``run_spec`` will evaluate.
    """
    if impl != "auto":
        return impl
    rows = autotune.rows_apply(x.shape, kernel.shape, spec, autotune.rows_rule())
    return autotune.choose_impl(op, tuple(x.shape), tuple(kernel.shape), spec.groups, rows=rows)


def _unit_dilation(window, dilations):
    """Dilation is meaningless along a kernel dimension of size 1: make it 1 there."""
    return tuple(1 if k == 1 else d for k, d in zip(window, dilations))


def _promote(x, kernel):
    x, kernel = jnp.asarray(x), jnp.asarray(kernel)
    dtype = jnp.result_type(x, kernel)
    return x.astype(dtype), kernel.astype(dtype)


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
    x, kernel = _promote(x, kernel)
    check_padding_mode(padding_mode)
    check_impl(impl, "conv")
    conv_output_shape(x.shape, kernel.shape, stride=stride, padding=padding,
                      dilation=dilation, groups=groups, padding_mode=padding_mode)
    nd = kernel.ndim - 2
    strides = expand(stride, nd, "stride")
    dilations = expand(dilation, nd, "dilation")
    pads = padding_pairs(padding, x.shape[1:-1], kernel.shape[:nd], strides, dilations)
    x, pads = pad_with_mode(x, pads, padding_mode)
    spec = ConvSpec(strides, pads, (1,) * nd, _unit_dilation(kernel.shape[:nd], dilations),
                    groups, precision)
    return run_spec(x, kernel, spec, resolve_impl(impl, "conv", x, kernel, spec))


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
    x, kernel = _promote(x, kernel)
    check_impl(impl, "conv_transpose")
    conv_transpose_output_shape(x.shape, kernel.shape, stride=stride, padding=padding,
                                dilation=dilation, output_padding=output_padding, groups=groups)
    nd = kernel.ndim - 2
    window = kernel.shape[:nd]
    strides = expand(stride, nd, "stride", where="conv_transpose")
    dilations = expand(dilation, nd, "dilation", where="conv_transpose")
    out_pad = expand(output_padding, nd, "output_padding", minimum=0, where="conv_transpose")
    pads = transpose_padding_pairs(padding, x.shape[1:-1], window, strides, dilations)
    # Gather form: dilate x by the stride, pad by (span - 1 - low, span - 1 - high + op),
    # correlate with the flipped, channel-swapped kernel at stride 1.
    gather_pads = tuple(
        ((k - 1) * d - lo, (k - 1) * d - hi + op)
        for k, d, (lo, hi), op in zip(window, dilations, pads, out_pad))
    spec = ConvSpec((1,) * nd, gather_pads, strides, _unit_dilation(window, dilations), groups,
                    precision)
    kernel = flip_swap_kernel(kernel, groups)
    return run_spec(x, kernel, spec, resolve_impl(impl, "conv_transpose", x, kernel, spec))
