"""A Pallas convolution kernel: implicit GEMM, one output tile per program instance.

``impl="pallas"`` evaluates a ``ConvSpec`` with hand-written kernels instead of
``lax.conv_general_dilated`` or a patch tensor in memory. It is never chosen
by ``impl="auto"``. On GPU it compiles with Triton; on any other backend it
runs in Pallas's interpret mode (slow: for checking the kernel on CPU, not for
speed). The GPU compilation is not yet tested (see ``benchmarks/gpu.py``,
section ``pallas``, and ``benchmarks/RESULTS.md``).

Layout. The input is padded once (``lax.pad``: zero padding, crops, the input
dilation of a transposed convolution) and split into ``prod(stride)`` phases
(``xp[:, a::s_h, b::s_w]``), each with its spatial axes flattened:
``(N, phases, L, C)``. Kernel tap ``j`` (offset ``j * dilation``) then reads,
for output pixel ``o``, element ``o + (j * dilation) // stride`` of phase
``(j * dilation) % stride``: with every output row as wide as a phase row, a
tap is one contiguous run of flattened rows at a fixed offset. The output is
computed in that flattened frame, ``(N, M, F)`` with ``M = out_h * phase_w``
(for 2-D), and the columns past the real output width are cut off afterwards.

Forward kernel. Grid ``(N, M / block_m, F / block_f)``: each program instance
computes one output tile, ``block_m`` output pixels by ``block_f`` output
channels. For every kernel tap and every block of ``block_k`` input channels
it loads the tile's ``(block_m, block_k)`` patch slice from the image's padded
input and the ``(block_k, block_f)`` kernel slice, and accumulates their
product in float32 (float64 for float64 inputs); bf16 inputs are multiplied
with float32 accumulation. The result is cast to the input dtype.

Gradients (``jax.custom_vjp``; reverse mode only, ``jax.jvp`` is not
supported):

- input gradient: the transposed convolution, itself a convolution of the
  output gradient dilated by the stride with the flipped, channel-swapped
  kernel (window stride = the forward's input dilation), evaluated by the
  same forward kernel;
- weight gradient: a second kernel, grid ``(image groups, taps, C / block_k,
  F / block_f)``, each instance summing ``patches^T @ dy`` over one group of
  images and every output tile for one tap and one ``(block_k, block_f)``
  block of the kernel, with the same phase layout and offsets as the
  forward; the groups' partial sums (float32) are added afterwards.

Limits: one feature group (``groups > 1`` is evaluated by the patches path,
``jaxconv.ops.patches``). Channel counts are zero-padded to a multiple of the
channel block (at least 16: Triton's ``dot`` needs it), so few-channel layers
waste work; the input gradient multiplies the zeros of the dilated output
gradient of a strided convolution. Block sizes are powers of two, as Triton
requires for loaded tiles.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from jaxconv.ops.patches import patches_conv_general
from jaxconv.ops.spec import ConvSpec, apply_padding_mode, spec_output_sizes
from jaxconv.validate import boolean

__all__ = ["pallas_conv_general", "Blocks", "BLOCKS", "MAX_IMAGE_GROUPS", "PARTIAL_SUM_BYTES",
           "image_groups"]


class Blocks(NamedTuple):
    """Largest tile sizes of the kernels (powers of two, at least 16).

    Attributes:
      m: output pixels per tile.
      f: output channels per tile.
      k: input channels contracted per step.
    """

    m: int = 64
    f: int = 64
    k: int = 32


#: The tile sizes used; each is lowered to the problem's size (a power of two >= 16).
BLOCKS = Blocks()

_MIN_BLOCK = 16

# On GPU the kernels are compiled with Triton: Mosaic GPU (pallas_call's other GPU backend)
# does not lower their dot_general. Elsewhere the parameters are unused (interpret mode).
_TRITON = pltriton.CompilerParams(num_warps=4, num_stages=2)


def _block(size: int, largest: int) -> int:
    """The power of two, between 16 and ``largest``, closest above ``size``."""
    return max(_MIN_BLOCK, min(largest, pl.next_power_of_2(size)))


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


class Layout(NamedTuple):
    """The flattened phase frame of one convolution (all static).

    Attributes:
      window, dilation: the kernel's spatial size and dilation.
      strides: the window strides (the number of phases per axis).
      phase_sizes: spatial sizes of one phase, ``ceil(padded / stride)``.
      out_sizes: the output's spatial sizes.
      taps: per kernel position (row-major), ``(phase index, flat offset)``.
      rows: flattened output rows computed per image, ``M`` rounded up to ``block_m``.
      length: flattened rows of a phase, enough for every tap of every tile.
      block_m, block_k, block_f: tile sizes; ``channels`` and ``features``
        the padded channel counts (multiples of ``block_k`` and ``block_f``).
    """

    window: tuple[int, ...]
    dilation: tuple[int, ...]
    strides: tuple[int, ...]
    phase_sizes: tuple[int, ...]
    out_sizes: tuple[int, ...]
    taps: tuple[tuple[int, int], ...]
    rows: int
    length: int
    block_m: int
    block_k: int
    block_f: int
    channels: int
    features: int


def _row_strides(sizes) -> tuple[int, ...]:
    """Row-major strides of a flattened array of spatial ``sizes``."""
    return tuple(math.prod(sizes[d + 1:]) for d in range(len(sizes)))


def tap_position(pos, dilation, strides, phase_sizes):
    """``(phase index, flat offset)`` of the kernel position ``pos`` (ints, or traced ints)."""
    shifts = [j * d for j, d in zip(pos, dilation)]
    phase = sum((t % s) * ps for t, s, ps in zip(shifts, strides, _row_strides(strides)))
    offset = sum((t // s) * st for t, s, st in zip(shifts, strides, _row_strides(phase_sizes)))
    return phase, offset


def make_layout(padded_sizes, window, channels: int, features: int, spec: ConvSpec,
                blocks: Blocks | None = None) -> Layout:
    """The :class:`Layout` of ``spec`` on an input already padded to ``padded_sizes``.

    ``blocks``: the largest tile sizes (default :data:`BLOCKS`, read at each call).
    """
    blocks = blocks or BLOCKS
    strides = tuple(spec.strides)
    phase_sizes = tuple(-(-n // s) for n, s in zip(padded_sizes, strides))
    zero = ConvSpec(strides, ((0, 0),) * len(window), (1,) * len(window), spec.rhs_dilation, 1)
    out_sizes = tuple(spec_output_sizes(padded_sizes, window, zero))
    dilation = tuple(spec.rhs_dilation)
    taps = tuple(tap_position(pos, dilation, strides, phase_sizes)
                 for pos in itertools.product(*[range(k) for k in window]))
    flat = out_sizes[0] * math.prod(phase_sizes[1:])
    block_m = _block(flat, blocks.m)
    rows = _round_up(flat, block_m)
    length = max(math.prod(phase_sizes), rows + max(off for _, off in taps))
    block_k, block_f = _block(channels, blocks.k), _block(features, blocks.f)
    return Layout(tuple(window), dilation, strides, phase_sizes, out_sizes, taps, rows, length, block_m,
                  block_k, block_f, _round_up(channels, block_k), _round_up(features, block_f))


def _pad_input(x, spec: ConvSpec):
    """``x`` zero-padded (negative = cropped) and dilated as ``spec`` says."""
    config = [(0, 0, 0)] + [(lo, hi, a - 1) for (lo, hi), a in
                            zip(spec.padding, spec.lhs_dilation)] + [(0, 0, 0)]
    return lax.pad(x, jnp.zeros((), x.dtype), config)


def _phases(xp, layout: Layout):
    """``(N, *padded, C)`` -> ``(N, prod(strides), length, channels)``, phase-major, flattened."""
    n, c, nd = xp.shape[0], xp.shape[-1], xp.ndim - 2
    full = [p * s for p, s in zip(layout.phase_sizes, layout.strides)]
    xp = jnp.pad(xp, [(0, 0)] + [(0, f - m) for f, m in zip(full, xp.shape[1:-1])]
                 + [(0, layout.channels - c)])
    split = [v for p, s in zip(layout.phase_sizes, layout.strides) for v in (p, s)]
    xp = xp.reshape(n, *split, layout.channels)
    order = (0, *range(2, 2 * nd + 1, 2), *range(1, 2 * nd, 2), 2 * nd + 1)
    xp = xp.transpose(order).reshape(n, math.prod(layout.strides), -1, layout.channels)
    return jnp.pad(xp, ((0, 0), (0, 0), (0, layout.length - xp.shape[2]), (0, 0)))


def _flat_output_grid(dy, layout: Layout):
    """``(N, *out, F)`` -> ``(N, rows, features)`` in the flattened frame, zeros elsewhere."""
    n, f = dy.shape[0], dy.shape[-1]
    widths = [(0, p - o) for p, o in zip(layout.phase_sizes[1:], layout.out_sizes[1:])]
    dy = jnp.pad(dy, [(0, 0), (0, 0)] + widths + [(0, layout.features - f)])
    dy = dy.reshape(n, -1, layout.features)
    return jnp.pad(dy, ((0, 0), (0, layout.rows - dy.shape[1]), (0, 0)))


def _unflatten_output(y, layout: Layout, features: int):
    """``(N, rows, features)`` -> ``(N, *out, F)``: the flattened frame's real outputs."""
    n, nd = y.shape[0], len(layout.out_sizes)
    flat = layout.out_sizes[0] * math.prod(layout.phase_sizes[1:])
    y = y[:, :flat].reshape(n, layout.out_sizes[0], *layout.phase_sizes[1:], layout.features)
    return lax.slice(y, (0,) * (nd + 2), (n, *layout.out_sizes, features))


