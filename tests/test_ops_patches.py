"""jaxconv.ops.patches: patch extraction, the jaxpr of the hand-rolled path, transformations."""

from __future__ import annotations

import itertools
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxconv.ops import autotune
from jaxconv.ops.conv import conv, conv_transpose
from jaxconv.ops.patches import batch_chunk_size, extract_patches, patches_conv_general
from jaxconv.ops.spec import ConvSpec

HIGHEST = lax.Precision.HIGHEST


def _equations(jaxpr):
    """Every equation of a jaxpr, those of its sub-jaxprs included (depth first)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            subs = param if isinstance(param, (tuple, list)) else [param]
            for sub in subs:
                if hasattr(sub, "eqns"):  # a Jaxpr
                    yield from _equations(sub)
                elif hasattr(getattr(sub, "jaxpr", None), "eqns"):  # a ClosedJaxpr
                    yield from _equations(sub.jaxpr)


def _primitives(jaxpr):
    """Names of every primitive in a jaxpr, sub-jaxprs included."""
    return [eqn.primitive.name for eqn in _equations(jaxpr)]


def _concatenate_shapes(jaxpr):
    """Output shapes of every concatenate (the patch tensors), sub-jaxprs included."""
    return [eqn.outvars[0].aval.shape for eqn in _equations(jaxpr)
            if eqn.primitive.name == "concatenate"]


def _rand(shape, seed=0, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def test_extract_patches_layout_matches_numpy():
    x = _rand((2, 5, 6, 3))
    p = extract_patches(x, (2, 3), stride=(2, 1), padding=((1, 0), (0, 1)), dilation=(1, 2))
    xp = np.pad(np.asarray(x), ((0, 0), (1, 0), (0, 1), (0, 0)))
    out_h, out_w = (6 - 2) // 2 + 1, (7 - 5) // 1 + 1
    assert p.shape == (2, out_h, out_w, 2 * 3 * 3)
    for i, j in itertools.product(range(out_h), range(out_w)):
        want = np.concatenate([xp[:, 2 * i + a, j + 2 * b, :]
                               for a, b in itertools.product(range(2), range(3))], axis=-1)
        np.testing.assert_array_equal(p[:, i, j], want)


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_conv_is_patches_times_reshaped_kernel(nd):
    x = _rand((2,) + (5,) * nd + (3,))
    w = _rand((3,) * nd + (3, 4), seed=1)
    p = extract_patches(x, 3, stride=2, padding="SAME", dilation=1)
    want = conv(x, w, stride=2, padding="SAME", impl="lax", precision=HIGHEST)
    np.testing.assert_allclose(p @ w.reshape(-1, 4), want, rtol=1e-5, atol=1e-5)


def test_extract_patches_errors():
    with pytest.raises(ValueError, match="extract_patches: expected input of rank 3, 4 or 5"):
        extract_patches(jnp.ones((5, 5)), 3)
    with pytest.raises(ValueError, match="extract_patches: kernel of size"):
        extract_patches(jnp.ones((1, 5, 5, 1)), 7)
    with pytest.raises(ValueError, match="extract_patches: stride must be an int or a sequence of ints >= 1, got 0"):
        extract_patches(jnp.ones((1, 5, 5, 1)), 3, stride=0)


CASES = [
    ("conv", dict(stride=2, padding="SAME", dilation=1, groups=1)),
    ("conv", dict(stride=1, padding=((1, -1), 2), dilation=2, groups=2,
                  padding_mode="reflect")),
    ("conv", dict(stride=(1, 2), padding=1, groups=4, padding_mode="circular")),
    ("conv_transpose", dict(stride=2, padding=1, output_padding=1, groups=2)),
]


def _case_fn(op, kw, impl="patches"):
    fn = conv if op == "conv" else conv_transpose
    return lambda x, w: fn(x, w, impl=impl, **kw)


def _case_arrays(op, kw):
    g = kw["groups"]
    x = _rand((2, 7, 6, 4))
    w = _rand((3, 3, 4 // g, 4), seed=1) if op == "conv" else _rand((3, 3, 4 // g, 4), seed=1)
    return x, w


# The row-shift form wherever it can apply, or never.
ROWS_ALWAYS = {jax.default_backend(): autotune.RowsRule(min_depth=1, max_waste=float("inf"))}


def _no_depthwise_form():
    """The full patch tensor or the row-shift form for grouped convolutions too (see
    tests/test_ops_depthwise.py for the depthwise form)."""
    return mock.patch.dict(autotune.PATCH_DEPTHWISE, clear=True)


@pytest.mark.parametrize("rows", [False, True], ids=["full", "rows"])
@pytest.mark.parametrize("op, kw", CASES)
def test_patches_jaxpr_has_no_convolution(op, kw, rows):
    """Forward, reverse-mode and forward-mode jaxprs: no conv_general_dilated, no scatter."""
    f = _case_fn(op, kw)
    x, w = _case_arrays(op, kw)
    loss = lambda x, w: jnp.sum(jnp.sin(f(x, w)))  # noqa: E731
    with (mock.patch.dict(autotune.PATCH_ROWS, ROWS_ALWAYS if rows else {}, clear=not rows),
          _no_depthwise_form()):
        jaxprs = {
            "forward": jax.make_jaxpr(f)(x, w),
            "grad": jax.make_jaxpr(jax.grad(loss, (0, 1)))(x, w),
            "jvp": jax.make_jaxpr(lambda x, w: jax.jvp(f, (x, w), (x, w)))(x, w),
        }
    for name, jaxpr in jaxprs.items():
        prims = _primitives(jaxpr.jaxpr)
        assert "dot_general" in prims, name
        assert not any("conv_general" in p for p in prims), (name, sorted(set(prims)))
        assert not any("scatter" in p or "gather" in p for p in prims), (name, sorted(set(prims)))
    # The lax path does use the convolution primitive (so the walk can see it).
    lax_prims = _primitives(jax.make_jaxpr(_case_fn(op, kw, "lax"))(x, w).jaxpr)
    assert "conv_general_dilated" in lax_prims


def test_one_patch_tensor_and_one_matmul_per_call():
    x, w = _rand((2, 8, 8, 3)), _rand((3, 3, 3, 5), seed=1)
    prims = _primitives(jax.make_jaxpr(lambda x, w: conv(x, w, impl="patches"))(x, w).jaxpr)
    assert prims.count("concatenate") == 1
    assert prims.count("dot_general") == 1
    assert prims.count("pad") == 1
    # Weight gradient: one matmul over the forward patches; input gradient: one
    # matmul to patch space, then col2im (pads summed), with no second patch tensor.
    g = jax.make_jaxpr(jax.grad(lambda x, w: jnp.sum(conv(x, w, impl="patches")), (0, 1)))(x, w)
    prims = _primitives(g.jaxpr)
    assert prims.count("dot_general") == 3  # forward, d/dw, d/dx
    assert prims.count("concatenate") == 1  # the forward patches only


def test_row_shift_form_has_one_shallow_patch_tensor_and_one_matmul():
    """Patches over the trailing axis only (depth 3 * C), one matmul with 3 * F columns
    forward; the gradients add one matmul each and no second patch tensor."""
    x, w = _rand((2, 8, 8, 3)), _rand((3, 3, 3, 5), seed=1)
    f = lambda x, w: conv(x, w, impl="patches")  # noqa: E731
    with mock.patch.dict(autotune.PATCH_ROWS, ROWS_ALWAYS):
        fwd = jax.make_jaxpr(f)(x, w).jaxpr
        grad = jax.make_jaxpr(jax.grad(lambda x, w: jnp.sum(f(x, w)), (0, 1)))(x, w).jaxpr
    assert _concatenate_shapes(fwd) == [(2, 10, 8, 9)]       # SAME: 10 padded rows
    dots = [e.outvars[0].aval.shape for e in _equations(fwd) if e.primitive.name == "dot_general"]
    assert dots == [(160, 15)]
    prims = _primitives(grad)
    assert prims.count("dot_general") == 3 and prims.count("concatenate") == 1
    assert not any("conv_general" in p or "scatter" in p or "gather" in p for p in prims), prims


def test_row_shift_form_accumulates_bfloat16_in_float32():
    x, w = _rand((2, 8, 8, 16), dtype=jnp.bfloat16), _rand((3, 3, 16, 8), seed=1, dtype=jnp.bfloat16)
    want = conv(x.astype(jnp.float32), w.astype(jnp.float32), impl="lax", precision=HIGHEST)
    with mock.patch.dict(autotune.PATCH_ROWS, ROWS_ALWAYS):
        got = conv(x, w, impl="patches")
    assert got.dtype == jnp.bfloat16
    # One rounding to bfloat16 (relative 2**-8), not one per kernel row.
    np.testing.assert_allclose(got.astype(jnp.float32), want, rtol=2**-8, atol=2**-8 * 4)


@pytest.mark.parametrize("groups, rows", [(2, False), (1, True)], ids=["full", "rows"])
def test_patches_under_jit_vmap_jvp_and_second_order(groups, rows):
    x, w = _rand((2, 5, 5, 2)), _rand((2, 2, 2 // groups, 2), seed=1)
    kw = dict(stride=(1, 2) if rows else 2, padding="SAME", groups=groups)
    pat = lambda x, w: conv(x, w, impl="patches", **kw)  # noqa: E731
    ref = lambda x, w: conv(x, w, impl="lax", precision=HIGHEST, **kw)  # noqa: E731
    loss = lambda f: (lambda x, w: jnp.sum(jnp.tanh(f(x, w))))  # noqa: E731
    np.testing.assert_allclose(jax.jit(pat)(x, w), ref(x, w), rtol=1e-5, atol=1e-5)
    xs = jnp.stack([x, 2 * x])

    @jax.jit
    def transformed(x, w, xs):
        out = {}
        for name, f in (("pat", pat), ("ref", ref)):
            out[name] = (jax.vmap(jax.grad(loss(f), (0, 1)), (0, None))(xs, w),
                         jax.jvp(f, (x, w), (x, w))[1],
                         jax.hessian(lambda w, f=f: loss(f)(x, w))(w),
                         lax.scan(lambda c, xi, f=f: (c, f(xi, w)), 0, xs)[1])
        return out

    with (mock.patch.dict(autotune.PATCH_ROWS, ROWS_ALWAYS if rows else {}, clear=not rows),
          _no_depthwise_form()):
        out = transformed(x, w, xs)
        # A new function: jax.jit(pat) above cached pat's trace under the old rule.
        jaxpr = jax.make_jaxpr(lambda a, b: pat(a, b))(x, w).jaxpr
        dots = [e.outvars[0].aval.shape[-1] for e in _equations(jaxpr)
                if e.primitive.name == "dot_general"]
    assert (dots == [4]) if rows else (4 not in dots), dots   # row-shift matmul: 2 rows x 2 outputs
    for a, b in zip(jax.tree_util.tree_leaves(out["pat"]), jax.tree_util.tree_leaves(out["ref"])):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)


# --------------------------------------------------------------------------
# Batch chunks: the patch tensor of a few images at a time.


def _chunked_outputs(x, w, spec, chunk):
    """Value and both gradients of ``sum(sin(conv))`` with ``batch_chunk=chunk``."""
    f = lambda x, w: patches_conv_general(x, w, spec, batch_chunk=chunk)  # noqa: E731
    loss = lambda x, w: jnp.sum(jnp.sin(f(x, w)))  # noqa: E731
    return jax.jit(lambda x, w: (f(x, w), *jax.grad(loss, (0, 1))(x, w)))(x, w)


@pytest.mark.parametrize("spec", [
    ConvSpec((1, 1), ((0, 0), (0, 0)), (1, 1), (1, 1), 1),
    ConvSpec((2, 1), ((1, 2), (-1, 1)), (1, 1), (1, 2), 2),   # stride, crop, dilation, groups
    ConvSpec((1, 1), ((1, 1), (2, 2)), (2, 2), (1, 1), 1),    # input dilation (transposed)
])
def test_batch_chunks_equal_the_whole_batch(spec):
    """Chunks of 1, 2 (with a leftover image) and 3 images give the whole batch's results."""
    with jax.enable_x64(True):
        x = _rand((5, 7, 6, 4), dtype=jnp.float64)
        w = _rand((3, 2, 4 // spec.groups, 6), seed=1, dtype=jnp.float64)
        whole = _chunked_outputs(x, w, spec, 5)
        for chunk in (1, 2, 3):
            for name, got, want in zip(("value", "dx", "dw"), _chunked_outputs(x, w, spec, chunk),
                                       whole):
                np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12,
                                           err_msg=f"{name}, chunk {chunk}")


def test_batch_chunked_jaxprs_have_no_convolution_and_small_patch_tensors():
    """Forward and gradient: a scan over chunks, no conv/scatter/gather, patches of 2 images."""
    spec = ConvSpec((1, 1), ((1, 1), (1, 1)), (1, 1), (1, 1), 1)
    x, w = _rand((6, 8, 8, 3)), _rand((3, 3, 3, 5), seed=1)
    f = lambda x, w: patches_conv_general(x, w, spec, batch_chunk=2)  # noqa: E731
    jaxprs = [jax.make_jaxpr(f)(x, w),
              jax.make_jaxpr(jax.grad(lambda x, w: jnp.sum(f(x, w) ** 2), (0, 1)))(x, w)]
    for jaxpr in jaxprs:
        prims = _primitives(jaxpr.jaxpr)
        assert "scan" in prims and "dot_general" in prims
        assert not any("conv_general" in p or "scatter" in p or "gather" in p for p in prims), prims
    # Every patch tensor (the concatenates) holds 2 images, forward and backward.
    shapes = [s for s in _concatenate_shapes(jaxprs[1].jaxpr) if s[-1] == 27]
    assert shapes and all(s[0] == 2 for s in shapes), shapes


def test_batch_chunk_size_rule():
    spec = ConvSpec((1, 1), ((0, 0), (0, 0)), (1, 1), (1, 1), 1)
    x_shape, k_shape = (128, 26, 26, 32), (3, 3, 32, 64)
    per_image = 24 * 24 * 9 * 32 * 4  # bytes of one image's patches
    assert batch_chunk_size(x_shape, k_shape, spec, 4, None) is None  # the whole batch
    assert batch_chunk_size(x_shape, k_shape, spec, 4, 1) == 1
    assert batch_chunk_size(x_shape, k_shape, spec, 4, 6 * per_image) == 4  # a divisor of 128
    assert batch_chunk_size(x_shape, k_shape, spec, 4, 1000 * per_image) == 128
    # No divisor of 127 within a factor of 2 of 6: 6 images, and a leftover chunk.
    assert batch_chunk_size((127, 26, 26, 32), k_shape, spec, 4, 6 * per_image) == 6
    assert batch_chunk_size(x_shape, k_shape, spec, 2, 6 * per_image) == 8  # bfloat16


def test_a_symbolic_batch_is_not_chunked(monkeypatch):
    # jax.export with a dynamic batch: the size cannot be divided, so the batch runs whole.
    monkeypatch.setitem(autotune.PATCH_CHUNK_BYTES, jax.default_backend(), 64 * 1024)
    x, w = _rand((16, 12, 12, 8)), _rand((3, 3, 8, 4), seed=1)
    f = jax.jit(lambda x: conv(x, w, impl="patches"))
    batch, = jax.export.symbolic_shape("batch")
    exported = jax.export.export(f)(jax.ShapeDtypeStruct((batch, 12, 12, 8), jnp.float32))
    np.testing.assert_allclose(exported.call(x), f(x), rtol=1e-6, atol=1e-6)
    assert "scan" in str(jax.make_jaxpr(f)(x))  # a concrete batch of 16 is chunked


def test_default_chunks_bound_the_patch_memory(monkeypatch):
    """Through the public ``conv``: the backend's byte budget holds for every patch tensor."""
    monkeypatch.setitem(autotune.PATCH_CHUNK_BYTES, jax.default_backend(), 64 * 1024)
    x, w = _rand((16, 12, 12, 8)), _rand((3, 3, 8, 4), seed=1)
    jaxpr = jax.make_jaxpr(jax.grad(lambda x, w: jnp.sum(conv(x, w, impl="patches")), (0, 1)))(x, w)
    sizes = [np.prod(shape) * 4 for shape in _concatenate_shapes(jaxpr.jaxpr)]
    assert sizes and max(sizes) <= 64 * 1024, sizes
    np.testing.assert_allclose(conv(x, w, impl="patches"), conv(x, w, impl="lax", precision=HIGHEST),
                               rtol=1e-5, atol=1e-5)


def test_batch_chunk_errors():
    spec = ConvSpec((1, 1), ((0, 0), (0, 0)), (1, 1), (1, 1), 1)
    x, w = _rand((2, 5, 5, 1)), _rand((3, 3, 1, 1), seed=1)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=f"batch_chunk must be an int >= 1, got {bad!r}"):
            patches_conv_general(x, w, spec, batch_chunk=bad)
