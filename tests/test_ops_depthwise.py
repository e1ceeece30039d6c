"""The depthwise form of ``impl="patches"``: slices of the padded input times per-channel weights.

Checked against the float64 NumPy oracle (``tests/oracle.py``) and against
``impl="lax"``, in value and in both gradients, on random depthwise and
small-group configurations (conv and conv_transpose, 1-D to 3-D, every padding
form and padding_mode, stride, dilation, channel multipliers); its jaxprs hold
no convolution, scatter, gather or matmul; bfloat16 accumulates in float32.
"""

from __future__ import annotations

from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from jax import lax
from jax.test_util import check_grads

from jaxconv.ops import autotune
from jaxconv.ops.conv import conv, conv_transpose
from jaxconv.ops.patches import patches_conv_general, patches_form
from jaxconv.ops.spec import PADDING_MODES, ConvSpec, conv_output_shape, conv_transpose_output_shape
from jaxconv.verify import Case, relative_error
from tests import oracle
from tests.test_ops_patches import _equations, _primitives

HIGHEST = lax.Precision.HIGHEST
SETTINGS = dict(deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.filter_too_much])

# The depthwise form for up to 3 input channels per group, on whatever backend runs the tests.
UP_TO_3 = {jax.default_backend(): autotune.DepthwiseRule(max_group_channels=3)}


def _padding(draw, nd):
    form = draw(st.sampled_from(["SAME", "SAME_LOWER", "VALID", "int", "per-dim", "pairs"]))
    if form == "int":
        return draw(st.integers(0, 2))
    if form == "per-dim":
        return tuple(draw(st.integers(0, 2)) for _ in range(nd))
    if form == "pairs":
        return tuple((draw(st.integers(-1, 2)), draw(st.integers(-1, 2))) for _ in range(nd))
    return form


@st.composite
def grouped_cases(draw):
    """A valid conv or conv_transpose with 2-4 groups of 1-3 input channels (depthwise: 1)."""
    op = draw(st.sampled_from(["conv", "conv_transpose"]))
    nd = draw(st.integers(1, 3))
    size = {1: 9, 2: 6, 3: 4}[nd]
    spatial = tuple(draw(st.integers(1, size)) for _ in range(nd))
    window = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    stride = tuple(draw(st.sampled_from([1, 1, 2, 3])) for _ in range(nd))
    dilation = tuple(draw(st.sampled_from([1, 1, 2])) for _ in range(nd))
    groups, c_g, f_g = draw(st.integers(2, 4)), draw(st.sampled_from([1, 1, 2, 3])), draw(
        st.integers(1, 3))
    kwargs = dict(stride=stride, padding=_padding(draw, nd), dilation=dilation, groups=groups)
    x_shape = (draw(st.integers(1, 2)), *spatial, groups * c_g)
    try:
        if op == "conv":
            kwargs["padding_mode"] = draw(st.sampled_from(PADDING_MODES))
            k_shape = (*window, c_g, groups * f_g)
            conv_output_shape(x_shape, k_shape, **kwargs)
        else:
            kwargs["output_padding"] = tuple(draw(st.integers(0, max(s, d) - 1))
                                             for s, d in zip(stride, dilation))
            k_shape = (*window, f_g, groups * c_g)
            conv_transpose_output_shape(x_shape, k_shape, **kwargs)
    except ValueError:  # an empty output, or padding too wide for the mode
        assume(False)
    return Case(op, x_shape, k_shape, kwargs, {})


def _op(case):
    return conv if case.op == "conv" else conv_transpose


def _outputs(case, x, w, ct):
    """``[(y, dx, dw) for impl in ("patches", "lax")]`` on ``case``, in one jit."""

    @jax.jit
    def run(x, w, ct):
        out = []
        for impl in ("patches", "lax"):
            y, vjp = jax.vjp(lambda a, b, impl=impl: _op(case)(
                a, b, impl=impl, precision=HIGHEST, **case.kwargs), x, w)
            out.append((y, *vjp(ct)))
        return out

    return run(x, w, ct)


def _arrays(case, seed):
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal(case.x_shape), rng.standard_normal(case.kernel_shape)
    y = jax.eval_shape(lambda a, b: _op(case)(a, b, **case.kwargs), x, w)
    return x, w, rng.standard_normal(y.shape)


def _form_prims(case):
    x, w = jnp.zeros(case.x_shape), jnp.zeros(case.kernel_shape)
    jaxpr = jax.make_jaxpr(lambda a, b: _op(case)(a, b, impl="patches", **case.kwargs))(x, w)
    return set(_primitives(jaxpr.jaxpr))