def _accumulator_dtype(dtype) -> Any:
    """float32 for bf16/f16/f32 inputs, float64 for float64 ones."""
    return jnp.promote_types(dtype, jnp.float32)


def _kernel_taps(kernel, layout: Layout):
    """``(*k, C, F)`` -> ``(taps, channels, features)``, zero-padded."""
    c, f = kernel.shape[-2:]
    w = kernel.reshape(-1, c, f)
    return jnp.pad(w, ((0, 0), (0, layout.channels - c), (0, layout.features - f)))


def _prepare(x, window, features: int, spec: ConvSpec):
    """``x`` padded and split into flattened phases, with its :class:`Layout`."""
    xp = _pad_input(x, spec)
    layout = make_layout(xp.shape[1:-1], window, x.shape[-1], features, spec)
    return _phases(xp, layout), layout


def _dot(a, b, contract, precision, acc_dtype):
    """``a @ b`` (``contract``: the contracted axes) accumulated in ``acc_dtype``."""
    return lax.dot_general(a, b, (contract, ((), ())), precision=precision,
                           preferred_element_type=acc_dtype)


# --------------------------------------------------------------------------
# The forward kernel: one (block_m pixels x block_f channels) output tile per instance.


def _forward_kernel(x_ref, w_ref, o_ref, *, layout: Layout, precision, acc_dtype):
    """``o = sum over taps and channel blocks of x[tap rows, block] @ w[tap, block]``.

    ``x_ref`` ``(phases, length, channels)``: one image; ``w_ref``
    ``(taps, channels, block_f)``; ``o_ref`` ``(block_m, block_f)``.
    """
    bm, bk = layout.block_m, layout.block_k
    first = pl.program_id(1) * bm

    def channel_block(kc, acc):
        c0 = pl.multiple_of(kc * bk, bk)
        for t, (phase, offset) in enumerate(layout.taps):
            patch = x_ref[phase, pl.ds(first + offset, bm), pl.ds(c0, bk)]
            acc = acc + _dot(patch, w_ref[t, pl.ds(c0, bk), :], ((1,), (0,)), precision,
                             acc_dtype)
        return acc

    acc = lax.fori_loop(0, layout.channels // bk, channel_block,
                        jnp.zeros((bm, layout.block_f), acc_dtype))
    o_ref[...] = acc.astype(o_ref.dtype)


