"""Float64 NumPy reference convolutions: direct loops over kernel positions and groups.

Written independently of jaxconv (its own padding rules, scatter form for the
transposed convolution) so that both implementations can be checked against
it. Shapes are channels-last as in jaxconv: ``x (N, *spatial, C)``, conv kernel
``(*k, C // groups, F)``, transposed-conv kernel ``(*k, F // groups, C)``.

Each op has a ``*_vjp`` giving the gradients of ``sum(ct * op(x, w))`` with
respect to ``x`` and ``w``, from the same loops.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

_NP_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


# --------------------------------------------------------------------------
# Padding specs -> (low, high) pairs.


def conv_pairs(padding, spatial, window, stride, dilation):
    """(low, high) per dimension, as ``conv`` interprets ``padding``."""
    nd = len(spatial)
    if isinstance(padding, str):
        if padding == "VALID":
            return [(0, 0)] * nd
        pairs = []
        for n, k, s, d in zip(spatial, window, stride, dilation):
            span = d * (k - 1) + 1
            total = max((math.ceil(n / s) - 1) * s + span - n, 0)
            lo = total // 2 if padding == "SAME" else total - total // 2
            pairs.append((lo, total - lo))
        return pairs
    if isinstance(padding, int):
        return [(padding, padding)] * nd
    return [(p, p) if isinstance(p, int) else tuple(p) for p in padding]


def transpose_layout(padding, spatial, window, stride, dilation, output_padding):
    """``(low, out_size)`` per dimension of ``conv_transpose``.

    The output position of input ``i`` and kernel tap ``j`` is
    ``i * stride + j * dilation - low``. For ``"SAME"`` the op is the adjoint of
    the ``"SAME"`` convolution of an input of ``n * stride`` elements.
    """
    out = []
    if isinstance(padding, str) and padding != "VALID":
        for n, k, s, d, op in zip(spatial, window, stride, dilation, output_padding):
            (lo, _), = conv_pairs(padding, [n * s], [k], [s], [d])
            out.append((lo, n * s + op))
        return out
    pairs = conv_pairs(padding, spatial, window, stride, dilation)
    for n, k, s, d, (lo, hi), op in zip(spatial, window, stride, dilation, pairs,
                                        output_padding):
        out.append((lo, (n - 1) * s - lo - hi + d * (k - 1) + 1 + op))
    return out


# --------------------------------------------------------------------------
# Padding as an index map (so its adjoint is an accumulation).


def _index_map(n, lo, hi, mode):
    """Source index of each padded position (``-1`` = zero), negative = crop."""
    idx = np.arange(n)
    if mode == "zeros":
        idx = np.concatenate([np.full(max(lo, 0), -1), idx, np.full(max(hi, 0), -1)])
    else:
        idx = np.pad(idx, (max(lo, 0), max(hi, 0)), mode=_NP_MODES[mode])
    start, stop = max(-lo, 0), len(idx) - max(-hi, 0)
    return idx[start:stop]


def _pad(x, pairs, mode):
    for axis, (lo, hi) in enumerate(pairs, start=1):
        idx = _index_map(x.shape[axis], lo, hi, mode)
        zero = np.zeros_like(np.take(x, [0], axis=axis))
        ext = np.concatenate([x, zero], axis=axis)
        x = np.take(ext, np.where(idx < 0, x.shape[axis], idx), axis=axis)
    return x


def _pad_adjoint(g, spatial, pairs, mode):
    for axis in reversed(range(1, len(spatial) + 1)):
        lo, hi = pairs[axis - 1]
        idx = _index_map(spatial[axis - 1], lo, hi, mode)
        shape = list(g.shape)
        shape[axis] = spatial[axis - 1] + 1
        acc = np.zeros(shape)
        moved = np.moveaxis(acc, axis, 0)
        np.add.at(moved, np.where(idx < 0, spatial[axis - 1], idx), np.moveaxis(g, axis, 0))
        g = np.take(acc, np.arange(spatial[axis - 1]), axis=axis)
    return g


def _taps(window, stride, dilation, out):
    """For each kernel position: its index and the strided window slices."""
    for j in itertools.product(*[range(k) for k in window]):
        sl = tuple(slice(jj * d, jj * d + (o - 1) * s + 1, s)
                   for jj, d, s, o in zip(j, dilation, stride, out))
        yield j, (slice(None), *sl)


# --------------------------------------------------------------------------
# conv


def conv(x, w, *, stride, pairs, dilation, groups, mode="zeros"):
    """``y[n, o, f] = sum_{j, c in group(f)} xp[n, o * stride + j * dilation, c] w[j, c, f]``."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    nd = x.ndim - 2
    window = w.shape[:nd]
    xp = _pad(x, pairs, mode)
    out = [(p - d * (k - 1) - 1) // s + 1 for p, k, s, d in
           zip(xp.shape[1:-1], window, stride, dilation)]
    cg, f = w.shape[-2:]
    fg = f // groups
    y = np.zeros((x.shape[0], *out, f))
    for j, sl in _taps(window, stride, dilation, out):
        patch = xp[sl]
        for g in range(groups):
            y[..., g * fg:(g + 1) * fg] += (patch[..., g * cg:(g + 1) * cg]
                                            @ w[j][:, g * fg:(g + 1) * fg])
    return y


