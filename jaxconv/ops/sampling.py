"""Resizing channels-last arrays: PyTorch's ``interpolate``, ``pixel_shuffle`` and ``pixel_unshuffle``.

``x`` is ``(N, *spatial, C)`` with 1 to 3 spatial dimensions. ``resize`` is
separable: each spatial axis is resampled on its own by one gather of the
source positions and a weighted sum over the taps (1 for the nearest methods,
2 for linear, 4 for cubic). The source positions and weights depend only on the
static sizes, so they are computed once with NumPy when the function is traced
and enter the computation as constants; gradients come from JAX's autodiff of
the gather (a scatter-add), as in PyTorch's backward kernels.

Coordinate mapping, output index ``i`` of ``out`` on an axis of ``n`` inputs,
as in ``torch.nn.functional.interpolate``:

- ``scale`` is ``1 / scale_factor`` when ``scale_factor`` is given, else
  ``n / out``; with ``align_corners=True`` it is ``(n - 1) / (out - 1)``
  (``0`` when ``out == 1``). The output size is ``floor(n * scale_factor)``.
- ``"nearest"``: ``src = floor(i * scale)`` (PyTorch's legacy rule);
  ``"nearest-exact"``: ``src = floor((i + 0.5) * scale)``; both clamped to ``n - 1``.
  For 2-D inputs PyTorch's nearest kernel copies an axis whose size does not
  change and maps ``i -> i // 2`` on one whose size doubles, even when a
  non-integer ``scale_factor`` (1.1, 2.1) says otherwise; ``resize`` does the same.
- ``"linear"`` (``"bilinear"``, ``"trilinear"``): ``src = i * scale`` with
  ``align_corners``, else ``max((i + 0.5) * scale - 0.5, 0)``; the two nearest
  inputs are mixed by the fractional part. An axis whose size does not change
  is copied unchanged (PyTorch does the same, even when ``scale_factor`` is not 1).
- ``"bicubic"``: the same ``src`` without the clamp at 0, Keys' cubic
  convolution with ``A = -0.75`` over 4 inputs, indices clamped to the border.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxconv.ops.spec import check_spatial_rank
from jaxconv.validate import boolean, choice, exactly_one, int_tuple, integer

METHODS = ("nearest", "nearest-exact", "linear", "bilinear", "trilinear", "bicubic")
NEAREST_METHODS = ("nearest", "nearest-exact")
LINEAR_METHODS = ("linear", "bilinear", "trilinear")
# Methods that only exist for one number of spatial dimensions ("linear" fits any).
METHOD_SPATIAL_DIMS = {"bilinear": 2, "trilinear": 3, "bicubic": 2}
CUBIC_A = -0.75


def _scale_factors(value: Any, *, context: str, length: int | None = None) -> tuple[float, ...]:
    """A positive finite number, or a sequence of them (``length`` long when given), as a tuple."""
    is_sequence = isinstance(value, Sequence) and not isinstance(value, str)
    items = tuple(value) if is_sequence else (value,)
    good = bool(items) and all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and v > 0
        for v in items)
    if not good or (is_sequence and length is not None and len(items) != length):
        count = "numbers" if length is None else f"{length} numbers"
        raise ValueError(f"{context}: scale_factor must be a number > 0 or a sequence of {count} "
                         f"> 0, got {value!r}")
    if not is_sequence and length is not None:
        items = items * length
    return tuple(float(v) for v in items)


def check_resize_args(size: Any, scale_factor: Any, method: Any, align_corners: Any, *,
                      context: str) -> None:
    """Validates the arguments of ``resize`` that do not depend on the input.

    Layer factories call it so that bad arguments fail when the layer is built.

    Raises:
      ValueError: unknown ``method``, ``align_corners=True`` with a nearest
        method, not exactly one of ``size``/``scale_factor``, or a size or
        factor that is not positive.
    """
    choice(method, "method", METHODS, context=context)
    boolean(align_corners, "align_corners", context=context)
    if align_corners and method in NEAREST_METHODS:
        raise ValueError(
            f"{context}: align_corners=True is only defined for the interpolating methods "
            f"('linear', 'bilinear', 'trilinear', 'bicubic'), got method {method!r}")
    if exactly_one(size=size, scale_factor=scale_factor, context=context) == "size":
        int_tuple(size, "size", context=context, minimum=1)
    else:
        _scale_factors(scale_factor, context=context)


def _axis_sizes(input_shape: Sequence[int], size: Any, scale_factor: Any, method: str,
                align_corners: bool, context: str):
    """Validates a resize of ``input_shape``; returns ``(n_in, n_out, factor or None)`` per axis."""
    check_resize_args(size, scale_factor, method, align_corners, context=context)
    shape = tuple(input_shape)
    nd = check_spatial_rank(shape, context)
    wanted = METHOD_SPATIAL_DIMS.get(method, nd)
    if wanted != nd:
        raise ValueError(
            f"{context}: method {method!r} expects input of rank {wanted + 2} (N, "
            f"{wanted} spatial dims, C), got shape {shape}"
            + ("; use method='linear'" if method != "bicubic" else ""))
    in_sizes = shape[1:-1]
    if size is not None:
        out_sizes = int_tuple(size, "size", context=context, length=nd, minimum=1)
        return tuple((n, o, None) for n, o in zip(in_sizes, out_sizes))
    factors = _scale_factors(scale_factor, context=context, length=nd)
    out_sizes = tuple(math.floor(n * f) for n, f in zip(in_sizes, factors))
    if min(out_sizes) < 1:
        raise ValueError(f"{context}: scale_factor {scale_factor!r} maps the spatial shape "
                         f"{in_sizes} of input {shape} to {out_sizes}; every size must be >= 1")
    return tuple(zip(in_sizes, out_sizes, factors))


def resize_output_shape(input_shape: Sequence[int], *, size: Any = None, scale_factor: Any = None,
                        method: str = "nearest", align_corners: bool = False,
                        context: str = "resize") -> tuple[int, ...]:
    """The shape ``resize`` produces for ``input_shape`` (batch may be ``-1``); validates all arguments."""
    axes = _axis_sizes(input_shape, size, scale_factor, method, align_corners, context)
    return (input_shape[0], *(o for _, o, _ in axes), input_shape[-1])


def _source_scale(n_in: int, n_out: int, factor: float | None, align_corners: bool) -> float:
    """Input positions per output position on one axis (PyTorch's ``area_pixel_compute_scale``)."""
    if align_corners:
        return (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    return 1.0 / factor if factor is not None else n_in / n_out


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution weights of the 4 taps at offsets -1, 0, 1, 2 from ``floor(src)``."""
    def near(d):  # |d| <= 1
        return ((CUBIC_A + 2) * d - (CUBIC_A + 3)) * d * d + 1

    def far(d):  # 1 < |d| < 2
        return ((CUBIC_A * d - 5 * CUBIC_A) * d + 8 * CUBIC_A) * d - 4 * CUBIC_A

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)


def axis_taps(n_in: int, n_out: int, factor: float | None, method: str, align_corners: bool,
               nd: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices ``(n_out, taps)`` and their weights ``(n_out, taps)`` for one axis."""
    nearest_2d = method == "nearest" and nd == 2
    copies = n_out == n_in and (factor in (None, 1.0) or align_corners
                                or method in LINEAR_METHODS or nearest_2d)
    if copies or (nearest_2d and n_out == 2 * n_in):
        # An unchanged size at scale 1 maps i -> i. PyTorch also copies an unchanged linear
        # axis, and its 2-D nearest kernel copies an unchanged axis and maps i -> i // 2
        # when the size doubles, whatever the scale factor says.
        return (np.arange(n_out) * n_in // n_out)[:, None], np.ones((n_out, 1))
    scale = _source_scale(n_in, n_out, factor, align_corners)
    dst = np.arange(n_out, dtype=np.float64)
    if method in NEAREST_METHODS:
        src = dst * scale if method == "nearest" else (dst + 0.5) * scale
        # PyTorch floors the source position in single precision (floorf).
        index = np.minimum(np.floor(src.astype(np.float32)).astype(np.int64), n_in - 1)
        return index[:, None], np.ones((n_out, 1))
    src = dst * scale if align_corners else (dst + 0.5) * scale - 0.5
    if method == "bicubic":
        start = np.floor(src)
        index = np.clip(start.astype(np.int64)[:, None] + np.arange(-1, 3), 0, n_in - 1)
        return index, _cubic_weights(src - start)
    src = np.maximum(src, 0.0)
    low = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    frac = np.clip(src - low, 0.0, 1.0)
    index = np.stack([low, np.minimum(low + 1, n_in - 1)], axis=1)
    return index, np.stack([1.0 - frac, frac], axis=1)


def _resample_axis(x: Any, axis: int, index: np.ndarray, weight: np.ndarray) -> Any:
    """Gathers ``index`` along ``axis`` and sums the taps weighted by ``weight``."""
    n_out, taps = index.shape
    gathered = jnp.take(x, index.reshape(-1), axis=axis, mode="clip")
    if taps == 1:
        return gathered
    gathered = jnp.reshape(gathered, x.shape[:axis] + (n_out, taps) + x.shape[axis + 1:])
    weight = jnp.asarray(weight, x.dtype).reshape((n_out, taps) + (1,) * (x.ndim - axis - 1))
    return jnp.sum(gathered * weight, axis=axis + 1)


def resize(x: Any, *, size: Any = None, scale_factor: Any = None, method: str = "nearest",
           align_corners: bool = False) -> Any:
    """Resizes the spatial axes of ``x`` like ``torch.nn.functional.interpolate``.

    Args:
      x: ``(N, *spatial, C)`` with 1, 2 or 3 spatial dimensions.
      size: the output spatial size: an int (every axis) or one int per axis.
      scale_factor: a positive number (every axis) or one per axis; the output
        size is ``floor(n * scale_factor)`` and, as in PyTorch (with
        ``recompute_scale_factor`` unset), the coordinate mapping uses
        ``1 / scale_factor`` rather than ``n / out``. Give exactly one of
        ``size`` and ``scale_factor``.
      method: ``"nearest"`` (PyTorch's legacy nearest, with its 2-D special
        cases described in this module's docstring), ``"nearest-exact"``,
        ``"linear"`` (any rank), ``"bilinear"`` (2-D only), ``"trilinear"``
        (3-D only) or ``"bicubic"`` (2-D only; ``A = -0.75``, border clamp).
      align_corners: for the linear and cubic methods, map the corner pixels'
        centres onto each other; must be False for the nearest methods.

    Returns:
      ``(N, *out_spatial, C)``. The nearest methods keep the dtype; the others
      compute in at least float32 and return floating inputs in their dtype.

    Raises:
      ValueError: bad arguments, an input rank other than 3 to 5, a method
        for another rank, or an output size below 1.
    """
    axes = _axis_sizes(jnp.shape(x), size, scale_factor, method, align_corners, "resize")
    x = jnp.asarray(x)
    out_dtype = x.dtype
    if method not in NEAREST_METHODS:
        compute = jnp.promote_types(x.dtype, jnp.float32)
        out_dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.inexact) else compute
        x = x.astype(compute)
    for axis, (n_in, n_out, factor) in enumerate(axes, start=1):
        index, weight = axis_taps(n_in, n_out, factor, method, align_corners, len(axes))
        if not np.array_equal(index, np.arange(n_in)[:, None]):  # skip an unchanged axis
            x = _resample_axis(x, axis, index, weight)
    return x.astype(out_dtype)


def pixel_shuffle_output_shape(input_shape: Sequence[int], r: int, *,
                               context: str = "pixel_shuffle") -> tuple[int, ...]:
    """``(N, *spatial, C * r**nd) -> (N, *(r * spatial), C)``; validates ``r`` and the shape."""
    r = integer(r, "r", context=context, minimum=1)
    shape = tuple(input_shape)
    nd = check_spatial_rank(shape, context)
    if shape[-1] % r**nd:
        raise ValueError(
            f"{context}: expected input (N, *spatial, C * r**{nd}) with a channel count divisible "
            f"by r**{nd} = {r**nd} (r={r}), got shape {shape}")
    return (shape[0], *(n * r for n in shape[1:-1]), shape[-1] // r**nd)


def pixel_unshuffle_output_shape(input_shape: Sequence[int], r: int, *,
                                 context: str = "pixel_unshuffle") -> tuple[int, ...]:
    """``(N, *(r * spatial), C) -> (N, *spatial, C * r**nd)``; validates ``r`` and the shape."""
    r = integer(r, "r", context=context, minimum=1)
    shape = tuple(input_shape)
    nd = check_spatial_rank(shape, context)
    if any(n % r for n in shape[1:-1]):
        raise ValueError(
            f"{context}: expected input (N, *spatial, C) with every spatial size divisible by "
            f"r={r}, got shape {shape}")
    return (shape[0], *(n // r for n in shape[1:-1]), shape[-1] * r**nd)


def pixel_shuffle(x: Any, r: int) -> Any:
    """Moves channel blocks to space, like ``torch.nn.functional.pixel_shuffle``, channels-last.

    Output pixel ``(h * r + i, w * r + j)``, channel ``c`` is input pixel
    ``(h, w)``, channel ``c * r**2 + i * r + j`` (PyTorch's order, so that a
    ported model gives the same result). 1-D and 3-D inputs follow the same
    row-major rule over the sub-position ``(i, ...)``.

    Args:
      x: ``(N, *spatial, C * r**nd)`` with ``nd`` in 1..3.
      r: the upscale factor, an int >= 1.

    Returns:
      ``(N, *(r * spatial), C)``.
    """
    out_shape = pixel_shuffle_output_shape(jnp.shape(x), r)
    n, *spatial, _ = jnp.shape(x)
    nd = len(spatial)
    y = jnp.reshape(x, (n, *spatial, out_shape[-1]) + (r,) * nd)
    # (N, S1, .., C, r1, ..) -> (N, S1, r1, S2, r2, .., C)
    order = [0] + [a for d in range(nd) for a in (1 + d, 2 + nd + d)] + [1 + nd]
    return jnp.reshape(jnp.transpose(y, order), out_shape)


def pixel_unshuffle(x: Any, r: int) -> Any:
    """The inverse of ``pixel_shuffle``, like ``torch.nn.functional.pixel_unshuffle``, channels-last.

    Args:
      x: ``(N, *spatial, C)`` with ``nd`` in 1..3 spatial sizes divisible by ``r``.
      r: the downscale factor, an int >= 1.

    Returns:
      ``(N, *(spatial / r), C * r**nd)``; input pixel ``(h * r + i, w * r + j)``,
      channel ``c`` goes to channel ``c * r**2 + i * r + j``.
    """
    out_shape = pixel_unshuffle_output_shape(jnp.shape(x), r)
    n, *spatial, c = jnp.shape(x)
    nd = len(spatial)
    y = jnp.reshape(x, (n, *(a for s in spatial for a in (s // r, r)), c))
    # (N, S1, r1, S2, r2, .., C) -> (N, S1, .., C, r1, ..)
    order = [0] + [1 + 2 * d for d in range(nd)] + [1 + 2 * nd] + [2 + 2 * d for d in range(nd)]
    return jnp.reshape(jnp.transpose(y, order), out_shape)