@settings(max_examples=15, **SETTINGS)
@given(grouped_cases())
def test_float64_depthwise_form_matches_oracle_and_lax(case):
    """Value, input and weight gradients: the oracle within 1e-12, lax within 1e-12."""
    with jax.enable_x64(True), mock.patch.dict(autotune.PATCH_DEPTHWISE, UP_TO_3):
        prims = _form_prims(case)
        assert "dot_general" not in prims, (prims, case)
        x, w, ct = _arrays(case, seed=len(case.x_shape))
        want = oracle.run_case(case, x, w, ct)
        got, lax_out = _outputs(case, *map(jnp.asarray, (x, w, ct)))
    for name, a, b, c in zip(("value", "dx", "dw"), got, want, lax_out):
        assert a.shape == b.shape, (name, a.shape, b.shape, case)
        assert relative_error(a, b) <= 1e-12, (name, relative_error(a, b), case)
        assert relative_error(a, c) <= 1e-12, (name, relative_error(a, c), case)


JAXPR_CASES = [
    ("conv", (2, 9, 4), (3, 1, 8), dict(stride=2, padding="SAME", dilation=2, groups=4)),
    ("conv", (2, 7, 6, 4), (3, 3, 1, 4), dict(padding=((1, -1), 2), groups=4,
                                              padding_mode="reflect")),
    ("conv", (2, 7, 6, 6), (3, 2, 2, 6), dict(stride=(1, 2), padding=1, groups=3,
                                              padding_mode="circular")),
    ("conv", (1, 4, 5, 4, 3), (2, 3, 2, 1, 6), dict(padding="VALID", groups=3,
                                                    padding_mode="replicate")),
    ("conv_transpose", (2, 5, 6, 4), (3, 3, 2, 4), dict(stride=2, padding=1, output_padding=1,
                                                        groups=4)),
]


@pytest.mark.parametrize("op, x_shape, k_shape, kw", JAXPR_CASES)
def test_depthwise_jaxprs_have_no_convolution_matmul_scatter_or_gather(op, x_shape, k_shape, kw):
    """Forward, reverse-mode and forward-mode: pads, slices, multiply-adds and sums only."""
    fn = conv if op == "conv" else conv_transpose
    f = lambda x, w: fn(x, w, impl="patches", **kw)  # noqa: E731
    x = jnp.asarray(np.random.default_rng(0).standard_normal(x_shape), jnp.float32)
    w = jnp.asarray(np.random.default_rng(1).standard_normal(k_shape), jnp.float32)
    loss = lambda x, w: jnp.sum(jnp.sin(f(x, w)))  # noqa: E731
    with mock.patch.dict(autotune.PATCH_DEPTHWISE, UP_TO_3):
        jaxprs = {"forward": jax.make_jaxpr(f)(x, w),
                  "grad": jax.make_jaxpr(jax.grad(loss, (0, 1)))(x, w),
                  "jvp": jax.make_jaxpr(lambda x, w: jax.jvp(f, (x, w), (x, w)))(x, w)}
    for name, jaxpr in jaxprs.items():
        prims = set(_primitives(jaxpr.jaxpr))
        assert {"pad", "slice", "mul", "add"} <= prims, (name, sorted(prims))
        banned = [p for p in prims if any(word in p for word in (
            "conv_general", "scatter", "gather", "dot_general", "while", "scan"))]
        assert not banned, (name, banned)
    # Without the rule the same call builds a patch tensor and a matmul (the walk sees them).
    with mock.patch.dict(autotune.PATCH_DEPTHWISE, clear=True):  # a new function: no cached trace
        prims = set(_primitives(jax.make_jaxpr(lambda x, w: f(x, w))(x, w).jaxpr))
    assert {"dot_general", "concatenate"} <= prims


@pytest.mark.slow
@pytest.mark.parametrize("op, x_shape, k_shape, kw", [JAXPR_CASES[1], JAXPR_CASES[4]])
def test_check_grads_forward_and_reverse_second_order(op, x_shape, k_shape, kw):
    fn = conv if op == "conv" else conv_transpose
    with jax.enable_x64(True), mock.patch.dict(autotune.PATCH_DEPTHWISE, UP_TO_3):
        x = jnp.asarray(np.random.default_rng(2).standard_normal(x_shape))
        w = jnp.asarray(np.random.default_rng(3).standard_normal(k_shape))
        check_grads(lambda x, w: fn(x, w, impl="patches", **kw), (x, w), order=2,
                    modes=("fwd", "rev"), atol=1e-6, rtol=1e-6)


def test_depthwise_form_under_jit_vmap_and_batch_chunks():
    """vmap over a batch of batches, and explicit batch chunks, equal the plain call."""
    spec = ConvSpec((2, 1), ((1, 1), (0, 2)), (1, 1), (1, 2), 4)
    with jax.enable_x64(True), mock.patch.dict(autotune.PATCH_DEPTHWISE, UP_TO_3):
        x = jnp.asarray(np.random.default_rng(4).standard_normal((3, 5, 7, 6, 4)))
        w = jnp.asarray(np.random.default_rng(5).standard_normal((3, 2, 1, 8)))
        assert patches_form(x.shape[1:], w.shape, spec) == "depthwise"

        def value_and_grads(x, w, chunk=None):
            f = lambda x, w: patches_conv_general(x, w, spec, batch_chunk=chunk)  # noqa: E731
            return f(x, w), *jax.grad(lambda x, w: jnp.sum(jnp.cos(f(x, w))), (0, 1))(x, w)

        whole = [value_and_grads(xi, w) for xi in x]
        mapped = jax.jit(jax.vmap(value_and_grads, (0, None)))(x, w)
        chunked = value_and_grads(x[0], w, chunk=2)
    for i, want in enumerate(whole):
        for got, ref in zip(mapped, want):
            np.testing.assert_allclose(got[i], ref, rtol=1e-12, atol=1e-12)
    for got, ref in zip(chunked, whole[0]):
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)


