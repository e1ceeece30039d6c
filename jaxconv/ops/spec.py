"""Resolving a convolution: its arguments, its shape rule, and the spec the implementations evaluate.

Every convolution in jaxconv -- ``conv`` and ``conv_transpose`` with either
implementation, ``extract_patches``, ``conv_output_shape``, the ``Conv`` and
``ConvTranspose`` layers -- is resolved here, in two steps:

1. :func:`conv_options` checks the keyword arguments (stride, padding,
   dilation, groups, padding_mode, output_padding, impl, precision) and puts
   them in normal form, before any shape is known. A layer does this once, in
   its factory; an op once per call.
2. :func:`resolve_conv` checks those options against the input and kernel
   shapes and returns the :class:`ConvSpec` that both implementations evaluate,
   with the output shape. This happens once per call: in an op, in a layer's
   ``init`` and in each ``apply``.

Layout is channels-last: ``x`` is ``(N, *spatial, C)``; a ``conv`` kernel is
``(*kernel_size, C // groups, F)``, a ``conv_transpose`` kernel
``(*kernel_size, F // groups, C)`` (the layout of the convolution it
transposes). 1-D, 2-D and 3-D are supported.

This module imports nothing from jaxconv but ``jaxconv.validate``: the
implementations, their dispatch, pooling and the layers import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp

from jaxconv.validate import choice, int_tuple, integer, is_int

__all__ = ["PADDING_STRINGS", "PADDING_MODES", "IMPLS", "CONV_OPS", "ConvOptions", "ConvSpec",
           "conv_options", "resolve_conv", "conv_output_shape", "conv_transpose_output_shape",
           "padding_pairs", "parse_padding", "spatial_option", "check_spatial_rank",
           "output_length", "spec_output_sizes", "pad_with_mode", "apply_padding_mode"]

Shape = tuple[int, ...]
Padding = Any  # "SAME" | "SAME_LOWER" | "VALID" | int | Sequence[int] | Sequence[(low, high)]

PADDING_STRINGS = ("SAME", "SAME_LOWER", "VALID")
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
IMPLS = ("lax", "patches", "pallas", "auto")
CONV_OPS = ("conv", "conv_transpose")

_KERNEL_LAYOUT = {"conv": "(*kernel_size, C_in // groups, C_out)",
                  "conv_transpose": "(*kernel_size, C_out // groups, C_in)"}


# --------------------------------------------------------------------------
# Step 1: the arguments, before any shape is known.


class ConvOptions(NamedTuple):
    """A convolution's keyword arguments, checked and in normal form (see :func:`conv_options`).

    Per-dimension options (``stride``, ``dilation``, ``output_padding``) are an
    int or a tuple of ints: the number of spatial dimensions is not known yet.
    ``padding`` is an upper-case string, an int, or a tuple of ints and
    ``(low, high)`` pairs. ``context`` names whoever received the arguments in
    error messages (``"conv"``, ``"Conv"``, ...).
    """

    op: str
    context: str
    stride: int | tuple[int, ...]
    padding: str | int | tuple[Any, ...]
    dilation: int | tuple[int, ...]
    groups: int
    padding_mode: str
    output_padding: int | tuple[int, ...]
    impl: str
    precision: Any


def spatial_option(value: Any, name: str, *, context: str, minimum: int = 1) -> int | tuple[int, ...]:
    """An int or a sequence of ints, checked before the number of dimensions is known.

    Returns the int, or the sequence as a tuple; ``jaxconv.validate.int_tuple``
    with ``length=nd`` later gives one int per spatial dimension.
    """
    checked = int_tuple(value, name, context=context, minimum=minimum)
    return int(value) if is_int(value) else checked


def _is_pair(p: Any) -> bool:
    return isinstance(p, Sequence) and not isinstance(p, str) and len(p) == 2 and all(map(is_int, p))


def _padding_error(padding: Any, context: str, nd: int | None = None) -> ValueError:
    count = "" if nd is None else f"{nd} "
    return ValueError(
        f"{context}: padding must be 'SAME', 'SAME_LOWER', 'VALID', an int, or a sequence of "
        f"{count}ints or {count}(low, high) pairs (one per spatial dimension), got {padding!r}")


def parse_padding(padding: Padding, context: str) -> str | int | tuple[Any, ...]:
    """Checks a padding spelling and returns it in normal form.

    Accepted: ``"SAME"``, ``"SAME_LOWER"``, ``"VALID"`` (any case; returned
    upper-case), an int (both sides of every dimension), or a sequence with one
    int or one ``(low, high)`` pair per spatial dimension (returned as a tuple
    of ints and pairs; its length is checked when the shapes are known).
    """
    if isinstance(padding, str):
        if padding.upper() not in PADDING_STRINGS:
            raise ValueError(
                f"{context}: unknown padding {padding!r}; expected one of {PADDING_STRINGS}, "
                "an int, a sequence of ints or of (low, high) pairs")
        return padding.upper()
    if is_int(padding):
        return int(padding)
    if isinstance(padding, Sequence) and padding and all(is_int(p) or _is_pair(p) for p in padding):
        return tuple(int(p) if is_int(p) else (int(p[0]), int(p[1])) for p in padding)
    raise _padding_error(padding, context)


def conv_options(op: str, context: str | None = None, *, stride: Any = 1, padding: Padding = "SAME",
                 dilation: Any = 1, groups: int = 1, padding_mode: str = "zeros",
                 output_padding: Any = 0, impl: str = "lax", precision: Any = None) -> ConvOptions:
    """Checks a convolution's keyword arguments; what :func:`resolve_conv` takes.

    Args:
      op: ``"conv"`` or ``"conv_transpose"``.
      context: who received the arguments, for error messages (default ``op``).
      stride, dilation: int or one int per spatial dimension, ``>= 1``.
      padding: see :func:`parse_padding` (for ``conv_transpose``: the padding
        of the convolution it transposes, removed from its output).
      groups: feature groups, ``>= 1``.
      padding_mode: one of ``PADDING_MODES`` (``conv`` only; ``conv_transpose``
        takes ``"zeros"``).
      output_padding: int or one int per dimension, ``>= 0`` (``conv_transpose``
        only; ``conv`` takes 0).
      impl: one of ``IMPLS``.
      precision: passed to the contraction as is.

    Raises:
      ValueError: naming ``context``, the argument, what was expected and what was given.
    """
    choice(op, "op", CONV_OPS, context="conv_options")
    context = context or op
    modes = PADDING_MODES if op == "conv" else ("zeros",)
    output_padding = spatial_option(output_padding, "output_padding", context=context, minimum=0)
    if op == "conv" and sum(int_tuple(output_padding, "output_padding", context=context)):
        raise ValueError(f"{context}: output_padding is an option of transposed convolutions "
                         f"only, got {output_padding!r}")
    return ConvOptions(
        op, context,
        stride=spatial_option(stride, "stride", context=context),
        padding=parse_padding(padding, context),
        dilation=spatial_option(dilation, "dilation", context=context),
        groups=integer(groups, "groups", context=context, minimum=1),
        padding_mode=choice(padding_mode, "padding_mode", modes, context=context),
        output_padding=output_padding,
        impl=choice(impl, "impl", IMPLS, context=context),
        precision=precision)


# --------------------------------------------------------------------------
# The size rule.


class ConvSpec(NamedTuple):
    """A resolved convolution, as every implementation evaluates it.

    Per spatial dimension the input is dilated by ``lhs_dilation`` (zeros
    between elements), padded by ``padding`` (``(low, high)``; negative =
    crop) with ``padding_mode``, and correlated with the kernel dilated by
    ``rhs_dilation`` at ``strides``. ``conv`` has ``lhs_dilation == 1``;
    ``conv_transpose`` is the same with ``lhs_dilation == stride``,
    ``strides == 1``, zero padding and its kernel flipped and channel-swapped
    (``jaxconv.ops.conv.flip_swap_kernel``).
    """

    strides: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    lhs_dilation: tuple[int, ...]
    rhs_dilation: tuple[int, ...]
    groups: int
    precision: Any = None
    padding_mode: str = "zeros"


def output_length(n: int, k: int, stride: int, pads: tuple[int, int], lhs_dilation: int = 1,
                rhs_dilation: int = 1) -> int:
    """Output length along one dimension; ``<= 0`` when the window never fits.

    ``floor((dilated n + low + high - span) / stride) + 1`` with
    ``dilated n = (n - 1) * lhs_dilation + 1`` and ``span = (k - 1) * rhs_dilation + 1``.
    """
    padded = (n - 1) * lhs_dilation + 1 + pads[0] + pads[1]
    return (padded - (k - 1) * rhs_dilation - 1) // stride + 1


def spec_output_sizes(in_sizes: Sequence[int], window: Sequence[int], spec: ConvSpec) -> Shape:
    """The output's spatial sizes when ``spec`` is evaluated on ``in_sizes`` with ``window``."""
    return tuple(output_length(n, k, s, p, a, d) for n, k, s, p, a, d in zip(
        in_sizes, window, spec.strides, spec.padding, spec.lhs_dilation, spec.rhs_dilation))