def _forward_call(xph, w_taps, layout: Layout, precision, interpret: bool):
    """``(N, phases, length, channels) x (taps, channels, features) -> (N, rows, features)``."""
    n = xph.shape[0]
    kernel = functools.partial(_forward_kernel, layout=layout, precision=precision,
                               acc_dtype=_accumulator_dtype(xph.dtype))
    return pl.pallas_call(
        kernel,
        grid=(n, layout.rows // layout.block_m, layout.features // layout.block_f),
        in_specs=[pl.BlockSpec((None, *xph.shape[1:]), lambda i, m, f: (i, 0, 0, 0)),
                  pl.BlockSpec((w_taps.shape[0], layout.channels, layout.block_f),
                               lambda i, m, f: (0, 0, f))],
        out_specs=pl.BlockSpec((None, layout.block_m, layout.block_f), lambda i, m, f: (i, m, f)),
        out_shape=jax.ShapeDtypeStruct((n, layout.rows, layout.features), xph.dtype),
        interpret=interpret,
        compiler_params=_TRITON,
    )(xph, w_taps)


def _evaluate(x, kernel, spec: ConvSpec, interpret: bool):
    """The convolution ``spec`` (zero padding, one group) with the forward kernel."""
    features = kernel.shape[-1]
    xph, layout = _prepare(x, kernel.shape[:-2], features, spec)
    y = _forward_call(xph, _kernel_taps(kernel.astype(x.dtype), layout), layout, spec.precision,
                      interpret)
    return _unflatten_output(y, layout, features)


# --------------------------------------------------------------------------
# The weight-gradient kernel: one (tap, block_k x block_f) block of dW per instance.


def _weight_grad_kernel(x_ref, dy_ref, o_ref, *, layout: Layout, precision, acc_dtype):
    """``dW[tap, block] = sum over images and tiles of x[tap rows, block]^T @ dy[tile]``.

    One group of images: ``x_ref`` ``(images, phases, length, block_k)``;
    ``dy_ref`` ``(images, rows, block_f)`` (zero outside the real outputs);
    ``o_ref`` ``(block_k, block_f)``, this group's partial sum.
    """
    bm = layout.block_m
    tap = pl.program_id(1)
    pos = [(tap // math.prod(layout.window[d + 1:])) % k for d, k in enumerate(layout.window)]
    phase, offset = tap_position(pos, layout.dilation, layout.strides, layout.phase_sizes)

    def image(i, acc):
        def tile(m, acc):
            first = pl.multiple_of(m * bm, bm)
            patch = x_ref[i, phase, pl.ds(first + offset, bm), :]
            return acc + _dot(patch, dy_ref[i, pl.ds(first, bm), :], ((0,), (0,)), precision,
                              acc_dtype)
        return lax.fori_loop(0, layout.rows // bm, tile, acc)

    acc = lax.fori_loop(0, x_ref.shape[0], image,
                        jnp.zeros((layout.block_k, layout.block_f), acc_dtype))
    o_ref[...] = acc.astype(o_ref.dtype)


#: The weight gradient is summed in at most this many groups of images (more
#: program instances in parallel), as long as their partial sums stay under
#: :data:`PARTIAL_SUM_BYTES`.
MAX_IMAGE_GROUPS = 64
PARTIAL_SUM_BYTES = 64 << 20


def image_groups(n: int, partial_bytes: int) -> int:
    """The largest divisor of ``n`` within :data:`MAX_IMAGE_GROUPS` and the partial-sum budget."""
    limit = max(1, min(MAX_IMAGE_GROUPS, PARTIAL_SUM_BYTES // max(partial_bytes, 1)))
    return max(g for g in range(1, min(n, limit) + 1) if n % g == 0)


def _weight_grad(x, dy, kernel_shape, spec: ConvSpec, interpret: bool):
    """``dW`` of the convolution ``spec`` (zero padding, one group), ``kernel_shape``.

    Grid ``(image groups, taps, C / block_k, F / block_f)``: each instance sums
    one group of images; the groups' partial sums are added afterwards.
    """
    c, f = kernel_shape[-2:]
    xph, layout = _prepare(x, kernel_shape[:-2], f, spec)
    dyf = _flat_output_grid(dy.astype(x.dtype), layout)
    acc_dtype = _accumulator_dtype(x.dtype)
    kernel = functools.partial(_weight_grad_kernel, layout=layout, precision=spec.precision,
                               acc_dtype=acc_dtype)
    n, phases, length = xph.shape[:3]
    taps, bk, bf = len(layout.taps), layout.block_k, layout.block_f
    shape = (taps, layout.channels, layout.features)
    groups = image_groups(n, math.prod(shape) * jnp.dtype(acc_dtype).itemsize)
    per = n // groups
    dw = pl.pallas_call(
        kernel,
        grid=(groups, taps, layout.channels // bk, layout.features // bf),
        in_specs=[pl.BlockSpec((per, phases, length, bk), lambda g, t, k, j: (g, 0, 0, k)),
                  pl.BlockSpec((per, layout.rows, bf), lambda g, t, k, j: (g, 0, j))],
        out_specs=pl.BlockSpec((None, None, bk, bf), lambda g, t, k, j: (g, t, k, j)),
        out_shape=jax.ShapeDtypeStruct((groups, *shape), acc_dtype),
        interpret=interpret,
        compiler_params=_TRITON,
    )(xph, dyf)
    return jnp.sum(dw, axis=0)[:, :c, :f].reshape(kernel_shape)


# --------------------------------------------------------------------------
# Differentiation and the entry point.


def _input_grad_spec(x_shape, kernel_shape, y_shape, spec: ConvSpec) -> ConvSpec:
    """The spec whose convolution of ``dy`` with the flipped, swapped kernel is ``dx``.

    Per axis (input ``n``, kernel ``k``, output ``o``, stride ``s``, padding
    ``(lo, hi)``, input dilation ``a``, kernel dilation ``d``): ``dy`` dilated
    by ``s``, padded by ``((k - 1) d - lo, (n - 1) a - (o - 1) s + lo)``, read
    with window stride ``a``, gives exactly ``n`` outputs.
    """
    pads = tuple(((k - 1) * d - lo, (n - 1) * a - (o - 1) * s + lo) for n, k, o, s, (lo, _), a, d
                 in zip(x_shape[1:-1], kernel_shape[:-2], y_shape[1:-1], spec.strides,
                        spec.padding, spec.lhs_dilation, spec.rhs_dilation))
    return spec._replace(strides=tuple(spec.lhs_dilation), padding=pads,
                         lhs_dilation=tuple(spec.strides))


def _flip_swap(kernel):
    """``(*k, C, F)`` -> spatially reversed ``(*k, F, C)`` (one group)."""
    return jnp.swapaxes(lax.rev(kernel, tuple(range(kernel.ndim - 2))), -1, -2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _pallas_conv(x, kernel, spec, interpret):
    return _evaluate(x, kernel, spec, interpret)


def _pallas_conv_fwd(x, kernel, spec, interpret):
    return _evaluate(x, kernel, spec, interpret), (x, kernel)


def _pallas_conv_bwd(spec, interpret, residuals, dy):
    x, kernel = residuals
    grad_spec = _input_grad_spec(x.shape, kernel.shape, dy.shape, spec)
    dx = _evaluate(dy, _flip_swap(kernel), grad_spec, interpret).astype(x.dtype)
    dw = _weight_grad(x, dy, kernel.shape, spec, interpret).astype(kernel.dtype)
    return dx, dw


_pallas_conv.defvjp(_pallas_conv_fwd, _pallas_conv_bwd)


def pallas_conv_general(x: Any, kernel: Any, spec: ConvSpec, *, interpret: bool | None = None) -> Any:
    """Evaluates a ``ConvSpec`` with the Pallas kernels (reverse-mode differentiable).

    Args:
      x: ``(N, *spatial, C)``, 1 to 3 spatial dimensions.
      kernel: ``(*kernel_size, C // groups, F)``, the dtype of ``x``.
      spec: the resolved convolution (``jaxconv.ops.spec.resolve_conv``);
        ``padding_mode`` is applied first (``jaxconv.ops.spec.pad_with_mode``).
        With ``spec.groups > 1`` the patches path
        (``jaxconv.ops.patches.patches_conv_general``) evaluates it instead.
      interpret: run the kernels in Pallas's interpret mode; default: on every
        backend but GPU.

    Returns:
      ``(N, *out_spatial, F)`` in the dtype of ``x`` (accumulated in float32,
      float64 for float64 inputs).

    Raises:
      ValueError: ``interpret`` is not a bool.
    """
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    boolean(interpret, "interpret", context="pallas_conv_general")
    if spec.groups != 1:
        return patches_conv_general(x, kernel, spec)
    x, spec = apply_padding_mode(x, spec._replace(
        strides=tuple(spec.strides), padding=tuple(map(tuple, spec.padding)),
        lhs_dilation=tuple(spec.lhs_dilation), rhs_dilation=tuple(spec.rhs_dilation)))
    return _pallas_conv(x, kernel, spec, interpret)
