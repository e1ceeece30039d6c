"""Convolution: shared argument normalisation and the ``lax`` implementation.

Layout is channels-last: ``x`` is ``(N, *spatial, C)`` and ``kernel`` is
``(*kernel_size, C // groups, F)``. 1-D, 2-D and 3-D are supported.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
from jax import lax

Padding = Any  # "SAME" | "SAME_LOWER" | "VALID" | int | Sequence[int] | Sequence[(lo, hi)]

PADDING_STRINGS = ("SAME", "SAME_LOWER", "VALID")


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
    if isinstance(padding, str):
        mode = padding.upper()
        if mode not in PADDING_STRINGS:
            raise ValueError(
                f"{where}: unknown padding {padding!r}; expected one of {PADDING_STRINGS}, "
                "an int, a sequence of ints or of (low, high) pairs")
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
    where: str = "conv",
) -> tuple[int, ...]:
    """The shape rule shared by every convolution implementation.

    Validates that ``input_shape`` ``(N, *spatial, C)`` and ``kernel_shape``
    ``(*window, C // groups, F)`` fit together, and returns the output shape
    ``(N, *out_spatial, F)``. ``N`` may be ``-1``.
    """
    input_shape, kernel_shape = tuple(input_shape), tuple(kernel_shape)
    nd = len(kernel_shape) - 2
    if nd not in (1, 2, 3):
        raise ValueError(
            f"{where}: kernel must have rank 3, 4 or 5 (*kernel_size, C_in // groups, C_out), "
            f"got shape {kernel_shape}")
    if len(input_shape) != nd + 2:
        raise ValueError(
            f"{where}: expected input of rank {nd + 2} (N, *spatial[{nd}], C) for a {nd}-D "
            f"kernel, got shape {input_shape}")
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"{where}: groups must be a positive int, got {groups!r}")
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
    return (input_shape[0], *out, c_out)


def dimension_numbers(nd: int) -> lax.ConvDimensionNumbers:
    spatial = "DHW"[-nd:] if nd <= 3 else None
    return lax.conv_dimension_numbers(
        (1,) * (nd + 2), (1,) * (nd + 2), (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"))


def conv(
    x: Any,
    kernel: Any,
    *,
    stride: Any = 1,
    padding: Padding = "SAME",
    dilation: Any = 1,
    groups: int = 1,
    impl: str = "lax",
    precision: Any = None,
) -> Any:
    """N-D convolution (cross-correlation, as in every deep-learning library).

    Args:
      x: ``(N, *spatial, C)``.
      kernel: ``(*kernel_size, C // groups, F)``.
      stride, dilation: int or one int per spatial dimension.
      padding: see ``padding_pairs``.
      groups: feature groups; ``groups == C`` is a depthwise convolution.
      impl: ``"lax"`` (``lax.conv_general_dilated``).
      precision: passed to the contraction (``lax.Precision.HIGHEST`` avoids TF32).

    Returns:
      ``(N, *out_spatial, F)`` where, per dimension,
      ``out = floor((n + lo + hi - dilation * (k - 1) - 1) / stride) + 1``.
    """
    x, kernel = jnp.asarray(x), jnp.asarray(kernel)
    conv_output_shape(x.shape, kernel.shape, stride=stride, padding=padding,
                      dilation=dilation, groups=groups)
    nd = kernel.ndim - 2
    strides = expand(stride, nd, "stride")
    dilations = expand(dilation, nd, "dilation")
    pads = padding_pairs(padding, x.shape[1:-1], kernel.shape[:nd], strides, dilations)
    if impl != "lax":
        raise ValueError(f"conv: unknown impl {impl!r}; expected 'lax'")
    return lax.conv_general_dilated(
        x, kernel, window_strides=strides, padding=pads, rhs_dilation=dilations,
        dimension_numbers=dimension_numbers(nd), feature_group_count=groups,
        precision=precision)
