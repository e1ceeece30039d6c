"""Pooling ops against float64 NumPy references (loops over output positions)."""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from jaxconv import ops
from jaxconv.ops.spec import padding_pairs
from tests.torch_ref import import_torch


def ref_pool(x, kind, window, stride, pads, count_include_pad=True):
    """Direct windowed pool in float64; ``pads`` are explicit (low, high) pairs."""
    x = np.asarray(x, np.float64)
    nd = x.ndim - 2
    fill = {"max": -np.inf, "min": np.inf, "avg": 0.0}[kind]
    width = [(0, 0)] + list(pads) + [(0, 0)]
    xp = np.pad(x, width, constant_values=fill)
    valid = np.pad(np.ones(x.shape[1:-1]), list(pads), constant_values=0)
    outs = [(xp.shape[1 + d] - window[d]) // stride[d] + 1 for d in range(nd)]
    y = np.zeros((x.shape[0], *outs, x.shape[-1]))
    for pos in itertools.product(*(range(o) for o in outs)):
        sl = tuple(slice(p * s, p * s + k) for p, s, k in zip(pos, stride, window))
        win = xp[(slice(None), *sl, slice(None))]
        axes = tuple(range(1, nd + 1))
        if kind == "max":
            v = win.max(axes)
        elif kind == "min":
            v = win.min(axes)
        else:
            count = math.prod(window) if count_include_pad else valid[sl].sum()
            v = win.sum(axes) / count
        y[(slice(None), *pos, slice(None))] = v
    return y


def ref_adaptive(x, out_sizes, kind):
    """Adaptive pool with PyTorch's bins, written with math.floor/ceil per output index."""
    x = np.asarray(x, np.float64)
    nd = x.ndim - 2
    y = np.zeros((x.shape[0], *out_sizes, x.shape[-1]))
    for pos in itertools.product(*(range(o) for o in out_sizes)):
        sl = []
        for i, o, n in zip(pos, out_sizes, x.shape[1:-1]):
            sl.append(slice(math.floor(i * n / o), math.ceil((i + 1) * n / o)))
        win = x[(slice(None), *sl, slice(None))]
        axes = tuple(range(1, nd + 1))
        y[(slice(None), *pos, slice(None))] = win.max(axes) if kind == "max" else win.mean(axes)
    return y


def rand(shape, seed=0):
    return np.random.RandomState(seed).randn(*shape).astype(np.float32)


OPS = {"max": ops.max_pool, "min": ops.min_pool}

# (input shape, window, stride, padding): 1-D, 2-D and 3-D; every padding spelling.
CASES = [
    ((2, 9, 3), 3, None, "VALID"),
    ((2, 9, 3), 3, 2, "SAME"),
    ((2, 10, 2), 4, 3, "SAME_LOWER"),
    ((2, 7, 6, 3), 2, None, "VALID"),
    ((2, 7, 6, 3), 3, 2, 1),
    ((2, 7, 6, 3), (3, 2), (2, 1), "SAME"),
    ((2, 7, 6, 3), (3, 3), 1, (1, 0)),
    ((2, 7, 6, 3), (3, 4), (2, 3), ((0, 2), (1, 3))),
    ((1, 5, 6, 4, 2), 2, None, "VALID"),
    ((1, 5, 6, 4, 2), 3, 2, "SAME"),
    ((1, 5, 6, 4, 2), (3, 2, 2), (1, 2, 2), ((1, 1), (0, 1), (1, 0))),
]


def explicit(shape, window, stride, padding):
    nd = len(shape) - 2
    w = (window,) * nd if isinstance(window, int) else window
    s = w if stride is None else ((stride,) * nd if isinstance(stride, int) else stride)
    return w, s, padding_pairs(padding, shape[1:-1], w, s, (1,) * nd)


@pytest.mark.parametrize("shape,window,stride,padding", CASES)
def test_windowed_pools_match_reference(shape, window, stride, padding):
    x = rand(shape)
    w, s, pads = explicit(shape, window, stride, padding)
    for kind, op in OPS.items():
        y = op(x, window, stride, padding)
        np.testing.assert_allclose(y, ref_pool(x, kind, w, s, pads), rtol=1e-6, atol=1e-6)
    for cip in (True, False):
        y = ops.avg_pool(x, window, stride, padding, count_include_pad=cip)
        np.testing.assert_allclose(y, ref_pool(x, "avg", w, s, pads, cip), rtol=1e-5,
                                   atol=1e-6)


def test_count_include_pad_differs_only_at_borders():
    x = np.ones((1, 4, 4, 1), np.float32)
    incl = np.asarray(ops.avg_pool(x, 3, 1, 1, count_include_pad=True))[0, ..., 0]
    excl = np.asarray(ops.avg_pool(x, 3, 1, 1, count_include_pad=False))[0, ..., 0]
    np.testing.assert_allclose(excl, np.ones((4, 4)))
    np.testing.assert_allclose(incl[0, 0], 4 / 9)
    np.testing.assert_allclose(incl[0, 1], 6 / 9)
    np.testing.assert_allclose(incl[1:3, 1:3], 1.0)


def test_stride_defaults_to_window():
    x = rand((1, 8, 8, 2))
    assert ops.max_pool(x, 2).shape == (1, 4, 4, 2)
    np.testing.assert_array_equal(ops.max_pool(x, 2), ops.max_pool(x, 2, 2))


@settings(max_examples=10, deadline=None)
@given(n=st.integers(3, 9), k=st.integers(1, 3), s=st.integers(1, 3),
       lo=st.integers(0, 2), hi=st.integers(0, 2), cip=st.booleans())
def test_random_1d_configurations(n, k, s, lo, hi, cip):
    lo, hi = min(lo, k - 1), min(hi, k - 1)
    x = rand((1, n, 2), seed=n)
    pads = ((lo, hi),)
    np.testing.assert_allclose(ops.max_pool(x, k, s, pads), ref_pool(x, "max", (k,), (s,), pads),
                               rtol=1e-6)
    np.testing.assert_allclose(ops.avg_pool(x, k, s, pads, cip),
                               ref_pool(x, "avg", (k,), (s,), pads, cip), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape,out", [
    ((2, 7, 3), 3), ((2, 10, 3), (4,)), ((2, 7, 5, 2), (3, 2)), ((2, 5, 9, 2), (4, 5)),
    ((2, 6, 6, 2), 3), ((1, 3, 4, 2), (5, 7)), ((1, 5, 7, 6, 2), (2, 3, 4)),
    ((1, 5, 7, 2), (None, 3)),
])
def test_adaptive_pools_match_bin_rule(shape, out):
    x = rand(shape, seed=3)
    nd = len(shape) - 2
    sizes = (out,) * nd if isinstance(out, int) else tuple(
        n if o is None else o for o, n in zip(out, shape[1:-1]))
    for kind, op in (("avg", ops.adaptive_avg_pool), ("max", ops.adaptive_max_pool)):
        y = op(x, out)
        assert y.shape == (shape[0], *sizes, shape[-1])
        np.testing.assert_allclose(y, ref_adaptive(x, sizes, kind), rtol=1e-5, atol=1e-6)