def check_spatial_rank(shape: Sequence[int], context: str) -> int:
    """Checks ``(N, *spatial, C)`` with 1 to 3 spatial dimensions; returns their count."""
    nd = len(shape) - 2
    if nd not in (1, 2, 3):
        raise ValueError(
            f"{context}: expected input of rank 3, 4 or 5 (N, *spatial, C), got shape "
            f"{tuple(shape)} (rank {len(shape)})")
    return nd


def _same_pairs(lower: bool, in_sizes, window, stride, dilation):
    """``"SAME"`` padding: ``ceil(n / stride)`` outputs, the odd extra pad high (low if ``lower``)."""
    pairs = []
    for n, k, s, d in zip(in_sizes, window, stride, dilation):
        total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
        small, big = total // 2, total - total // 2
        pairs.append((big, small) if lower else (small, big))
    return tuple(pairs)


def _pairs(padding, in_sizes, window, stride, dilation, context):
    """Explicit ``(low, high)`` pairs of a padding in normal form (:func:`parse_padding`)."""
    nd = len(window)
    if padding == "VALID":
        return ((0, 0),) * nd
    if isinstance(padding, str):
        return _same_pairs(padding == "SAME_LOWER", in_sizes, window, stride, dilation)
    if is_int(padding):
        return ((padding, padding),) * nd
    if len(padding) != nd:
        raise _padding_error(padding, context, nd)
    return tuple((p, p) if is_int(p) else tuple(p) for p in padding)


