"""jaxconv.ops.pallas_conv (``impl="pallas"``): values and gradients against lax and the oracle.

Off GPU the kernels run in Pallas's interpret mode, which is slow: shapes are
tiny, and each configuration computes the value and both gradients of both
implementations in one jit. Tolerances: float32 at ``Precision.HIGHEST``,
relative ``1e-5`` of the largest element; float64 against the NumPy oracle
``1e-12``; bf16 one bf16 rounding (``2**-8``) of the float32 result.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxconv as jc
from jaxconv.ops import autotune, pallas_conv, spec
from jaxconv.ops.conv import conv, conv_transpose
from jaxconv.ops.pallas_conv import pallas_conv_general
from jaxconv.verify import Case, relative_error
from tests import oracle
from tests.test_ops_patches import _equations, _primitives

HIGHEST = lax.Precision.HIGHEST


@pytest.fixture(autouse=True)
def _pallas_is_an_impl(monkeypatch):
    """Until ``jaxconv.ops.spec.IMPLS`` lists ``"pallas"``, the tests add it (a no-op after)."""
    if "pallas" not in spec.IMPLS:
        monkeypatch.setattr(spec, "IMPLS", (*spec.IMPLS, "pallas"))


def _rand(shape, seed=0, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def _value_and_grads(op, kwargs, x, w, ct, impls=("pallas", "lax")):
    """``{impl: (y, dx, dw)}`` of ``op`` for each impl, in one jit."""
    fn = conv if op == "conv" else conv_transpose

    @jax.jit
    def run(x, w, ct):
        out = {}
        for impl in impls:
            y, vjp = jax.vjp(lambda a, b, impl=impl: fn(a, b, impl=impl, precision=HIGHEST,
                                                        **kwargs), x, w)
            out[impl] = (y, *vjp(ct))
        return out

    return run(x, w, ct)


# (op, x shape, kernel shape, keyword arguments): odd sizes, strides, dilations,
# every padding spelling (negative = crop), every padding_mode, 1-D to 3-D.
CASES = [
    ("conv", (2, 7, 6, 3), (3, 3, 3, 5), dict(padding="SAME")),
    ("conv", (2, 9, 7, 4), (3, 2, 4, 6), dict(stride=2, padding=((1, 2), (-1, 1)),
                                               dilation=(1, 2))),
    ("conv", (1, 11, 8, 3), (2, 3, 3, 17), dict(stride=(3, 2), padding=2, dilation=(2, 1),
                                                padding_mode="reflect")),
    ("conv", (2, 6, 5, 2), (4, 3, 2, 3), dict(padding="SAME_LOWER", padding_mode="replicate")),
    ("conv", (2, 13, 3), (5, 3, 4), dict(stride=3, padding="VALID", dilation=2)),
    ("conv", (1, 5, 4, 6, 2), (2, 1, 3, 2, 3), dict(stride=(1, 2, 1), padding=1)),
    ("conv_transpose", (2, 4, 5, 3), (3, 3, 4, 3), dict(stride=2, padding=1, output_padding=1)),
    ("conv_transpose", (1, 5, 4, 2), (2, 3, 3, 2), dict(stride=(1, 2), padding="SAME",
                                                        dilation=(2, 1))),
]


@pytest.mark.parametrize("op, x_shape, k_shape, kwargs", CASES)
def test_values_and_gradients_match_lax(op, x_shape, k_shape, kwargs):
    x, w = _rand(x_shape), _rand(k_shape, seed=1)
    y_shape = jax.eval_shape(lambda a, b: (conv if op == "conv" else conv_transpose)(
        a, b, **kwargs), x, w).shape
    out = _value_and_grads(op, kwargs, x, w, _rand(y_shape, seed=2))
    for name, got, want in zip(("value", "dx", "dw"), out["pallas"], out["lax"]):
        assert got.shape == want.shape and got.dtype == want.dtype, name
        err = relative_error(got, want)
        assert err <= 1e-5, f"{name}: relative error {err:.2e}"


def test_many_tiles_match_lax(monkeypatch):
    """16-wide tiles: several output-pixel tiles, channel blocks (40 -> 48) and feature
    blocks (20 -> 32), in the forward and both gradients."""
    monkeypatch.setattr(pallas_conv, "BLOCKS", pallas_conv.Blocks(16, 16, 16))
    kwargs = dict(stride=(2, 1), padding=1, dilation=(1, 2))
    x, w = _rand((2, 9, 8, 40)), _rand((3, 3, 40, 20), seed=1)
    out = _value_and_grads("conv", kwargs, x, w, _rand((2, 5, 6, 20), seed=2))
    jaxpr = jax.make_jaxpr(lambda x, w: conv(x, w, impl="pallas", **kwargs))(x, w).jaxpr
    grids = [e.params["grid_mapping"].grid for e in _equations(jaxpr)
             if e.primitive.name == "pallas_call"]
    # Images; 5 output rows x 10-wide phase rows = 50 flat rows in 16-row tiles; features.
    assert grids == [(2, 4, 2)], grids
    for name, got, want in zip(("value", "dx", "dw"), out["pallas"], out["lax"]):
        err = relative_error(got, want)
        assert err <= 1e-5, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("op, x_shape, k_shape, kwargs", [CASES[2], CASES[6]])
def test_float64_matches_the_oracle(op, x_shape, k_shape, kwargs, monkeypatch):
    """Float64 in, float64 accumulation: the NumPy direct loops to ``1e-12``.

    The weight gradient sums every image in one program instance here (one group).
    """
    monkeypatch.setattr(pallas_conv, "MAX_IMAGE_GROUPS", 1)
    full = {"stride": 1, "dilation": 1, "groups": 1, **kwargs}
    full.setdefault("padding_mode" if op == "conv" else "output_padding",
                    "zeros" if op == "conv" else 0)
    case = Case(op, x_shape, k_shape, full, {})
    with jax.enable_x64(True):
        x, w = _rand(x_shape, dtype=jnp.float64), _rand(k_shape, seed=1, dtype=jnp.float64)
        fn = conv if op == "conv" else conv_transpose
        y_shape = jax.eval_shape(lambda a, b: fn(a, b, **kwargs), x, w).shape
        ct = _rand(y_shape, seed=2, dtype=jnp.float64)
        got = _value_and_grads(op, kwargs, x, w, ct, impls=("pallas",))["pallas"]
        want = oracle.run_case(case, *(np.asarray(a) for a in (x, w, ct)))
    for name, g, r in zip(("value", "dx", "dw"), got, want):
        assert g.dtype == jnp.float64, name
        err = relative_error(g, r)
        assert err <= 1e-12, f"{name}: relative error {err:.2e}"


def test_bfloat16_multiplies_in_bfloat16_and_accumulates_in_float32():
    x, w = _rand((2, 6, 6, 32), dtype=jnp.bfloat16), _rand((3, 3, 32, 16), seed=1,
                                                          dtype=jnp.bfloat16)
    f = jax.jit(lambda x, w: conv(x, w, impl="pallas"))
    got = f(x, w)
    want = conv(x.astype(jnp.float32), w.astype(jnp.float32), impl="lax", precision=HIGHEST)
    assert got.dtype == jnp.bfloat16
    # One rounding to bfloat16 (relative 2**-8) of a 288-term sum, not one per term.
    np.testing.assert_allclose(got.astype(jnp.float32), want, rtol=2**-8, atol=2**-8 * 4)
    grads = jax.grad(lambda x, w: jnp.sum(conv(x, w, impl="pallas").astype(jnp.float32)),
                     (0, 1))
    dots = [e for e in _equations(jax.make_jaxpr(grads)(x, w).jaxpr)
            if e.primitive.name == "dot_general"]
    # Inside the kernels: one per tap in the forward and in the input gradient, one in
    # the weight gradient; none outside.
    assert len(dots) == 9 + 9 + 1, dots
    for eqn in dots:
        assert [v.aval.dtype for v in eqn.invars] == [jnp.bfloat16] * 2
        assert eqn.params["preferred_element_type"] == jnp.float32


def test_kernels_do_all_the_arithmetic():
    """Forward and both gradients are pallas_calls: no convolution primitive, no matmul outside."""
    x, w = _rand((2, 6, 5, 3)), _rand((3, 3, 3, 4), seed=1)
    f = lambda x, w: conv(x, w, stride=2, padding=1, impl="pallas")  # noqa: E731
    grad = jax.make_jaxpr(jax.grad(lambda x, w: jnp.sum(f(x, w) ** 2), (0, 1)))(x, w).jaxpr
    top = [e.primitive.name for e in grad.eqns]
    assert sum(name == "pallas_call" for name in _primitives(grad)) == 3
    assert not any("conv_general" in p for p in _primitives(grad))
    assert "dot_general" not in top


def test_layer_under_jit_and_vmap():
    """``Conv(impl="pallas")`` equals ``Conv(impl="lax")`` under jit, vmap and grad."""
    layers = {impl: jc.Conv(5, (2, 3), stride=(1, 2), padding=(1, 2), padding_mode="circular",
                            impl=impl, precision=HIGHEST) for impl in ("pallas", "lax")}
    _, params, state = layers["lax"].init(jax.random.PRNGKey(0), (-1, 6, 7, 3))
    xs = _rand((2, 2, 6, 7, 3))

    @jax.jit
    def run(params, xs):
        out = {}
        for impl, layer in layers.items():
            apply = lambda p, x, layer=layer: layer.apply(p, state, x)[0]  # noqa: E731
            loss = lambda p, x, apply=apply: jnp.sum(jnp.tanh(apply(p, x)))  # noqa: E731
            out[impl] = (jax.vmap(apply, (None, 0))(params, xs),
                         jax.vmap(jax.grad(loss, (0, 1)), (None, 0))(params, xs))
        return out

    out = run(params, xs)
    for got, want in zip(jax.tree_util.tree_leaves(out["pallas"]),
                         jax.tree_util.tree_leaves(out["lax"])):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_image_groups_rule(monkeypatch):
    assert pallas_conv.image_groups(512, 9 * 64 * 64 * 4) == 64
    assert pallas_conv.image_groups(512, 9 * 512 * 512 * 4) == 4  # 64 MiB of partial sums
    assert pallas_conv.image_groups(7, 100) == 7
    monkeypatch.setattr(pallas_conv, "MAX_IMAGE_GROUPS", 4)
    assert pallas_conv.image_groups(6, 100) == 3  # a divisor of the batch
    assert pallas_conv.image_groups(7, 100) == 1


def test_lowers_for_gpu_with_triton():
    """Off GPU, lowering for CUDA runs the Pallas-to-Triton lowering (Triton's own
    compilation needs a GPU): forward, input and weight gradients are three Triton calls."""
    x = jax.ShapeDtypeStruct((4, 9, 8, 3), jnp.bfloat16)
    w = jax.ShapeDtypeStruct((3, 3, 3, 20), jnp.bfloat16)
    resolved, _ = spec.resolve_conv(spec.conv_options("conv", stride=2, padding=1, dilation=(1, 2)),
                                    x.shape, w.shape)

    def value_and_grads(x, w):
        y, vjp = jax.vjp(lambda a, b: pallas_conv_general(a, b, resolved, interpret=False), x, w)
        return y, vjp(y)

    text = jax.jit(value_and_grads).trace(x, w).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("__gpu$xla.gpu.triton") == 3


def test_groups_fall_back_to_the_patches_path():
    x, w = _rand((2, 6, 6, 4)), _rand((3, 3, 2, 6), seed=1)
    f = lambda impl: (lambda x, w: conv(x, w, groups=2, impl=impl, precision=HIGHEST))  # noqa: E731
    prims = _primitives(jax.make_jaxpr(f("pallas"))(x, w).jaxpr)
    assert "pallas_call" not in prims and "dot_general" in prims
    np.testing.assert_array_equal(f("pallas")(x, w), f("patches")(x, w))


def test_auto_never_chooses_pallas():
    assert all(rule["impl"] in ("lax", "patches") for rule in autotune.TABLE)
    for backend in ("cpu", "gpu", "tpu"):
        for k_shape in ((3, 3, 3, 8), (3, 3, 64, 64), (1, 1, 16, 16)):
            picked = autotune.choose_impl("conv", (8, 16, 16, k_shape[-2]), k_shape,
                                          backend=backend)
            assert picked != "pallas", (backend, k_shape)


def test_errors():
    x, w = _rand((1, 5, 5, 2)), _rand((3, 3, 2, 2), seed=1)
    resolved, _ = spec.resolve_conv(spec.conv_options("conv"), x.shape, w.shape)
    with pytest.raises(ValueError, match="pallas_conv_general: interpret must be True or False, got 1"):
        pallas_conv_general(x, w, resolved, interpret=1)
    with pytest.raises(ValueError, match="conv: unknown impl 'triton'"):
        conv(x, w, impl="triton")
    # Reverse mode only: forward mode is refused by JAX's custom_vjp.
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(lambda x: conv(x, w, impl="pallas"), (x,), (x,))
