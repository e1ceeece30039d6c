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


@pytest.mark.parametrize("call,words", [
    (lambda: ops.max_pool(np.zeros((4, 4)), 2), "expected input of rank 3, 4 or 5"),
    (lambda: ops.avg_pool(np.zeros((1, 2, 3, 4, 5, 6)), 2), "got shape (1, 2, 3, 4, 5, 6)"),
    (lambda: ops.max_pool(np.zeros((1, 3, 3, 1)), 4), "larger than the padded input (3, 3)"),
    (lambda: ops.max_pool(np.zeros((1, 3, 3, 1)), 2, padding=2), "smaller than the window"),
    (lambda: ops.min_pool(np.zeros((1, 3, 3, 1)), (2, 2, 2)), "window must be an int or a sequence of 2"),
    (lambda: ops.max_pool(np.zeros((1, 3, 3, 1)), 2, 0),
     "max_pool: stride must be an int or a sequence of ints >= 1, got 0"),
    (lambda: ops.max_pool(np.zeros((1, 3, 3, 1)), 2, (1, 1, 1)),
     "max_pool: stride must be an int or a sequence of 2 ints >= 1, got (1, 1, 1)"),
    (lambda: ops.max_pool(np.zeros((1, 3, 3, 1)), 2, dilation=0),
     "max_pool: dilation must be an int or a sequence of ints >= 1, got 0"),
    (lambda: ops.max_pool(np.zeros((1, 9, 1)), 2, padding=3, dilation=2),
     "smaller than the window on each side (every window must overlap the input); got pads "
     "((3, 3),) for window (2,) (dilation (2,))"),
    # Dilation 3 steps over a 1-element input: the window (-2, 1) reads only padding.
    (lambda: ops.max_pool(np.zeros((1, 1, 1)), 2, 1, 2, dilation=3),
     "with dilation (3,) some windows read only padding"),
    (lambda: ops.max_pool(np.zeros((1, 3, 1)), 2, ceil_mode=1), "ceil_mode must be True or False"),
    (lambda: ops.min_pool(np.zeros((1, 3, 1)), 2, return_indices="yes"),
     "min_pool: return_indices must be True or False, got 'yes'"),
    (lambda: ops.avg_pool(np.zeros((1, 3, 1)), 2, divisor_override=0),
     "avg_pool: divisor_override must be an int >= 1, got 0"),
    (lambda: ops.avg_pool(np.zeros((1, 3, 1)), 2, divisor_override=1.5),
     "avg_pool: divisor_override must be an int >= 1, got 1.5"),
    (lambda: ops.adaptive_max_pool(np.zeros((1, 3, 1)), 2, return_indices=None),
     "adaptive_max_pool: return_indices must be True or False"),
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


def test_shared_bodies_reject_unknown_kind_and_misplaced_options():
    from jaxconv.ops.pool import adaptive_pool, global_pool, pool_options
    x = np.zeros((1, 4, 4, 1))
    for call in (lambda: pool_options("sum", 2), lambda: global_pool(x, "min"),
                 lambda: adaptive_pool(x, 2, "min")):
        with pytest.raises(ValueError, match="unknown kind"):
            call()
    for call, words in [
        (lambda: pool_options("avg", 2, dilation=2, context="AvgPool"),
         "AvgPool: dilation is not an option of avg pooling"),
        (lambda: pool_options("avg", 2, return_indices=True), "return_indices is not an option of avg"),
        (lambda: pool_options("max", 2, count_include_pad=False), "count_include_pad is not an option of max"),
        (lambda: pool_options("min", 2, divisor_override=2), "divisor_override is not an option of min"),
        (lambda: adaptive_pool(x, 2, "avg", return_indices=True), "return_indices is not an option"),
    ]:
        with pytest.raises(ValueError) as err:
            call()
        assert words in str(err.value)


# --- How max-type pools evaluate: values by element-wise max/min, derivatives by picks. ---


def tie_heavy(shape, seed):
    """Small integers, half of them clipped to 0 as after a ReLU: most windows have ties."""
    v = np.random.RandomState(seed).randint(-3, 3, size=shape).astype(np.float32)
    return np.maximum(v, 0.0)


# Each keeps a different path: tiling windows (a reshape), tiling with a remainder,
# overlapping padded windows, ceil mode with dilation, min, global (one window), even
# adaptive bins (slices). Shapes are shared so that the cases compile few programs.
EXTREME_POOLS = {
    "tiled": lambda v: ops.max_pool(v, 2),
    "tiled_remainder": lambda v: ops.max_pool(v[:, :7], 2),
    "overlapping": lambda v: ops.max_pool(v, 3, 2, 1),
    "ceil_dilated": lambda v: ops.max_pool(v, 2, (2, 3), 1, dilation=2, ceil_mode=True),
    "min": lambda v: ops.min_pool(v, (3, 2), 1, "SAME", ceil_mode=True),
    "global": ops.global_max_pool,
    "adaptive_even": lambda v: ops.adaptive_max_pool(v, (4, 2)),
}


@pytest.mark.parametrize("name", list(EXTREME_POOLS))
def test_gradient_has_no_scatter_gather_or_reduce_window(name):
    x = jnp.zeros((2, 8, 8, 3))
    text = str(jax.make_jaxpr(jax.grad(lambda v: EXTREME_POOLS[name](v).sum()))(x))
    for word in ("reduce_window", "select_and", "scatter", "gather"):
        assert word not in text, text


def test_fast_values_equal_picks_and_jvp_is_the_transpose_of_vjp():
    # Without derivatives, values come from element-wise max/min; under jvp and vjp,
    # from the picked elements: the two agree (NaN and infinities included). And
    # <jvp(t), ct> == <t, vjp(ct)>: the custom derivative and its transpose are one
    # linear map. A window's cotangent reaches one input element (ties included).
    x = tie_heavy((2, 8, 8, 3), 5)
    x[0, 1, 2, :] = [np.nan, -np.inf, np.inf]
    x[1, :4, :4, 0] = -np.inf
    x = jnp.asarray(x)
    fns = list(EXTREME_POOLS.values())

    @jax.jit
    def run(x, t, cts):
        out = []
        for f, ct in zip(fns, cts):
            y, pull = jax.vjp(f, x)
            y_jvp, dy = jax.jvp(f, (x,), (t,))
            out.append((f(x), y, y_jvp, dy, pull(ct)[0], pull(jnp.ones_like(ct))[0]))
        return out

    shapes = [jax.eval_shape(f, x).shape for f in fns]
    cts = [jnp.asarray(rand(shape, 7 + i)) for i, shape in enumerate(shapes)]
    t = jnp.asarray(rand(x.shape, 6))
    for name, ct, (y, y_vjp, y_jvp, dy, dx, ones) in zip(EXTREME_POOLS, cts, run(x, t, cts)):
        np.testing.assert_array_equal(y_vjp, y, err_msg=name)
        np.testing.assert_array_equal(y_jvp, y, err_msg=name)
        np.testing.assert_allclose(float(jnp.vdot(dy, ct)), float(jnp.vdot(t, dx)), rtol=1e-5,
                                   err_msg=name)
        assert float(ones.sum()) == y.size and np.count_nonzero(ones) <= y.size, name


def test_tiled_pick_routes_like_the_axis_by_axis_pick(monkeypatch):
    # Tiling windows take a one-pass pick (ops/pool.py, _tiled_pick); it routes every
    # derivative to the same element as the axis-by-axis pick it stands in for.
    from jaxconv.ops import pool

    cases = [(lambda v: ops.max_pool(v, 2), (2, 8, 6, 3)),
             (lambda v: ops.min_pool(v, (3, 2)), (2, 7, 6, 3)),
             (lambda v: ops.max_pool(v, 3), (2, 8, 3)),
             (lambda v: ops.max_pool(v, 2), (1, 4, 5, 4, 2)),
             (lambda v: ops.adaptive_max_pool(v, (2, 3)), (2, 8, 6, 3))]

    def derivatives(f, x, t):
        y, pull = jax.vjp(f, x)
        ct = jnp.asarray(rand(y.shape, 4))
        program = str(jax.make_jaxpr(pull)(ct))
        return program, jax.jvp(f, (x,), (t,))[1], pull(ct)[0]

    for f, shape in cases:
        x = tie_heavy(shape, sum(shape))
        x.flat[::17] = np.nan
        x, t = jnp.asarray(x), jnp.asarray(rand(shape, 3))
        tiled = derivatives(f, x, t)
        with monkeypatch.context() as m:
            m.setattr(pool, "MAX_TILE_ELEMENTS", 0)
            jax.clear_caches()
            by_axis = derivatives(f, x, t)
        jax.clear_caches()
        assert tiled[0] != by_axis[0], shape  # the two paths were both taken
        for a, b in zip(tiled[1:], by_axis[1:]):
            np.testing.assert_array_equal(a, b)


def test_integer_and_bfloat16_inputs():
    xi = jnp.arange(48, dtype=jnp.int32).reshape(1, 6, 8, 1) % 7
    for y in (ops.max_pool(xi, 2), ops.max_pool(xi, 3, 2, 1, ceil_mode=True),
              ops.min_pool(xi, 3, 2, 1)):
        assert y.dtype == jnp.int32
    np.testing.assert_array_equal(ops.max_pool(xi, 3, 2, 1)[0, ..., 0],
                                  ref_pool(xi, "max", (3, 3), (2, 2), ((1, 1), (1, 1)))[0, ..., 0])
    np.testing.assert_array_equal(ops.min_pool(xi, 3, 2, 1)[0, ..., 0],
                                  ref_pool(xi, "min", (3, 3), (2, 2), ((1, 1), (1, 1)))[0, ..., 0])
    values, indices = ops.max_pool(xi, 2, return_indices=True)
    assert values.dtype == jnp.int32 and indices.dtype == jnp.int32
    # bfloat16 gradients route like float32 ones (small integers are exact in both).
    x = tie_heavy((2, 6, 4, 2), 4)
    for f in (lambda v: ops.max_pool(v, 2), lambda v: ops.max_pool(v, 3, 1, 1)):
        g32 = jax.grad(lambda v, f=f: f(v).sum())(jnp.asarray(x))
        g16 = jax.grad(lambda v, f=f: f(v).astype(jnp.float32).sum())(jnp.asarray(x, jnp.bfloat16))
        assert g16.dtype == jnp.bfloat16
        np.testing.assert_array_equal(g16.astype(jnp.float32), g32)


def test_under_vmap():
    xs = tie_heavy((3, 2, 6, 5, 2), 4)
    f = lambda v: ops.max_pool(v, 3, 2, 1, ceil_mode=True)  # noqa: E731
    grad = jax.grad(lambda v: (f(v) ** 2).sum())
    batched = jax.vmap(grad)(xs)
    for i in range(len(xs)):
        np.testing.assert_array_equal(batched[i], grad(jnp.asarray(xs[i])))
    values, indices = jax.vmap(lambda v: ops.max_pool(v, 2, return_indices=True))(xs)
    ref_values, ref_indices = ops.max_pool(jnp.asarray(xs[1]), 2, return_indices=True)
    np.testing.assert_array_equal(values[1], ref_values)
    np.testing.assert_array_equal(indices[1], ref_indices)