def test_global_pools():
    x = rand((2, 5, 3, 4, 3))
    np.testing.assert_allclose(ops.global_avg_pool(x), x.astype(np.float64).mean((1, 2, 3)),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ops.global_max_pool(x), x.max((1, 2, 3)))
    assert ops.global_avg_pool(x, keepdims=True).shape == (2, 1, 1, 1, 3)


def test_gradients():
    x = jnp.asarray(rand((1, 5, 6, 2)))
    check_grads(lambda v: ops.avg_pool(v, 3, 2, "SAME", count_include_pad=False), (x,),
                order=1, modes=["rev"], eps=1e-2, atol=1e-2, rtol=1e-2)
    check_grads(lambda v: ops.adaptive_avg_pool(v, (4, 4)), (x,), order=1, modes=["rev"],
                eps=1e-2, atol=1e-2, rtol=1e-2)
    # Max pooling routes the gradient to each window's (unique) maximum.
    g = jax.grad(lambda v: ops.max_pool(v, 2, 2, "VALID").sum())(x)
    y = np.asarray(x)[:, :4, :6]
    blocks = y.reshape(1, 2, 2, 3, 2, 2).transpose(0, 1, 3, 5, 2, 4).reshape(1, 2, 3, 2, 4)
    expected = np.zeros_like(np.asarray(x))
    for i, j, c in itertools.product(range(2), range(3), range(2)):
        a = int(np.argmax(blocks[0, i, j, c]))
        expected[0, 2 * i + a // 2, 2 * j + a % 2, c] = 1
    np.testing.assert_array_equal(g, expected)
    ga = jax.grad(lambda v: ops.adaptive_max_pool(v, (2, 3)).sum())(x)
    assert float(ga.sum()) == 2 * 3 * 2


def test_dtypes():
    x = jnp.asarray(rand((1, 6, 6, 2)), jnp.bfloat16)
    assert ops.avg_pool(x, 2).dtype == jnp.bfloat16
    assert ops.max_pool(x, 2, padding="SAME").dtype == jnp.bfloat16
    xi = jnp.arange(36).reshape(1, 6, 6, 1)
    np.testing.assert_array_equal(ops.max_pool(xi, 2, padding=1)[0, 0, :, 0], [0, 2, 4, 5])
    assert ops.avg_pool(xi, 2).dtype == jnp.float32


def test_torch_agrees():
    torch = import_torch()
    F = torch.nn.functional
    x = rand((2, 3, 7, 9), seed=5)  # NCHW
    xt, xj = torch.from_numpy(x), x.transpose(0, 2, 3, 1)
    to_nhwc = lambda t: t.numpy().transpose(0, 2, 3, 1)  # noqa: E731
    np.testing.assert_allclose(ops.max_pool(xj, 3, 2, 1), to_nhwc(F.max_pool2d(xt, 3, 2, 1)))
    for cip in (True, False):
        np.testing.assert_allclose(
            ops.avg_pool(xj, (3, 2), (2, 1), (1, 1), count_include_pad=cip),
            to_nhwc(F.avg_pool2d(xt, (3, 2), (2, 1), (1, 1), count_include_pad=cip)),
            rtol=1e-5, atol=1e-6)
    for out in ((3, 4), (5, 2)):
        np.testing.assert_allclose(ops.adaptive_avg_pool(xj, out),
                                   to_nhwc(F.adaptive_avg_pool2d(xt, out)), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ops.adaptive_max_pool(xj, out),
                                   to_nhwc(F.adaptive_max_pool2d(xt, out)))


@pytest.mark.parametrize("call,words", [
    (lambda: ops.max_pool(np.zeros((4, 4)), 2), "expected input of rank 3, 4 or 5"),
    (lambda: ops.avg_pool(np.zeros((1, 2, 3, 4, 5, 6)), 2), "got shape (1, 2, 3, 4, 5, 6)"),
    (lambda: ops.max_pool(np.zeros((1, 3, 3, 1)), 4), "larger than the padded input (3, 3)"),
    (lambda: ops.max_pool(np.zeros((1, 3, 3, 1)), 2, padding=2), "smaller than the window"),
    (lambda: ops.min_pool(np.zeros((1, 3, 3, 1)), (2, 2, 2)), "window must be an int or a sequence of 2"),
    (lambda: ops.max_pool(np.zeros((1, 3, 3, 1)), 2, 0),
     "max_pool: stride must be an int or a sequence of 2 ints >= 1, got 0"),
    (lambda: ops.avg_pool(np.zeros((1, 3, 3, 1)), 2, padding="FULL"), "unknown padding 'FULL'"),
    (lambda: ops.adaptive_avg_pool(np.zeros((1, 3, 3, 1)), 0), "must be positive"),
    (lambda: ops.adaptive_max_pool(np.zeros((1, 3, 3, 1)), (2, -1)), "got (2, -1)"),
    (lambda: ops.adaptive_max_pool(np.zeros((1, 3, 3, 1)), (2, 2, 2)), "sequence of 2 sizes"),
    (lambda: ops.global_avg_pool(np.zeros((3, 4))), "expected input of rank 3, 4 or 5"),
])
def test_bad_input(call, words):
    with pytest.raises(ValueError) as err:
        call()
    assert words in str(err.value)


def test_shared_bodies_reject_unknown_kind():
    from jaxconv.ops.pool import adaptive_pool, global_pool, window_pool
    x = np.zeros((1, 4, 4, 1))
    for call in (lambda: window_pool(x, "sum", 2), lambda: global_pool(x, "min"),
                 lambda: adaptive_pool(x, 2, "min")):
        with pytest.raises(ValueError, match="unknown kind"):
            call()


# --- The strided-slice ("tiled") path of max/min pooling against lax.reduce_window. ---

# (input shape, window, padding): stride == window and no padding, so the tiled path applies;
# sizes the window does not divide (VALID drops the remainder) and 1-D/2-D/3-D.
TILED_CASES = [
    ((2, 8, 3), 2, "VALID"),
    ((2, 9, 3), 3, 0),
    ((3, 8, 6, 4), 2, "VALID"),
    ((2, 7, 9, 3), (2, 3), "VALID"),
    ((2, 6, 6, 2), 3, "SAME"),  # SAME with sizes the window divides has no padding
    ((1, 4, 6, 5, 2), 2, ((0, 0), (0, 0), (0, 0))),
]


def tie_heavy(shape, seed):
    """Small integers, half of them clipped to 0 as after a ReLU: most windows have ties."""
    v = np.random.RandomState(seed).randint(-3, 3, size=shape).astype(np.float32)
    return np.maximum(v, 0.0)


def reduce_window_reference(kind, shape, window, padding):
    from jaxconv.ops.pool import _reduce_window_pool, pool_geometry
    w, s, pads, _ = pool_geometry(shape, window, None, padding)
    return lambda v: _reduce_window_pool(v, kind, w, s, pads)


@pytest.mark.parametrize("shape,window,padding", TILED_CASES)
def test_tiled_path_equals_reduce_window_values_and_derivatives(shape, window, padding):
    from jaxconv.ops.pool import pool_geometry, tiled_pool_applies
    w, s, pads, out_shape = pool_geometry(shape, window, None, padding)
    assert tiled_pool_applies(w, s, pads)
    for kind, op in OPS.items():
        fast = lambda v, op=op: op(v, window, None, padding)  # noqa: E731
        slow = reduce_window_reference(kind, shape, window, padding)

        def both(v, ct, t, f):
            y, vjp = jax.vjp(f, v)
            return y, vjp(ct)[0], jax.jvp(f, (v,), (t,))[1]

        run = jax.jit(both, static_argnums=3)
        for seed, x in enumerate((rand(shape, seed=1), tie_heavy(shape, 2), -tie_heavy(shape, 3))):
            ct = rand(out_shape, seed=10 + seed)
            t = rand(shape, seed=20 + seed)
            got, want = run(x, ct, t, fast), run(x, ct, t, slow)
            for a, b in zip(got, want):
                np.testing.assert_array_equal(a, b)
            w_shape, w_grad, _ = want
            assert w_shape.shape == out_shape and np.count_nonzero(w_grad) > 0


def test_tiled_path_ties_give_the_first_element_in_row_major_order():
    # Windows (2x2, one channel): [[1, 3], [3, 2]] has its max 3 at (0, 1) and (1, 0);
    # [[3, 0], [1, 3]] at (0, 0) and (1, 1). The first in row-major order gets the gradient.
    x = jnp.asarray([[1.0, 3, 3, 0], [3, 2, 1, 3]]).reshape(1, 2, 4, 1)
    g = jax.grad(lambda v: ops.max_pool(v, 2).sum())(x)[0, ..., 0]
    np.testing.assert_array_equal(g, [[0, 1, 1, 0], [0, 0, 0, 0]])
    g = jax.grad(lambda v: ops.min_pool(v, 2).sum())(-x)[0, ..., 0]
    np.testing.assert_array_equal(g, [[0, 1, 1, 0], [0, 0, 0, 0]])
    # All-equal windows (also all -inf): the window's first element.
    for fill in (0.0, -np.inf):
        g = jax.grad(lambda v: ops.max_pool(v, (2, 3)).sum())(jnp.full((1, 2, 3, 1), fill))
        np.testing.assert_array_equal(g[0, ..., 0], [[1, 0, 0], [0, 0, 0]])
    # NaNs: reduce_window's select keeps the current element only while "current >= next"
    # holds, so after a NaN the next element is selected; the tiled path does the same.
    x = jnp.asarray([[1.0, np.nan, np.nan, 1.0, 1.0, 2.0, np.nan, np.nan],
                     [3.0, 2.0, np.nan, 2.0, 3.0, np.nan, np.nan, np.nan]]).reshape(1, 2, 8, 1)
    for kind, op in OPS.items():
        slow = reduce_window_reference(kind, x.shape, 2, "VALID")
        np.testing.assert_array_equal(jax.grad(lambda v, op=op: op(v, 2).sum())(x),
                                      jax.grad(lambda v, slow=slow: slow(v).sum())(x))


def test_tiled_path_is_taken_for_2x2_and_not_otherwise():
    x = jnp.zeros((2, 8, 8, 3))

    def prims(f):  # the printed jaxpr of the gradient, nested jaxprs included
        return str(jax.make_jaxpr(jax.grad(lambda v: f(v).sum()))(x))

    for f in (lambda v: ops.max_pool(v, 2), lambda v: ops.min_pool(v, 2, 2, "VALID"),
              lambda v: ops.max_pool(v[:, :7], 2)):
        text = prims(f)
        for word in ("reduce_window", "select_and", "scatter", "gather"):
            assert word not in text, text
        assert " max " in text or " min " in text  # element-wise max/min of strided slices
    # Overlapping windows or padding keep lax.reduce_window.
    assert "reduce_window" in prims(lambda v: ops.max_pool(v, 3, 2))
    assert "reduce_window" in prims(lambda v: ops.max_pool(v, 2, padding=1))


def test_tiled_path_under_vmap_and_dtypes():
    xs = tie_heavy((3, 2, 6, 4, 2), 4)
    slow = reduce_window_reference("max", xs.shape[1:], 2, "VALID")
    fast_g = jax.vmap(jax.grad(lambda v: (ops.max_pool(v, 2) ** 2).sum()))(xs)
    slow_g = jax.vmap(jax.grad(lambda v: (slow(v) ** 2).sum()))(xs)
    np.testing.assert_array_equal(fast_g, slow_g)
    np.testing.assert_array_equal(jax.vmap(lambda v: ops.max_pool(v, 2))(xs), jax.vmap(slow)(xs))
    # Integer inputs keep their dtype; bfloat16 gradients route like float32 ones.
    xi = jnp.arange(48, dtype=jnp.int32).reshape(1, 6, 8, 1) % 7
    y = ops.max_pool(xi, 2)
    assert y.dtype == jnp.int32
    np.testing.assert_array_equal(y, reduce_window_reference("max", xi.shape, 2, "VALID")(xi))
    xb = jnp.asarray(xs[0], jnp.bfloat16)
    gb = jax.grad(lambda v: ops.max_pool(v, 2).astype(jnp.float32).sum())(xb)
    assert gb.dtype == jnp.bfloat16
    np.testing.assert_array_equal(gb.astype(jnp.float32),
                                  jax.grad(lambda v: slow(v).sum())(jnp.asarray(xs[0])))