def padding_pairs(padding: Padding, in_sizes: Sequence[int], window: Sequence[int],
                  stride: Sequence[int], dilation: Sequence[int], *,
                  context: str = "conv") -> tuple[tuple[int, int], ...]:
    """Resolves any accepted padding spelling to explicit ``(low, high)`` pairs.

    ``"SAME"`` gives ``ceil(n / stride)`` outputs, putting an odd extra pad on
    the high side (lax/TensorFlow); ``"SAME_LOWER"`` puts it on the low side
    (ONNX). An int ``p`` pads ``p`` on both sides (PyTorch). A sequence gives
    one int per spatial dimension, or one ``(low, high)`` pair each; negative
    values crop.
    """
    return _pairs(parse_padding(padding, context), in_sizes, window, stride, dilation, context)


# --------------------------------------------------------------------------
# Step 2: the options against the shapes.


def _check_ranks(options: ConvOptions, x_shape: Shape, kernel_shape: Shape) -> int:
    """Checks the ranks of a convolution's input and kernel; returns the spatial dimensions."""
    nd = len(kernel_shape) - 2
    if nd not in (1, 2, 3):
        raise ValueError(
            f"{options.context}: kernel must have rank 3, 4 or 5 {_KERNEL_LAYOUT[options.op]}, "
            f"got shape {kernel_shape}")
    if len(x_shape) != nd + 2:
        raise ValueError(
            f"{options.context}: expected input of rank {nd + 2} (N, *spatial[{nd}], C) for a "
            f"{nd}-D kernel, got shape {x_shape}")
    return nd


def _check_channels(options: ConvOptions, x_shape: Shape, kernel_shape: Shape) -> None:
    """Input channels, kernel channels and ``groups`` must fit together."""
    context, groups, c_in = options.context, options.groups, x_shape[-1]
    if c_in % groups:
        raise ValueError(f"{context}: groups={groups} must divide the {c_in} input channels "
                         f"(input shape {x_shape})")
    expected = kernel_shape[-2] * groups if options.op == "conv" else kernel_shape[-1]
    if expected != c_in:
        raise ValueError(
            f"{context}: kernel expects {expected} input channels (kernel shape {kernel_shape}, "
            f"layout {_KERNEL_LAYOUT[options.op]}, groups={groups}), got input with {c_in} "
            f"channels (shape {x_shape})")
    if options.op == "conv" and kernel_shape[-1] % groups:
        raise ValueError(f"{context}: groups={groups} must divide the {kernel_shape[-1]} output "
                         f"channels (kernel's last axis)")


def _unit_dilation(window, dilations):
    """Dilation is meaningless along a kernel dimension of size 1: make it 1 there."""
    return tuple(1 if k == 1 else d for k, d in zip(window, dilations))


