"""The hand-rolled convolution: patch extraction (im2col) and one matmul per group.

(Depthwise convolutions: slices times per-channel weights, see "Depthwise form" below.)

No convolution primitive is used, and ``lax.conv_general_dilated_patches`` is
never called: patches are built from one ``lax.pad`` (zero padding, negative =
crop, and the input dilation of a transposed convolution, all in one op), one
strided ``lax.slice`` per kernel position and one ``concatenate`` along the
channel axis. The patch tensor has shape

    (N, *out_spatial, prod(kernel_size) * C)     (order: kernel position, channel)

so the contraction with the kernel reshaped to ``(prod(kernel_size) * C, F)``
is a plain 2-D matmul (``dot_general``; a batched one over the groups when
``groups > 1``).

Memory: the patch tensor holds ``N * prod(out_spatial) * prod(kernel_size) * C``
elements, i.e. ``prod(kernel_size) / prod(stride)`` times the input (9x for a
3x3 stride-1 convolution); the input gradient holds one more array of that
size (the output gradient in patch space). Where the backend sets a budget
(``jaxconv.ops.autotune.PATCH_CHUNK_BYTES``), a larger batch is processed in
chunks of images with ``lax.map``, each chunk rematerialised in the backward
pass, so only one chunk's patch tensor exists at a time: it stays in cache
between the patch build and the matmuls, and the memory is reused from chunk
to chunk instead of being allocated (and page-faulted in) afresh.

Differentiation (``jax.custom_jvp``, so forward and reverse mode both work, and
``vmap`` and ``jit`` compose): the tangent of ``y = P(x) @ W`` is

    dy = P(x) @ dW   +   P(dx) @ W

and JAX transposes each (linear) term for reverse mode:

- ``P(x) @ dW`` reuses the forward patches; its transpose is the weight
  gradient ``P(x)^T @ dy``, one matmul (per group) over the same patches.
- ``P(dx) @ W`` transposes into the input gradient: one matmul ``dy @ W^T``
  into patch space ``(N, *out, K * C)``, then col2im -- the transposes of the
  strided slices and of the concatenate are one ``pad`` per kernel position,
  summed in a single fused pass -- with no scatter and no second patch tensor.
  (The alternative, a scatter-form convolution whose transpose is a
  gather-form transposed convolution over a patch tensor of the output
  gradient, needs ``F / C`` times more patch memory; it measured slower, see
  ``benchmarks/RESULTS.md``.)

Second-order derivatives go through the same rules (the tangent map is plain
JAX), but are not tuned for speed.

Row-shift form. Where ``jaxconv.ops.autotune.PATCH_ROWS`` says so (deep enough
patches over the trailing axes, few wasted rows), a convolution with stride 1
along its first spatial axis builds patches over the trailing spatial axes
only, keeping every padded row ``h`` of the first axis:
``Q (N, Hp, *out[1:], prod(k[1:]) * C)``, a ``k[0]``-th of the full patch
tensor. One matmul with the kernel's rows side by side,
``(prod(k[1:]) * C, k[0] * F)``, gives ``Z``, whose column block ``i`` is row
``h`` times kernel row ``i``; output row ``h`` is the sum over ``i`` of block
``i`` of ``Z``'s row ``h + i * dilation`` -- in the flattened ``Z`` a shift by
whole rows, so the sum is ``k[0]`` contiguous slices added in one fused pass.
The matmul also runs over the ``(k[0] - 1) * dilation`` padded rows that start
no output row; the rule skips maps where that waste is large. Its gradients
are plain JAX autodiff of these slices, one matmul each and pads: no scatter,
no second patch tensor. Batch chunks are sized as for the full patch tensor.
Measurements of both forms: ``benchmarks/RESULTS.md`` (cpu, table rows).

Depthwise form. Where ``jaxconv.ops.autotune.PATCH_DEPTHWISE`` says so (on CPU:
depthwise convolutions, one input channel per group, any channel multiplier),
a grouped convolution builds no patch tensor and no matmul: with the padded
(and input-dilated) input ``xp`` viewed as ``(N, *spatial, groups, C // groups)``,

    y[..., g, j] = sum over kernel positions pos and group channels c of
                   xp[o * stride + pos * dilation, g, c] * w[pos, c, g, j]

``prod(kernel_size) * (C // groups)`` strided slices times per-channel weights,
added in one fused pass. It is a ``jax.custom_jvp`` whose tangent is plain JAX
(forward and reverse mode, ``vmap``, higher orders): the input gradient is the
output gradient times the weights, padded back per kernel position and summed
in one fused pass; the weight gradient per position is a sum of the input times
the output gradient padded to the input's frame (the tangent multiplies before
slicing, so its transpose reads the input in place). No scatter, gather or
convolution primitive; float16 and bfloat16 accumulate in float32. It holds
no patch tensor, so its batch is not chunked by default.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from jaxconv.ops.autotune import (
    depthwise_apply,
    depthwise_rule,
    patch_chunk_bytes,
    rows_apply,
    rows_rule,
)
from jaxconv.ops.spec import (
    ConvSpec,
    Padding,
    apply_padding_mode,
    check_spatial_rank,
    conv_options,
    resolve_conv,
    spec_output_sizes,
)
from jaxconv.validate import int_tuple, integer


def _offsets(window, rhs_dilation):
    """Start offsets of each kernel position, in row-major kernel order."""
    return list(itertools.product(*[[j * d for j in range(k)]
                                    for k, d in zip(window, rhs_dilation)]))


def _frame(x_shape, window, spec):
    """Pad config and output spatial sizes of ``spec`` on an input of ``x_shape``."""
    config = [(0, 0, 0)] + [(lo, hi, a - 1) for (lo, hi), a in
                            zip(spec.padding, spec.lhs_dilation)] + [(0, 0, 0)]
    return config, spec_output_sizes(x_shape[1:-1], window, spec)


def _window_slice(xp, start, out, strides):
    """The strided slice of ``xp`` that kernel position ``start`` sees."""
    n, c = xp.shape[0], xp.shape[-1]
    limit = [st + (o - 1) * s + 1 for st, o, s in zip(start, out, strides)]
    return lax.slice(xp, (0, *start, 0), (n, *limit, c), (1, *strides, 1))


def patches_general(x: Any, window: tuple[int, ...], spec: ConvSpec) -> Any:
    """Patch tensor ``(N, *out, K * C)`` of ``x`` for the convolution ``spec``.

    One ``pad`` (dilation + padding), ``K = prod(window)`` strided slices and one
    concatenate along the channel axis.
    """
    config, out = _frame(x.shape, window, spec)
    xp = lax.pad(x, jnp.zeros((), x.dtype), config)
    slices = [_window_slice(xp, start, out, spec.strides)
              for start in _offsets(window, spec.rhs_dilation)]
    return slices[0] if len(slices) == 1 else lax.concatenate(slices, x.ndim - 1)


def _contract(patches: Any, kernel: Any, groups: int, precision: Any) -> Any:
    """``(N, *out, K * C) x (*k, C // g, F) -> (N, *out, F)``: one matmul per group."""
    nd = kernel.ndim - 2
    k_total = math.prod(kernel.shape[:nd])
    cg, f = kernel.shape[-2:]
    if groups == 1:
        w = kernel.reshape(k_total * cg, f)
        return lax.dot_general(patches, w, (((patches.ndim - 1,), (0,)), ((), ())),
                               precision=precision)
    p = patches.reshape(*patches.shape[:-1], k_total, groups, cg)
    w = kernel.reshape(k_total, cg, groups, f // groups)
    y = jnp.einsum("...kgc,kcgf->...gf", p, w, precision=precision)
    return y.reshape(*y.shape[:-2], f)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _conv_general(x, kernel, spec):
    window = kernel.shape[:kernel.ndim - 2]
    return _contract(patches_general(x, window, spec), kernel, spec.groups, spec.precision)


def _conv_general_jvp(spec, primals, tangents):
    x, kernel = primals
    dx, dkernel = tangents
    window = kernel.shape[:kernel.ndim - 2]
    p = patches_general(x, window, spec)
    y = _contract(p, kernel, spec.groups, spec.precision)
    dy = None
    if not isinstance(dkernel, SymbolicZero):
        dy = _contract(p, dkernel, spec.groups, spec.precision)
    if not isinstance(dx, SymbolicZero):
        t = _contract(patches_general(dx, window, spec), kernel, spec.groups, spec.precision)
        dy = t if dy is None else dy + t
    if dy is None:
        dy = jnp.zeros_like(y)
    return y, dy


_conv_general.defjvp(_conv_general_jvp, symbolic_zeros=True)


def _accumulation_dtype(dtype):
    """``float32`` for floats narrower than it (bfloat16, float16), else ``dtype`` itself."""
    if jnp.issubdtype(dtype, jnp.floating) and jnp.dtype(dtype).itemsize < 4:
        return jnp.dtype(jnp.float32)
    return jnp.dtype(dtype)


def _conv_rows(x, kernel, spec):
    """The row-shift form: patches over the trailing spatial axes, one matmul, a shifted sum."""
    window = kernel.shape[:kernel.ndim - 2]
    kh, dh = window[0], spec.rhs_dilation[0]
    # Every padded row of the first spatial axis, windows over the others.
    q = patches_general(x, (1, *window[1:]), spec._replace(
        strides=(1, *spec.strides[1:]), rhs_dilation=(1, *spec.rhs_dilation[1:])))
    n, rows, depth, f = q.shape[0], q.shape[1], q.shape[-1], kernel.shape[-1]
    row = math.prod(q.shape[2:-1])
    # Column block i of z is input row h times kernel row i.
    w = kernel.reshape(kh, depth, f).transpose(1, 0, 2).reshape(depth, kh * f)
    acc = _accumulation_dtype(x.dtype)
    z = lax.dot_general(q.reshape(-1, depth), w, (((1,), (0,)), ((), ())),
                        precision=spec.precision,
                        preferred_element_type=None if acc == x.dtype else acc)
    # Output row h sums block i of input row h + i * dh: in the flattened z, a
    # shift of i * dh * row. The last (kh - 1) * dh rows of each image would
    # mix in the next image: they are computed, then cut off.
    shift = dh * row
    m = z.shape[0] - (kh - 1) * shift
    y = functools.reduce(lax.add, [lax.slice(z, (i * shift, i * f), (i * shift + m, (i + 1) * f))
                                   for i in range(kh)])
    y = jnp.pad(y, ((0, (kh - 1) * shift), (0, 0))).reshape(n, rows, *q.shape[2:-1], f)
    return lax.slice_in_dim(y, 0, rows - (kh - 1) * dh, axis=1).astype(x.dtype)


def _phase(xp, phase, strides):
    """The elements of ``xp`` at ``phase`` modulo ``strides`` along each spatial axis."""
    if all(s == 1 for s in strides):
        return xp
    return lax.slice(xp, (0, *phase, 0), xp.shape, (1, *strides, 1))


def _depthwise_sum(xp, w, window, out, spec, weights_first):
    """``sum_{pos, c}`` of the slices of ``xp`` that position ``pos`` sees, times ``w[pos, c]``.

    ``xp`` is the padded input ``(N, *spatial, groups * cg)``, ``w`` the kernel as
    ``(prod(window), cg, groups, F // groups)``; the term of channel ``c`` of each
    group multiplies ``xp[..., g, c]`` by ``w[pos, c, g, :]``. With strides, ``xp``
    is first split by position modulo the stride (one strided slice per phase the
    kernel positions use), and each position reads its phase at stride 1.
    ``weights_first`` multiplies before slicing (the same values: XLA computes only
    what the slice keeps), which makes JAX's transpose with respect to ``w`` a pad
    of the output gradient times the phase, summed: the phase is read in place
    rather than through a copy per position.
    """
    _, cg, groups, fg = w.shape
    ones, phases, terms = (1,) * len(window), {}, []
    for tap, start in enumerate(_offsets(window, spec.rhs_dilation)):
        phase = tuple(st % s for st, s in zip(start, spec.strides))
        if phase not in phases:
            view = _phase(xp, phase, spec.strides)
            phases[phase] = view.reshape(*view.shape[:-1], groups, cg)
        view, offset = phases[phase], tuple(st // s for st, s in zip(start, spec.strides))
        frame = view.shape[:-2]
        for c in range(cg):
            channel = lax.slice_in_dim(view, c, c + 1, axis=-1)
            if weights_first:
                term = _window_slice((channel * w[tap, c]).reshape(*frame, groups * fg), offset,
                                     out, ones)
            else:
                seen = _window_slice(channel.reshape(*frame, groups), offset, out, ones)
                term = (seen[..., None] * w[tap, c]).reshape(*seen.shape[:-1], groups * fg)
            terms.append(term)
    return functools.reduce(lax.add, terms)


def _depthwise_eval(x, kernel, spec, weights_first=False):
    """The depthwise form of ``spec`` on ``x``, accumulated in float32 for narrower floats."""
    nd = kernel.ndim - 2
    window, (cg, f) = kernel.shape[:nd], kernel.shape[-2:]
    acc = _accumulation_dtype(x.dtype)
    config, out = _frame(x.shape, window, spec)
    xp = lax.pad(x, jnp.zeros((), x.dtype), config).astype(acc)
    w = kernel.astype(acc).reshape(-1, cg, spec.groups, f // spec.groups)
    return _depthwise_sum(xp, w, window, out, spec, weights_first).astype(x.dtype)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _conv_depthwise(x, kernel, spec):
    """The depthwise form: per kernel position and input channel of a group, a slice times weights.

    ``y[..., g, j] = sum_{pos, c} xp[o * stride + pos * dilation, g, c] * w[pos, c, g, j]``
    over the padded (and input-dilated) ``xp`` viewed as ``(N, *spatial, groups, C // groups)``:
    ``prod(kernel_size) * (C // groups)`` broadcast multiply-adds that XLA fuses into one
    pass. ``spec.precision`` has nothing to act on (no contraction).
    """
    return _depthwise_eval(x, kernel, spec)


def _conv_depthwise_jvp(spec, primals, tangents):
    """``dy = D(x) dW + D(dx) W``, the first term written weights first (see ``_depthwise_sum``).

    Transposed by JAX: the input gradient is the output gradient times the
    weights, padded per position and summed in one fused pass; the weight
    gradient per position the padded output gradient times the input, summed.
    """
    x, kernel = primals
    dx, dkernel = tangents
    y = _depthwise_eval(x, kernel, spec)
    dy = []
    if not isinstance(dkernel, SymbolicZero):
        dy.append(_depthwise_eval(x, dkernel, spec, weights_first=True))
    if not isinstance(dx, SymbolicZero):
        dy.append(_depthwise_eval(dx, kernel, spec))
    return y, functools.reduce(lax.add, dy) if dy else jnp.zeros_like(y)


_conv_depthwise.defjvp(_conv_depthwise_jvp, symbolic_zeros=True)


#: The forms of the patches path, by the name ``patches_conv_general`` chooses.
FORMS = {"full": _conv_general, "rows": _conv_rows, "depthwise": _conv_depthwise}


def _conv_in_batch_chunks(x, kernel, spec, chunk, form):
    """The convolution in ``form`` (a key of ``FORMS``) over the batch, ``chunk`` images at a time.

    Each chunk is rematerialised in the backward pass (``jax.checkpoint``), so
    only one chunk's patch tensor is alive at a time, forward or backward:
    ``chunk / N`` of the whole tensor. The images left over when ``chunk``
    does not divide ``N`` form one last, smaller chunk; ``chunk=None``: the
    whole batch at once.
    """
    n, conv_form = x.shape[0], FORMS[form]
    if chunk is None or chunk >= n:
        return conv_form(x, kernel, spec)
    body = jax.checkpoint(lambda xc: conv_form(xc, kernel, spec),
                          policy=jax.checkpoint_policies.nothing_saveable)
    full = n - n % chunk
    y = lax.map(body, x[:full].reshape(full // chunk, chunk, *x.shape[1:]))
    y = y.reshape(full, *y.shape[2:])
    if full < n:
        y = lax.concatenate([y, body(x[full:])], 0)
    return y


# One compiled computation per shape when called eagerly (instead of one per pad/slice);
# inlined as a sub-computation under an outer jit.
_conv_in_batch_chunks_jit = jax.jit(_conv_in_batch_chunks, static_argnums=(2, 3, 4))


def batch_chunk_size(x_shape: tuple[int, ...], kernel_shape: tuple[int, ...], spec: ConvSpec,
                     itemsize: int, chunk_bytes: int | None) -> int | None:
    """Images per chunk so that a chunk's patch tensor holds at most ``chunk_bytes``.

    At least one image; ``None`` (the whole batch at once) when ``chunk_bytes``
    is ``None`` or the batch size is symbolic (``jax.export`` with a dynamic
    batch). A divisor of the batch size is preferred (no leftover chunk, whose
    slicing and concatenation cost copies) when one is at least half the
    largest size allowed.
    """
    n = x_shape[0]
    if chunk_bytes is None or not isinstance(n, int):
        return None
    window = kernel_shape[:len(kernel_shape) - 2]
    _, out = _frame(x_shape, window, spec)
    per_image = math.prod(out) * math.prod(window) * x_shape[-1] * itemsize
    largest = max(1, min(n, chunk_bytes // max(per_image, 1)))
    divisor = max(d for d in range(1, largest + 1) if n % d == 0)
    return divisor if 2 * divisor >= largest else largest


def patches_conv_general(x: Any, kernel: Any, spec: ConvSpec, *,
                         batch_chunk: int | None = None) -> Any:
    """Evaluates a ``ConvSpec`` with patches + matmul (differentiable in both modes).

    The full patch tensor, or the row-shift or the depthwise form where the
    backend's rules take them (:func:`patches_form`): see the module docstring.

    Args:
      x: ``(N, *spatial, C)``.
      kernel: ``(*kernel_size, C // groups, F)``.
      spec: the resolved convolution (``jaxconv.ops.spec.ConvSpec``); shapes
        are assumed already validated (``jaxconv.ops.spec.resolve_conv``).
      batch_chunk: images per chunk (see ``_conv_in_batch_chunks``). By default
        chunks are sized so that one chunk's patch tensor holds at most
        ``jaxconv.ops.autotune.patch_chunk_bytes()`` (the whole batch where
        the backend sets no budget, or in the depthwise form, which builds no
        patch tensor).

    Returns:
      ``(N, *out_spatial, F)``.
    """
    x, spec = apply_padding_mode(x, spec._replace(
        strides=tuple(spec.strides), padding=tuple(map(tuple, spec.padding)),
        lhs_dilation=tuple(spec.lhs_dilation), rhs_dilation=tuple(spec.rhs_dilation)))
    form = patches_form(x.shape, kernel.shape, spec)
    if batch_chunk is not None:
        integer(batch_chunk, "batch_chunk", context="patches_conv_general", minimum=1)
    elif form == "depthwise":  # no patch tensor to bound
        batch_chunk = x.shape[0]
    else:
        batch_chunk = batch_chunk_size(x.shape, kernel.shape, spec,
                                       jnp.dtype(x.dtype).itemsize, patch_chunk_bytes())
    return _conv_in_batch_chunks_jit(x, kernel, spec, batch_chunk, form)


def patches_form(x_shape: tuple[int, ...], kernel_shape: tuple[int, ...], spec: ConvSpec) -> str:
    """The form ``impl="patches"`` takes for this convolution, under the backend's rules.

    ``"depthwise"`` where ``jaxconv.ops.autotune.depthwise_apply`` with
    ``depthwise_rule()`` takes it, else ``"rows"`` where ``rows_apply`` with
    ``rows_rule()`` does, else ``"full"`` (see the module docstring).
    """
    if depthwise_apply(kernel_shape, spec.groups, depthwise_rule()):
        return "depthwise"
    return "rows" if rows_apply(x_shape, kernel_shape, spec, rows_rule()) else "full"


def extract_patches(x: Any, kernel_size: Any, *, stride: Any = 1, padding: Padding = "VALID",
                    dilation: Any = 1) -> Any:
    """Patches of every window of ``x``, flattened in (kernel position, channel) order.

    Args:
      x: ``(N, *spatial, C)`` with 1 to 3 spatial dimensions.
      kernel_size, stride, dilation: int or one int per spatial dimension.
      padding: as in ``jaxconv.ops.conv`` (zero padding; negative = crop).

    Returns:
      ``(N, *out_spatial, prod(kernel_size) * C)``, with ``out_spatial`` as for
      ``conv``; ``patches[n, *o, (j * C) + c] = x_padded[n, *(o * stride + pos_j *
      dilation), c]`` where ``pos_j`` is the ``j``-th kernel position in
      row-major order. ``conv(x, w) == patches @ w.reshape(-1, F)``.
      Memory: ``prod(kernel_size) / prod(stride)`` times the size of ``x``.
    """
    x = jnp.asarray(x)
    nd = check_spatial_rank(x.shape, "extract_patches")
    window = int_tuple(kernel_size, "kernel_size", context="extract_patches", length=nd, minimum=1)
    options = conv_options("conv", "extract_patches", stride=stride, padding=padding,
                           dilation=dilation)
    spec, _ = resolve_conv(options, x.shape, (*window, x.shape[-1], 1))
    return patches_general(x, window, spec)