def test_bfloat16_accumulates_in_float32():
    """1 at the centre tap and 2**-9 at the eight others: a bfloat16 running sum drops the
    small terms (1 + 2**-9 rounds to 1), a float32 one keeps them (1 + 2**-6 is exact)."""
    x = jnp.full((1, 3, 3, 2), 2.0 ** -9, jnp.bfloat16).at[:, 1, 1, :].set(1)
    w = jnp.ones((3, 3, 1, 2), jnp.bfloat16)
    f = lambda x, w: conv(x, w, padding="VALID", groups=2, impl="patches")  # noqa: E731
    with mock.patch.dict(autotune.PATCH_DEPTHWISE, UP_TO_3):
        y = f(x, w)
        jaxpr = jax.make_jaxpr(f)(x, w).jaxpr
    assert y.dtype == jnp.bfloat16
    np.testing.assert_array_equal(y.astype(jnp.float32), np.full((1, 1, 1, 2), 1 + 2.0 ** -6))
    muls = [e.outvars[0].aval.dtype for e in _equations(jaxpr) if e.primitive.name == "mul"]
    assert muls and all(d == jnp.float32 for d in muls), muls
    # Gradients come back in bfloat16.
    with mock.patch.dict(autotune.PATCH_DEPTHWISE, UP_TO_3):
        dx, dw = jax.grad(lambda x, w: jnp.sum(f(x, w).astype(jnp.float32)), (0, 1))(x, w)
    assert dx.dtype == dw.dtype == jnp.bfloat16
    np.testing.assert_array_equal(dw.astype(jnp.float32)[..., 0, 0],
                                  np.asarray(x[0, ..., 0], np.float32))


def test_depthwise_rule_and_auto():
    rule = autotune.DepthwiseRule(max_group_channels=2)
    assert autotune.depthwise_apply((3, 3, 1, 8), 8, rule)
    assert autotune.depthwise_apply((3, 3, 2, 8), 4, rule)
    assert not autotune.depthwise_apply((3, 3, 3, 8), 2, rule)
    assert not autotune.depthwise_apply((3, 3, 1, 8), 1, rule)   # one group: a dense conv
    assert not autotune.depthwise_apply((3, 3, 1, 8), 8, None)
    assert autotune.depthwise_rule("cpu") == autotune.PATCH_DEPTHWISE["cpu"]
    assert autotune.shape_class((1, 8, 8, 4), (3, 3, 1, 8), 4, depthwise_form=True) == \
        "depthwise_form"
    assert autotune.choose_impl("conv", (1, 8, 8, 4), (3, 3, 1, 8), 4, backend="cpu",
                                depthwise_form=True) == "patches"
    assert autotune.choose_impl("conv_transpose", (1, 8, 8, 4), (3, 3, 1, 8), 4,
                                backend="cpu") == "lax"
    assert autotune.choose_impl("conv", (1, 8, 8, 4), (3, 3, 1, 8), 4, backend="gpu",
                                depthwise_form=True) == "lax"


def test_cpu_rule_takes_depthwise_convolutions_only():
    """Under the CPU rule: one input channel per group takes the depthwise form; two
    take the full patch tensor (faster there); one group, the dense forms."""
    spec = ConvSpec((1, 1), ((1, 1), (1, 1)), (1, 1), (1, 1), 4)
    with mock.patch.dict(autotune.PATCH_DEPTHWISE,
                         {jax.default_backend(): autotune.PATCH_DEPTHWISE["cpu"]}):
        assert patches_form((2, 8, 8, 4), (3, 3, 1, 12), spec) == "depthwise"
        assert patches_form((2, 8, 8, 8), (3, 3, 2, 12), spec) == "full"
        assert patches_form((2, 8, 8, 1), (3, 3, 1, 12), spec._replace(groups=1)) != "depthwise"


def test_auto_asks_with_the_depthwise_rule_of_the_backend(monkeypatch):
    asked = []
    monkeypatch.setattr(autotune, "choose_impl", lambda *a, **k: asked.append(k) or "lax")
    one = {jax.default_backend(): autotune.DepthwiseRule(1)}
    with mock.patch.dict(autotune.PATCH_DEPTHWISE, one):
        conv(jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 1, 8)), groups=4, impl="auto")
        conv(jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 2, 8)), groups=2, impl="auto")
        conv_transpose(jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 2, 4)), groups=4, impl="auto")
    assert [k["depthwise_form"] for k in asked] == [True, False, True]