def _check_mode_padding(options: ConvOptions, in_sizes, pads) -> None:
    """Reflect padding must be smaller than the input, circular at most its size (PyTorch)."""
    mode = options.padding_mode
    for n, (lo, hi) in zip(in_sizes, pads):
        if mode == "reflect" and max(lo, hi) >= n:
            raise ValueError(
                f"{options.context}: padding_mode='reflect' needs padding smaller than the input "
                f"size; got padding {tuple(pads)} for spatial size {tuple(in_sizes)}")
        if mode == "circular" and max(lo, hi) > n:
            raise ValueError(
                f"{options.context}: padding_mode='circular' needs padding at most the input "
                f"size; got padding {tuple(pads)} for spatial size {tuple(in_sizes)}")


def _conv_spec(options: ConvOptions, x_shape: Shape, window, strides, dilations) -> ConvSpec:
    """The spec of ``conv``, its output checked not to be empty."""
    in_sizes = x_shape[1:-1]
    pads = _pairs(options.padding, in_sizes, window, strides, dilations, options.context)
    spec = ConvSpec(strides, pads, (1,) * len(window), _unit_dilation(window, dilations),
                    options.groups, options.precision, options.padding_mode)
    if min(spec_output_sizes(in_sizes, window, spec)) <= 0:
        padded = tuple(n + lo + hi for n, (lo, hi) in zip(in_sizes, pads))
        raise ValueError(
            f"{options.context}: kernel of size {window} (dilation {dilations}) is larger than "
            f"the padded input {padded} (input shape {x_shape}, padding {options.padding!r})")
    _check_mode_padding(options, in_sizes, pads)
    return spec


def _transpose_pairs(padding, in_sizes, window, strides, dilations, context):
    """``(low, high)`` removed from the output of a transposed convolution (PyTorch's meaning).

    Ints and pairs are the padding of the convolution being transposed.
    ``"SAME"`` is the padding of the ``"SAME"`` convolution of an input of
    ``n * stride`` elements, so that the output has ``n * stride`` elements and
    the op is exactly that convolution's adjoint; ``"SAME_LOWER"`` mirrors it.
    """
    if padding not in ("SAME", "SAME_LOWER"):
        return _pairs(padding, in_sizes, window, strides, dilations, context)
    pairs = []
    for k, s, d in zip(window, strides, dilations):
        total = (k - 1) * d + 1 - s
        if total < 0:  # that convolution had no padding and left its last inputs unread
            pairs.append((0, total))  # a negative high side: the output is extended
            continue
        small, big = total // 2, total - total // 2
        pairs.append((small, big) if padding == "SAME" else (big, small))
    return tuple(pairs)


def _transpose_spec(options: ConvOptions, x_shape: Shape, window, strides, dilations) -> ConvSpec:
    """The spec of ``conv_transpose``, in gather form, its output checked not to be empty.

    Gather form: dilate the input by the stride, pad it by
    ``(span - 1 - low, span - 1 - high + output_padding)`` and correlate it
    with the flipped, channel-swapped kernel at stride 1.
    """
    nd, context, in_sizes = len(window), options.context, x_shape[1:-1]
    out_pad = int_tuple(options.output_padding, "output_padding", context=context, length=nd,
                        minimum=0)
    if any(op >= max(s, d) for op, s, d in zip(out_pad, strides, dilations)):
        raise ValueError(
            f"{context}: output_padding must be smaller than stride or dilation, got "
            f"output_padding={options.output_padding!r} with stride={options.stride!r}, "
            f"dilation={options.dilation!r}")
    pads = _transpose_pairs(options.padding, in_sizes, window, strides, dilations, context)
    gather = tuple(((k - 1) * d - lo, (k - 1) * d - hi + op)
                   for k, d, (lo, hi), op in zip(window, dilations, pads, out_pad))
    spec = ConvSpec((1,) * nd, gather, strides, _unit_dilation(window, dilations),
                    options.groups, options.precision)
    for n, o in zip(in_sizes, spec_output_sizes(in_sizes, window, spec)):
        if o <= 0:
            raise ValueError(
                f"{context}: padding {options.padding!r} crops the whole output: output size {o} "
                f"along a dimension of size {n} (input shape {x_shape}, kernel size {window})")
    return spec