def conv_vjp(x, w, ct, *, stride, pairs, dilation, groups, mode="zeros"):
    """Gradients ``(dx, dw)`` of ``sum(ct * conv(x, w))``."""
    x, w, ct = (np.asarray(a, np.float64) for a in (x, w, ct))
    nd = x.ndim - 2
    window = w.shape[:nd]
    xp = _pad(x, pairs, mode)
    out = ct.shape[1:-1]
    cg, f = w.shape[-2:]
    fg = f // groups
    gxp, gw = np.zeros_like(xp), np.zeros_like(w)
    for j, sl in _taps(window, stride, dilation, out):
        patch = xp[sl]
        for g in range(groups):
            c_blk, f_blk = slice(g * cg, (g + 1) * cg), slice(g * fg, (g + 1) * fg)
            ctg = ct[..., f_blk].reshape(-1, fg)
            gw[j][:, f_blk] += patch[..., c_blk].reshape(-1, cg).T @ ctg
            gxp[sl + (c_blk,)] += ct[..., f_blk] @ w[j][:, f_blk].T
    return _pad_adjoint(gxp, x.shape[1:-1], pairs, mode), gw


# --------------------------------------------------------------------------
# conv_transpose (scatter form)


def _transpose_frame(x_shape, window, stride, dilation):
    """Size of the full scatter frame: every position some input and tap reaches."""
    return [(n - 1) * s + d * (k - 1) + 1 for n, k, s, d in
            zip(x_shape[1:-1], window, stride, dilation)]


def _embed(full_arr, layout):
    """Output window ``[low, low + out)`` of the full scatter frame (zeros outside)."""
    y = full_arr
    for axis, (lo, size) in enumerate(layout, start=1):
        idx = np.arange(size) + lo
        valid = (idx >= 0) & (idx < y.shape[axis])
        ext = np.concatenate([y, np.zeros_like(np.take(y, [0], axis=axis))], axis=axis)
        y = np.take(ext, np.where(valid, idx, y.shape[axis]), axis=axis)
    return y


def _embed_adjoint(ct, full, layout):
    g = ct
    for axis in reversed(range(1, len(layout) + 1)):
        lo, size = layout[axis - 1]
        idx = np.arange(size) + lo
        valid = (idx >= 0) & (idx < full[axis - 1])
        shape = list(g.shape)
        shape[axis] = full[axis - 1]
        acc = np.zeros(shape)
        np.moveaxis(acc, axis, 0)[idx[valid]] = np.moveaxis(g, axis, 0)[valid]
        g = acc
    return g


def conv_transpose(x, w, *, stride, layout, dilation, groups):
    """Every ``x[i]`` adds ``x[i] w[j]^T`` at output ``i * stride + j * dilation - low``."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    nd = x.ndim - 2
    window = w.shape[:nd]
    fg, c = w.shape[-2:]
    cg = c // groups
    full = _transpose_frame(x.shape, window, stride, dilation)
    y = np.zeros((x.shape[0], *full, fg * groups))
    for j, sl in _taps(window, stride, dilation, x.shape[1:-1]):
        for g in range(groups):
            c_blk, f_blk = slice(g * cg, (g + 1) * cg), slice(g * fg, (g + 1) * fg)
            y[sl + (f_blk,)] += x[..., c_blk] @ w[j][:, c_blk].T
    return _embed(y, layout)


def conv_transpose_vjp(x, w, ct, *, stride, layout, dilation, groups):
    """Gradients ``(dx, dw)`` of ``sum(ct * conv_transpose(x, w))``."""
    x, w, ct = (np.asarray(a, np.float64) for a in (x, w, ct))
    nd = x.ndim - 2
    window = w.shape[:nd]
    fg, c = w.shape[-2:]
    cg = c // groups
    full = _transpose_frame(x.shape, window, stride, dilation)
    ct_full = _embed_adjoint(ct, full, layout)
    gx, gw = np.zeros_like(x), np.zeros_like(w)
    for j, sl in _taps(window, stride, dilation, x.shape[1:-1]):
        for g in range(groups):
            c_blk, f_blk = slice(g * cg, (g + 1) * cg), slice(g * fg, (g + 1) * fg)
            ctj = ct_full[sl + (f_blk,)]
            gx[..., c_blk] += ctj @ w[j][:, c_blk]
            gw[j][:, c_blk] += ctj.reshape(-1, fg).T @ x[..., c_blk].reshape(-1, cg)
    return gx, gw


# --------------------------------------------------------------------------
# Convenience: the oracle for a jaxconv.verify.Case.


def _per_dim(v, nd):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * nd


def run_case(case, x, w, ct):
    """``(y, dx, dw)`` of the oracle for a ``jaxconv.verify.Case``."""
    kw = case.kwargs
    nd = len(case.x_shape) - 2
    window = case.kernel_shape[:nd]
    stride, dilation = _per_dim(kw["stride"], nd), _per_dim(kw["dilation"], nd)
    if case.op == "conv":
        pairs = conv_pairs(kw["padding"], case.x_shape[1:-1], window, stride, dilation)
        args = dict(stride=stride, pairs=pairs, dilation=dilation, groups=kw["groups"],
                    mode=kw["padding_mode"])
        return (conv(x, w, **args), *conv_vjp(x, w, ct, **args))
    layout = transpose_layout(kw["padding"], case.x_shape[1:-1], window, stride, dilation,
                              _per_dim(kw["output_padding"], nd))
    args = dict(stride=stride, layout=layout, dilation=dilation, groups=kw["groups"])
    return (conv_transpose(x, w, **args), *conv_transpose_vjp(x, w, ct, **args))
