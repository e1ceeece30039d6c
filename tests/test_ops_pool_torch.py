"""Pooling ops against PyTorch in float64: values, indices and gradients, every mode, 1-D to 3-D.

Gradients are vector-Jacobian products with a random cotangent, ``jax.vjp``
against torch autograd. Inputs are small random integers, so most windows
hold tied maxima and the gradient's routing (one element per window: the
first maximum in row-major order, the last NaN) is tested, not just its sum.

Tolerances: max/min values, indices and unpooled values are exact (they are
input elements); max/min gradients are sums of cotangent entries, compared
to 1e-12; averages to rtol 1e-12 (the sum order differs).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv import ops
from jaxconv.ops.pool import max_unpool
from tests.torch_ref import import_torch

TOL = dict(rtol=1e-12, atol=1e-12)


def ties(shape, seed):
    """Random integers in [-3, 3) as float64: most windows have tied maxima and minima."""
    return np.random.default_rng(seed).integers(-3, 3, size=shape).astype(np.float64)


def to_torch(x):
    """Channels-last ``(N, *spatial, C)`` -> a float64 tensor ``(N, C, *spatial)``."""
    torch = import_torch()
    return torch.tensor(np.moveaxis(np.asarray(x), -1, 1))


def from_torch(t):
    return np.moveaxis(t.detach().numpy(), 1, -1)


def jax_run(fns, x, cotangents):
    """For each ``fn`` (returning ``(y, aux)``): ``y``, ``aux`` and the VJP with its cotangent."""

    @jax.jit
    def run(x, cotangents):
        out = []
        for fn, ct in zip(fns, cotangents):
            y, pull, aux = jax.vjp(fn, x, has_aux=True)
            out.append((y, aux, pull(ct)[0]))
        return out

    with jax.enable_x64(True):
        result = run(jnp.asarray(x), [jnp.asarray(c) for c in cotangents])
        return jax.tree_util.tree_map(np.asarray, result)


def torch_run(fn, x, cotangent):
    """As ``jax_run`` for one torch ``fn`` (channels-first tensors, returning ``(y, aux)``)."""
    xt = to_torch(x).requires_grad_(True)
    y, aux = fn(xt)
    y.backward(to_torch(cotangent))
    aux = None if aux is None else from_torch(aux)
    return from_torch(y), aux, from_torch(xt.grad)


def cotangent_like(y, seed):
    return np.random.default_rng(seed).standard_normal(np.shape(y))


def check_against_torch(jax_fns, torch_fns, x):
    """Runs matching JAX and torch ``(y, aux)`` functions on ``x``; compares y, aux and grads."""
    with jax.enable_x64(True):
        shapes = [jax.eval_shape(lambda v, f=f: f(v)[0], jnp.asarray(x)).shape for f in jax_fns]
    cts = [cotangent_like(np.zeros(s), 100 + i) for i, s in enumerate(shapes)]
    got = jax_run(jax_fns, x, cts)
    worst = 0.0
    for (y, aux, g), fn, ct in zip(got, torch_fns, cts):
        y_t, aux_t, g_t = torch_run(fn, x, ct)
        np.testing.assert_allclose(y, y_t, **TOL)
        if aux_t is not None:
            np.testing.assert_array_equal(aux, aux_t)
        np.testing.assert_allclose(g, g_t, **TOL)
        worst = max(worst, max_abs_diff(y, y_t), max_abs_diff(g, g_t))
    return worst


def max_abs_diff(a, b):
    """The largest ``|a - b|`` where both are finite (0 if there is none)."""
    finite = np.isfinite(a) & np.isfinite(b)
    return float(np.max(np.abs(a[finite] - b[finite]), initial=0.0))


def torch_pool(name, nd):
    torch = import_torch()
    return getattr(torch.nn.functional, f"{name}{nd}d")


def test_size_rule_and_divisors_match_torch_exhaustively():
    # Every small 1-D configuration PyTorch accepts: our output length equals its, and
    # the average's divisor (count_include_pad, ceil mode) equals its. Where it accepts
    # a window that reads only padding (dilation; its value is -inf) we raise instead.
    import itertools

    from jaxconv.ops.pool import pool_geometry, pool_options
    torch = import_torch()
    F = torch.nn.functional
    checked = 0
    configs = itertools.product(range(1, 8), range(1, 5), range(1, 4), range(3), range(1, 4),
                                (False, True))
    for n, k, s, p, d, ceil in (c for c in configs if c[1] > 1 or c[4] == 1):
        try:
            y = F.max_pool2d(torch.ones(1, 1, 1, n), (1, k), (1, s), (0, p), (1, d), ceil)
        except RuntimeError:
            continue
        options = pool_options("max", k, s, p, dilation=d, ceil_mode=ceil)
        if torch.isinf(y).any():
            with pytest.raises(ValueError, match="some windows read only padding"):
                pool_geometry(options, (1, n, 1))
            continue
        (axis,), out_shape = pool_geometry(options, (1, n, 1))
        assert out_shape == (1, y.shape[-1], 1), (n, k, s, p, d, ceil)
        if d == 1:
            avg = F.avg_pool2d(torch.ones(1, 1, 1, n), (1, k), (1, s), (0, p), ceil,
                               divisor_override=1)  # the number of input elements in a window
            for include in (True, False):
                ref = avg / F.avg_pool2d(torch.ones(1, 1, 1, n), (1, k), (1, s), (0, p), ceil,
                                         include)
                np.testing.assert_allclose(axis.lengths(include), ref.numpy().ravel(), rtol=1e-12)
        checked += 1
    assert checked > 400


# (shape, window, stride, padding, dilation, ceil_mode): odd sizes, stride != window,
# dilation, ceil mode on and off (including a ceil window dropped for starting in the
# padding), windows that tile exactly, PyTorch-legal pads (at most half the window).
MAX_CASES = [
    ((2, 11, 3), 3, 2, 1, 1, True),
    ((2, 10, 2), 2, 3, 1, 2, True),
    ((1, 9, 2), 4, 1, 0, 2, False),
    ((2, 9, 7, 3), 3, 2, 1, 1, True),
    ((2, 8, 7, 2), (3, 2), (2, 3), (1, 1), (1, 2), True),
    ((2, 7, 9, 2), 2, None, 0, 1, True),
    ((2, 6, 8, 3), 2, None, 0, 1, False),
    ((1, 5, 5, 1), 2, 2, 1, 1, True),  # ceil mode's extra window would start in the padding
    ((1, 5, 7, 6, 2), 3, 2, 1, 1, True),
    ((1, 6, 5, 7, 2), (2, 3, 2), (2, 1, 3), (0, 1, 1), (2, 1, 1), False),
]


@pytest.mark.parametrize("shape,window,stride,padding,dilation,ceil_mode", MAX_CASES)
def test_max_and_min_pool(shape, window, stride, padding, dilation, ceil_mode):
    nd = len(shape) - 2
    x = ties(shape, seed=sum(shape))
    opts = dict(dilation=dilation, ceil_mode=ceil_mode)
    t_stride = window if stride is None else stride
    t_pool = torch_pool("max_pool", nd)

    def t_max(v, sign=1):
        y, i = t_pool(sign * v, window, t_stride, padding, dilation, ceil_mode, return_indices=True)
        return sign * y, i

    jax_fns = [
        lambda v: ops.max_pool(v, window, stride, padding, return_indices=True, **opts),
        lambda v: (ops.max_pool(v, window, stride, padding, **opts), None),
        lambda v: ops.min_pool(v, window, stride, padding, return_indices=True, **opts),
    ]  # min without indices: tests/test_ops_pool.py (its values and derivative are these picks)
    torch_fns = [t_max, lambda v: (t_max(v)[0], None), lambda v: t_max(v, -1)]
    assert check_against_torch(jax_fns, torch_fns, x) <= 1e-12


def avg_pool1d_with_divisor(v, window, stride, padding, ceil_mode, **kw):
    """PyTorch's avg_pool1d (an avg_pool2d of height 1), with avg_pool2d's divisor_override."""
    torch = import_torch()
    y = torch.nn.functional.avg_pool2d(v[:, :, None], (1, window), (1, stride), (0, padding),
                                       ceil_mode, **kw)
    return y[:, :, 0]


# (shape, window, stride, padding, ceil_mode)
AVG_CASES = [
    ((2, 11, 3), 3, 2, 1, True),
    ((2, 6, 2), 3, 2, 1, True),  # last window: one input element and one pad, past n + pad
    ((2, 9, 7, 3), 3, 2, 1, True),
    ((2, 8, 7, 2), (3, 2), (2, 3), (1, 1), True),
    ((2, 7, 9, 2), (2, 4), (3, 2), (1, 2), False),
    ((1, 5, 7, 6, 2), 3, 2, 1, True),
    ((1, 6, 5, 7, 2), (2, 3, 2), (2, 1, 3), (0, 1, 1), False),
]


@pytest.mark.parametrize("shape,window,stride,padding,ceil_mode", AVG_CASES)
def test_avg_pool(shape, window, stride, padding, ceil_mode):
    nd = len(shape) - 2
    x = ties(shape, seed=sum(shape)) + 0.25
    t_pool = torch_pool("avg_pool", nd) if nd > 1 else avg_pool1d_with_divisor
    variants = [dict(count_include_pad=True), dict(count_include_pad=False),
                dict(divisor_override=3), dict(count_include_pad=False, divisor_override=5)]
    jax_fns = [lambda v, kw=kw: (ops.avg_pool(v, window, stride, padding, ceil_mode=ceil_mode, **kw),
                                 None) for kw in variants]
    torch_fns = [lambda v, kw=kw: (t_pool(v, window, stride, padding, ceil_mode, **kw), None)
                 for kw in variants]
    assert check_against_torch(jax_fns, torch_fns, x) <= 1e-12


@pytest.mark.parametrize("shape,out", [
    ((2, 7, 3), 3), ((2, 7, 5, 2), (3, 2)), ((2, 5, 9, 2), (4, 5)), ((2, 6, 6, 2), 3),
    ((1, 3, 4, 2), (5, 7)), ((1, 5, 7, 6, 2), (2, 3, 4)),
])
def test_adaptive_pools(shape, out):
    nd = len(shape) - 2
    x = ties(shape, seed=sum(shape))
    t_max, t_avg = torch_pool("adaptive_max_pool", nd), torch_pool("adaptive_avg_pool", nd)
    jax_fns = [lambda v: ops.adaptive_max_pool(v, out, return_indices=True),
               lambda v: (ops.adaptive_max_pool(v, out), None),
               lambda v: (ops.adaptive_avg_pool(v, out), None)]
    torch_fns = [lambda v: t_max(v, out, return_indices=True),
                 lambda v: (t_max(v, out), None),
                 lambda v: (t_avg(v, out), None)]
    assert check_against_torch(jax_fns, torch_fns, x) <= 1e-12


@pytest.mark.parametrize("shape", [(2, 9, 3), (1, 3, 4, 5, 2)])  # 2-D: test_nan_and_infinities
def test_global_max_pool_is_adaptive_max_pool_to_one(shape):
    nd = len(shape) - 2
    x = ties(shape, seed=1)
    t_max = torch_pool("adaptive_max_pool", nd)
    jax_fns = [lambda v: (ops.global_max_pool(v, keepdims=True), None)]
    torch_fns = [lambda v: (t_max(v, 1), None)]
    assert check_against_torch(jax_fns, torch_fns, x) <= 1e-12


def test_nan_and_infinities():
    # PyTorch scans a window in row-major order and keeps the first maximum, except
    # that every NaN replaces the pick (so the last NaN wins); an all -inf window picks
    # its first input element. Padding never counts.
    x = ties((2, 6, 7, 3), seed=4)
    x[0, 0, :4, 0] = -np.inf
    x[0, 1, :4, 0] = -np.inf
    x[0, 2, 1, 1] = x[0, 3, 2, 1] = x[0, 3, 0, 1] = np.nan
    x[1, :, :, 2] = np.inf
    x[1, 4, 5, 2] = np.nan
    x[1, 0, 0, 0] = np.nan
    torch = import_torch()
    F = torch.nn.functional
    jax_fns = [lambda v: ops.max_pool(v, 3, 2, 1, ceil_mode=True, return_indices=True),
               lambda v: (ops.max_pool(v, 2), None),
               lambda v: ops.min_pool(v, 3, 2, 1, ceil_mode=True, return_indices=True),
               lambda v: ops.adaptive_max_pool(v, (4, 3), return_indices=True),
               lambda v: (ops.global_max_pool(v, keepdims=True), None)]
    torch_fns = [lambda v: F.max_pool2d(v, 3, 2, 1, ceil_mode=True, return_indices=True),
                 lambda v: (F.max_pool2d(v, 2), None),
                 lambda v: tuple(s * t for s, t in zip(
                     (-1, 1), F.max_pool2d(-v, 3, 2, 1, ceil_mode=True, return_indices=True))),
                 lambda v: F.adaptive_max_pool2d(v, (4, 3), return_indices=True),
                 lambda v: (F.adaptive_max_pool2d(v, 1), None)]
    check_against_torch(jax_fns, torch_fns, x)


# (pooled input shape, window, stride, padding, output_size): indices come from
# PyTorch's max pool of that input; overlapping windows make indices repeat.
UNPOOL_CASES = [
    ((2, 9, 3), 2, None, 0, None),
    ((2, 9, 3), 3, 2, 1, (9,)),
    ((2, 8, 6, 2), 2, None, 0, None),
    ((2, 7, 9, 2), 3, 2, 1, "shape"),  # the pooled input's (N, H, W, C)
    ((2, 7, 8, 2), (3, 2), (2, 3), (1, 0), (7, 8)),
    ((1, 5, 7, 6, 2), 2, None, 0, (5, 7, 6)),
]


@pytest.mark.parametrize("shape,window,stride,padding,output_size", UNPOOL_CASES)
def test_max_unpool(shape, window, stride, padding, output_size):
    nd = len(shape) - 2
    x = ties(shape, seed=2)
    t_stride = window if stride is None else stride
    values, indices = torch_pool("max_pool", nd)(to_torch(x), window, t_stride, padding,
                                                 return_indices=True)
    pooled, idx = from_torch(values), from_torch(indices)
    size = shape if output_size == "shape" else output_size
    t_size = None if size is None else tuple(size)[-nd - 1:-1] if len(size) == nd + 2 else size
    t_unpool = torch_pool("max_unpool", nd)
    jax_fns = [lambda v: (max_unpool(v, idx, window, stride, padding, size), None)]
    torch_fns = [lambda v: (t_unpool(v, indices, window, t_stride, padding, t_size), None)]
    check_against_torch(jax_fns, torch_fns, pooled)
    # Pooling with our indices and unpooling puts every maximum back in its place.
    with jax.enable_x64(True):
        ours = ops.max_pool(x, window, stride, padding, return_indices=True)
        np.testing.assert_array_equal(ours[1], idx)
        back = np.asarray(max_unpool(*ours, window, stride, padding, size))
    if size is not None:
        kept = back != 0
        np.testing.assert_array_equal(back[kept], x[kept])


def test_max_unpool_errors_and_dropped_indices():
    x, idx = np.ones((1, 2, 2, 1)), np.zeros((1, 2, 2, 1), np.int32)
    for call, words in [
        (lambda: max_unpool(x, idx, 2, output_size=(2, 5)),
         "max_unpool: output_size (2, 5) is out of range along spatial dimension 0: it must be > 2 "
         "and < 6"),
        (lambda: max_unpool(x, idx, 2, output_size=(4, 4, 4)),
         "output_size must be an int, 2 ints >= 1 or a shape (N, *spatial[2], C)"),
        (lambda: max_unpool(x, idx[:, :1], 2), "indices must have the shape of the values"),
        (lambda: max_unpool(x, idx, 2, padding="SAME"), "to undo 'SAME' padding give output_size"),
        (lambda: max_unpool(x, idx, 2, padding=2), "must be >= 0 and leave an output"),
        (lambda: max_unpool(x, idx, 0), "max_unpool: window must be an int or a sequence"),
    ]:
        with pytest.raises(ValueError) as err:
            call()
        assert words in str(err.value)
    with pytest.raises(TypeError, match="indices must be integers, got float"):
        max_unpool(x, x, 2)
    # Indices outside the plane are dropped (PyTorch raises); negative ones do not wrap.
    y = max_unpool(np.arange(1.0, 5.0).reshape(1, 4, 1), np.array([[[0], [-1], [99], [3]]]), 2)
    np.testing.assert_array_equal(np.asarray(y)[0, :, 0], [1, 0, 0, 4, 0, 0, 0, 0])