def resolve_conv(options: ConvOptions, x_shape: Sequence[int],
                 kernel_shape: Sequence[int]) -> tuple[ConvSpec, Shape]:
    """Resolves checked options (:func:`conv_options`) against the input and kernel shapes.

    Args:
      options: the convolution's arguments.
      x_shape: ``(N, *spatial, C)``; ``N`` may be ``-1``.
      kernel_shape: ``(*kernel_size, C // groups, F)`` for ``conv``,
        ``(*kernel_size, F // groups, C)`` for ``conv_transpose``.

    Returns:
      ``(spec, output_shape)``: the :class:`ConvSpec` to evaluate (for
      ``conv_transpose``, with the flipped, channel-swapped kernel) and the
      output shape ``(N, *out_spatial, F)``.

    Raises:
      ValueError: mismatched ranks or channels, groups not dividing the
        channels, per-dimension options of the wrong length, an empty output,
        padding too wide for ``padding_mode``.
    """
    x_shape, kernel_shape = tuple(x_shape), tuple(kernel_shape)
    nd = _check_ranks(options, x_shape, kernel_shape)
    _check_channels(options, x_shape, kernel_shape)
    window = kernel_shape[:nd]
    strides = int_tuple(options.stride, "stride", context=options.context, length=nd, minimum=1)
    dilations = int_tuple(options.dilation, "dilation", context=options.context, length=nd,
                          minimum=1)
    if options.op == "conv":
        spec = _conv_spec(options, x_shape, window, strides, dilations)
        features = kernel_shape[-1]
    else:
        spec = _transpose_spec(options, x_shape, window, strides, dilations)
        features = kernel_shape[-2] * options.groups
    return spec, (x_shape[0], *spec_output_sizes(x_shape[1:-1], window, spec), features)


def conv_output_shape(input_shape: Sequence[int], kernel_shape: Sequence[int], *, stride: Any = 1,
                      padding: Padding = "SAME", dilation: Any = 1, groups: int = 1,
                      padding_mode: str = "zeros", context: str = "conv") -> Shape:
    """The output shape of ``conv`` (the shape rule of both implementations).

    Validates that ``input_shape`` ``(N, *spatial, C)`` and ``kernel_shape``
    ``(*kernel_size, C // groups, F)`` fit together (and that the padding is
    allowed for ``padding_mode``), and returns ``(N, *out_spatial, F)`` with,
    per dimension, ``out = floor((n + low + high - dilation * (k - 1) - 1) / stride) + 1``.
    ``N`` may be ``-1``.
    """
    options = conv_options("conv", context, stride=stride, padding=padding, dilation=dilation,
                           groups=groups, padding_mode=padding_mode)
    return resolve_conv(options, input_shape, kernel_shape)[1]


def conv_transpose_output_shape(input_shape: Sequence[int], kernel_shape: Sequence[int], *,
                                stride: Any = 1, padding: Padding = "SAME", dilation: Any = 1,
                                output_padding: Any = 0, groups: int = 1,
                                context: str = "conv_transpose") -> Shape:
    """The output shape of ``conv_transpose`` (PyTorch's ``ConvTranspose``).

    ``input_shape`` is ``(N, *spatial, C)`` and ``kernel_shape`` is
    ``(*kernel_size, F // groups, C)``. Per spatial dimension,
    ``out = (n - 1) * stride - low - high + dilation * (k - 1) + 1 + output_padding``;
    with ``"SAME"``, ``out = n * stride + output_padding``.
    """
    options = conv_options("conv_transpose", context, stride=stride, padding=padding,
                           dilation=dilation, output_padding=output_padding, groups=groups)
    return resolve_conv(options, input_shape, kernel_shape)[1]


# --------------------------------------------------------------------------
# padding_mode: reflect / replicate / circular padding, applied before the correlation.

_NUMPY_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def pad_with_mode(x: Any, pads: Sequence[tuple[int, int]], mode: str) -> tuple[Any, tuple]:
    """Applies the positive part of ``pads`` with ``mode``; returns ``(x, remaining_pads)``.

    For ``mode == "zeros"`` nothing is done (each implementation zero-pads as
    part of its convolution). Otherwise the positive paddings are filled by
    reflection / replication / wrap-around, and the negative ones (crops) are
    left to the convolution as explicit zero "padding".
    """
    if mode == "zeros":
        return x, tuple(pads)
    widths = [(0, 0)] + [(max(lo, 0), max(hi, 0)) for lo, hi in pads] + [(0, 0)]
    if any(w != (0, 0) for w in widths):
        x = jnp.pad(x, widths, mode=_NUMPY_MODES[mode])
    return x, tuple((min(lo, 0), min(hi, 0)) for lo, hi in pads)


def apply_padding_mode(x: Any, spec: ConvSpec) -> tuple[Any, ConvSpec]:
    """``x`` padded by ``spec.padding_mode``, and the spec left to evaluate with zero padding."""
    x, pads = pad_with_mode(x, spec.padding, spec.padding_mode)
    return x, spec._replace(padding=pads, padding_mode="zeros")
