"""jaxconv.ops.conv / conv_transpose: both implementations against a float64 NumPy oracle.

Random configurations come from ``jaxconv.verify.draw_case`` driven by
hypothesis (dims 1-3, sizes, stride, every padding form, padding_mode,
dilation, groups incl. depthwise and channel multipliers, transposed
convolutions with output_padding). Float64 tests run inside
``jax.enable_x64(True)`` so x64 does not leak into other test files.
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
from jaxconv.ops.spec import conv_output_shape, conv_transpose_output_shape, padding_pairs
from jaxconv.verify import Case, draw_case, relative_error
from tests import oracle
from tests.test_ops_patches import ROWS_ALWAYS, _equations
from tests.torch_ref import import_torch

HIGHEST = lax.Precision.HIGHEST
SETTINGS = dict(deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.filter_too_much])


def _chooser(data):
    return lambda options: data.draw(st.sampled_from(list(options)))


def _op(case):
    return conv if case.op == "conv" else conv_transpose


def _impl_outputs(case, x, w, ct, impls=("lax", "patches")):
    """``[(y, dx, dw) for impl in impls]`` computed in one jit."""
    fn = _op(case)

    @jax.jit
    def run(x, w, ct):
        out = []
        for impl in impls:
            y, vjp = jax.vjp(lambda a, b, impl=impl: fn(a, b, impl=impl, precision=HIGHEST,
                                                        **case.kwargs), x, w)
            out.append((y, *vjp(ct)))
        return out

    return run(x, w, ct)


def _random_arrays(case, seed, dtype):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case.x_shape)
    w = rng.standard_normal(case.kernel_shape)
    y_shape = jax.eval_shape(lambda a, b: _op(case)(a, b, **case.kwargs),
                             jnp.asarray(x, dtype), jnp.asarray(w, dtype)).shape
    ct = rng.standard_normal(y_shape)
    return x, w, ct


def _check_against_oracle(case, dtype, tol, seed):
    x, w, ct = _random_arrays(case, seed, dtype)
    # The oracle sees exactly the values the implementations see.
    x, w, ct = (np.asarray(np.asarray(a, dtype), np.float64) for a in (x, w, ct))
    ref = oracle.run_case(case, x, w, ct)
    outs = _impl_outputs(case, *(jnp.asarray(a, dtype) for a in (x, w, ct)))
    for impl, out in zip(("lax", "patches"), outs):
        for name, got, want in zip(("value", "dx", "dw"), out, ref):
            assert got.shape == want.shape, (impl, name, got.shape, want.shape, case)
            err = relative_error(got, want)
            assert err <= tol, f"{impl} {name}: relative error {err:.3e} > {tol} for {case}"


@settings(max_examples=30, **SETTINGS)
@given(st.data())
def test_float64_both_impls_match_oracle(data):
    case = draw_case(_chooser(data))
    with jax.enable_x64(True):
        _check_against_oracle(case, np.float64, 1e-12, seed=len(case.x_shape))


@settings(max_examples=12, **SETTINGS)
@given(st.data())
def test_float64_patches_in_batch_chunks_match_oracle(data):
    """The batch-chunked patches path (one image per chunk) on random configurations."""
    case = draw_case(_chooser(data))
    with jax.enable_x64(True), mock.patch.dict(autotune.PATCH_CHUNK_BYTES,
                                               {jax.default_backend(): 1}):
        _check_against_oracle(case, np.float64, 1e-12, seed=len(case.x_shape) + 1)


def _takes_rows(case) -> bool:
    """Whether ``impl="patches"`` runs ``case`` in the row-shift form: its matmul has
    ``kernel rows x output channels`` columns (the full patch tensor's has the output channels)."""
    x = jnp.zeros(case.x_shape)
    w = jnp.zeros(case.kernel_shape)
    jaxpr = jax.make_jaxpr(lambda a, b: _op(case)(a, b, impl="patches", **case.kwargs))(x, w)
    f = jax.eval_shape(lambda a, b: _op(case)(a, b, **case.kwargs), x, w).shape[-1]
    return any(eqn.outvars[0].aval.shape[-1] == case.kernel_shape[0] * f
               for eqn in _equations(jaxpr.jaxpr) if eqn.primitive.name == "dot_general")


def _case(op, x_shape, kernel_shape, **kwargs):
    """A ``Case`` with every keyword the oracle reads (defaults filled in)."""
    extra = dict(padding_mode="zeros") if op == "conv" else dict(output_padding=0)
    return Case(op, x_shape, kernel_shape,
                {"stride": 1, "dilation": 1, "groups": 1, **extra, **kwargs}, {})


ROWS_CASES = [
    _case("conv", (2, 9, 8), (3, 8, 5), padding="SAME", dilation=2),
    _case("conv", (2, 7, 6, 4), (3, 2, 4, 5), stride=(1, 2), padding=((2, -1), (1, 0)),
          dilation=(2, 1)),
    _case("conv", (2, 6, 5, 3), (3, 3, 3, 4), padding=1, padding_mode="circular"),
    _case("conv", (1, 5, 4, 5, 2), (2, 3, 2, 2, 3), stride=(1, 2, 1), padding="VALID",
          dilation=(1, 1, 2)),
    _case("conv_transpose", (2, 5, 6, 3), (3, 3, 4, 3), padding="SAME"),
]


@pytest.mark.parametrize("case", ROWS_CASES, ids=lambda c: f"{c.op}-{len(c.x_shape) - 2}d")
def test_float64_patches_row_shift_form_matches_oracle(case):
    with jax.enable_x64(True), mock.patch.dict(autotune.PATCH_ROWS, ROWS_ALWAYS):
        assert _takes_rows(case)
        _check_against_oracle(case, np.float64, 1e-12, seed=3)
    assert not _takes_rows(case._replace(x_shape=case.x_shape[:-1] + (1,),
                                         kernel_shape=case.kernel_shape[:-2] + (1, 1)))


@settings(max_examples=12, **SETTINGS)
@given(st.data())
def test_float64_patches_row_shift_form_on_random_configurations(data):
    case = draw_case(_chooser(data))
    with jax.enable_x64(True), mock.patch.dict(autotune.PATCH_ROWS, ROWS_ALWAYS):
        assume(_takes_rows(case))
        _check_against_oracle(case, np.float64, 1e-12, seed=len(case.x_shape) + 2)


def test_row_shift_rule_on_cpu():
    """The CPU rule (RESULTS.md cpu, table rows): deep patches, few wasted rows, stride 1 down the rows."""
    def rows(x_shape, k_shape, padding="VALID", stride=1, groups=1):
        return _takes_rows(_case("conv", x_shape, k_shape, padding=padding, stride=stride,
                                 groups=groups))

    with mock.patch.dict(autotune.PATCH_ROWS, {jax.default_backend(): autotune.PATCH_ROWS["cpu"]}):
        assert rows((2, 26, 26, 32), (3, 3, 32, 64))           # the MNIST CNN's second layer
        assert rows((2, 26, 26, 8), (3, 3, 8, 4))              # depth 24
        assert not rows((2, 26, 26, 7), (3, 3, 7, 4))          # depth 21
        assert not rows((2, 28, 28, 1), (3, 3, 1, 32))         # the first layer
        assert not rows((2, 8, 8, 64), (3, 3, 64, 64), "SAME")  # 10 rows for 8
        assert rows((2, 16, 16, 64), (3, 3, 64, 64), "SAME")   # 18 rows for 16
        assert not rows((2, 16, 16, 64), (3, 3, 64, 64), stride=(2, 1))
        assert not rows((2, 16, 16, 64), (3, 3, 32, 64), groups=2)
    with mock.patch.dict(autotune.PATCH_ROWS, clear=True):
        assert not rows((2, 26, 26, 32), (3, 3, 32, 64))


@settings(max_examples=12, **SETTINGS)
@given(st.data())
def test_float32_highest_both_impls_match_oracle(data):
    case = draw_case(_chooser(data))
    _check_against_oracle(case, np.float32, 1e-5, seed=1)


@pytest.mark.slow
@settings(max_examples=6, **SETTINGS)
@given(st.data(), st.sampled_from(["lax", "patches"]))
def test_check_grads_both_modes(data, impl):
    """``jax.test_util.check_grads`` (forward and reverse mode) of the public ops."""
    case = draw_case(_chooser(data), dims=(1, 2))
    with jax.enable_x64(True):
        x, w, _ = _random_arrays(case, 0, np.float64)
        fn = jax.jit(lambda a, b: _op(case)(a, b, impl=impl, **case.kwargs))
        check_grads(fn, (jnp.asarray(x), jnp.asarray(w)), order=1, modes=("fwd", "rev"))


@pytest.mark.parametrize("impl", ["lax", "patches"])
@pytest.mark.parametrize("kw", [
    dict(stride=2, padding="SAME"), dict(stride=3, padding="SAME_LOWER"),
    dict(stride=2, padding=1, dilation=2), dict(stride=(2, 1), padding=((1, -1), (0, 2))),
    dict(stride=(1, 3), padding="VALID", dilation=(2, 1), groups=2)])
def test_conv_transpose_is_the_adjoint_of_conv(impl, kw):
    """conv_transpose(ct) == the input gradient of conv (x of ``n * stride`` elements)."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        groups = kw.get("groups", 1)
        w = jnp.asarray(rng.standard_normal((3, 2, 4 // groups, 4)))  # conv: 4 -> 4 channels
        x = jnp.asarray(rng.standard_normal((2, 12, 6, 4)))
        y, vjp = jax.vjp(lambda a: conv(a, w, impl=impl, **kw), x)
        ct = jnp.asarray(rng.standard_normal(y.shape))
        want = vjp(ct)[0]
        # output_padding restores the input size where the conv left a tail unread.
        stride = np.broadcast_to(kw["stride"], 2)
        dilation = np.broadcast_to(kw.get("dilation", 1), 2)
        pads = padding_pairs(kw["padding"], (12, 6), (3, 2), tuple(map(int, stride)),
                             tuple(map(int, dilation)))
        out_pad = []
        for n, m, s, d, k, (lo, hi) in zip((12, 6), y.shape[1:3], stride, dilation, (3, 2), pads):
            out_pad.append(int(n - ((m - 1) * s - lo - hi + d * (k - 1) + 1)))
        if isinstance(kw["padding"], str) and kw["padding"] != "VALID":
            out_pad = [0, 0]
        got = conv_transpose(ct, w, impl=impl, output_padding=tuple(out_pad), **kw)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        assert float(jnp.vdot(y, ct)) == pytest.approx(float(jnp.vdot(x, want)), rel=1e-12)


def test_conv_transpose_same_output_size_is_n_times_stride():
    x = jnp.ones((1, 5, 7, 3))
    for k, s, d in [(3, 2, 1), (1, 3, 1), (4, 2, 2), (2, 3, 1)]:
        w = jnp.ones((k, k, 2, 3))
        for padding in ("SAME", "SAME_LOWER"):
            for impl in ("lax", "patches"):
                y = jax.eval_shape(lambda x, w, s=s, d=d, padding=padding, impl=impl: conv_transpose(
                    x, w, stride=s, dilation=d, padding=padding, impl=impl), x, w)
                assert y.shape == (1, 5 * s, 7 * s, 2)


def test_padding_conventions():
    # SAME: odd extra pad high (lax/TF); SAME_LOWER: low (ONNX); int p: p both sides (PyTorch).
    assert padding_pairs("SAME", (6,), (4,), (1,), (1,)) == ((1, 2),)
    assert padding_pairs("SAME_LOWER", (6,), (4,), (1,), (1,)) == ((2, 1),)
    assert padding_pairs("SAME", (7,), (3,), (2,), (1,)) == ((1, 1),)
    assert padding_pairs(2, (6, 6), (5, 5), (1, 1), (1, 1)) == ((2, 2), (2, 2))
    assert padding_pairs((1, (0, -1)), (6, 6), (3, 3), (1, 1), (1, 1)) == ((1, 1), (0, -1))
    assert conv_output_shape((2, 7, 3), (3, 3, 8), stride=2, padding="SAME") == (2, 4, 8)
    assert conv_transpose_output_shape((2, 7, 3), (3, 4, 3), stride=2, padding=1,
                                       output_padding=1) == (2, 14, 4)


def test_depthwise_with_channel_multiplier_matches_per_channel_conv():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 6, 6, 3)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, 1, 6)), jnp.float32)  # multiplier 2
    for impl in ("lax", "patches"):
        y = conv(x, w, groups=3, impl=impl, precision=HIGHEST)
        for c in range(3):
            yc = conv(x[..., c:c + 1], w[..., 2 * c:2 * c + 2], impl="lax", precision=HIGHEST)
            np.testing.assert_allclose(y[..., 2 * c:2 * c + 2], yc, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_padding_mode_matches_explicit_numpy_pad(mode):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 5, 4, 2)).astype(np.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, 2, 3)), jnp.float32)
    np_mode = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}[mode]
    want = conv(np.pad(x, ((0, 0), (2, 1), (1, 1), (0, 0)), mode=np_mode), w, padding="VALID",
                impl="lax", precision=HIGHEST)
    for impl in ("lax", "patches"):
        got = conv(x, w, padding=((2, 1), 1), padding_mode=mode, impl=impl, precision=HIGHEST)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_pytorch_conv_and_conv_transpose_semantics():
    torch = import_torch()
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 9, 8, 4))
    xt = torch.tensor(x).permute(0, 3, 1, 2)
    # Conv2d(4, 6, 3, stride=2, padding=2, dilation=1, groups=2, padding_mode="reflect")
    wt = torch.tensor(rng.standard_normal((6, 2, 3, 3)))
    want = torch.nn.functional.conv2d(
        torch.nn.functional.pad(xt, (2, 2, 2, 2), mode="reflect"), wt, stride=2, groups=2)
    w = wt.permute(2, 3, 1, 0).numpy()  # (O, I, kh, kw) -> (kh, kw, I, O)
    # ConvTranspose2d(4, 6, (3, 2), stride=(2, 3), padding=(1, 0), output_padding=(1, 2),
    #                 dilation=(1, 2), groups=2): weight (C_in, C_out // groups, kh, kw)
    wt_t = torch.tensor(rng.standard_normal((4, 3, 3, 2)))
    want_t = torch.nn.functional.conv_transpose2d(
        xt, wt_t, stride=(2, 3), padding=(1, 0), output_padding=(1, 2), dilation=(1, 2), groups=2)
    w_t = wt_t.permute(2, 3, 1, 0).numpy()  # -> (kh, kw, C_out // groups, C_in)
    with jax.enable_x64(True):
        for impl in ("lax", "patches"):
            got = conv(jnp.asarray(x), jnp.asarray(w), stride=2, padding=2, groups=2,
                       padding_mode="reflect", impl=impl)
            np.testing.assert_allclose(got, want.permute(0, 2, 3, 1).numpy(), rtol=1e-12,
                                       atol=1e-12)
            got_t = conv_transpose(jnp.asarray(x), jnp.asarray(w_t), stride=(2, 3),
                                   padding=(1, 0), output_padding=(1, 2), dilation=(1, 2),
                                   groups=2, impl=impl)
            np.testing.assert_allclose(got_t, want_t.permute(0, 2, 3, 1).numpy(), rtol=1e-12,
                                       atol=1e-12)


def test_mixed_dtypes_promote():
    x = jnp.ones((1, 5, 5, 2), jnp.bfloat16)
    w = jnp.ones((3, 3, 2, 4), jnp.float32)
    for impl in ("lax", "patches"):
        assert conv(x, w, impl=impl).dtype == jnp.float32
        assert conv(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), impl=impl).dtype == jnp.bfloat16


def test_auto_uses_the_autotune_table(monkeypatch):
    assert autotune.choose_impl("conv", (1, 26, 26, 32), (3, 3, 32, 64), 1, backend="cpu") == "patches"
    assert autotune.choose_impl("conv", (1, 8, 8, 64), (3, 3, 64, 64), 1, backend="cpu") == "patches"
    assert autotune.choose_impl("conv_transpose", (1, 8, 8, 64), (3, 3, 64, 64), 1,
                                backend="cpu") == "lax"
    assert autotune.shape_class((1, 8, 8, 63), (3, 3, 63, 64), 1) == "narrow"
    assert autotune.shape_class((1, 26, 26, 64), (3, 3, 64, 64), 1) == "wide"
    assert autotune.choose_impl("conv", (1, 8, 8, 3), (3, 3, 3, 4), 1, backend="gpu") == "lax"
    assert autotune.choose_impl("conv_transpose", (1, 8, 3), (3, 4, 3), 1, backend="tpu") == "lax"
    assert autotune.shape_class((1, 8, 8, 4), (3, 3, 1, 8), 4) == "depthwise"
    assert autotune.shape_class((1, 8, 8, 4), (1, 1, 4, 8), 1) == "pointwise"
    assert autotune.shape_class((1, 26, 26, 64), (3, 3, 64, 64), 1, rows=True) == "rows"
    assert autotune.choose_impl("conv", (1, 16, 16, 64), (3, 3, 64, 64), 1, backend="cpu",
                                rows=True) == "patches"
    assert autotune.choose_impl("conv", (1, 16, 16, 64), (3, 3, 64, 64), 1, backend="gpu",
                                rows=True) == "lax"
    # conv and conv_transpose ask with the row-shift rule of the backend, on what they run.
    asked = []
    monkeypatch.setattr(autotune, "choose_impl", lambda *a, **k: asked.append((a, k)) or "lax")
    with mock.patch.dict(autotune.PATCH_ROWS, {jax.default_backend(): autotune.PATCH_ROWS["cpu"]}):
        conv(jnp.ones((1, 16, 16, 64)), jnp.ones((3, 3, 64, 8)), impl="auto")
        conv(jnp.ones((1, 8, 8, 64)), jnp.ones((3, 3, 64, 8)), impl="auto")
        conv_transpose(jnp.ones((1, 16, 16, 64)), jnp.ones((3, 3, 8, 64)), impl="auto")
    assert [k["rows"] for _, k in asked] == [True, False, True]
    assert asked[2][0][:3] == ("conv_transpose", (1, 16, 16, 64), (3, 3, 64, 8))
    monkeypatch.undo()
    monkeypatch.setattr(autotune, "TABLE", [
        {"backend": "*", "op": "conv", "shape": "pointwise", "impl": "lax", "note": "test"},
        {"backend": "*", "op": "*", "shape": "*", "impl": "patches", "note": "test"}])
    assert autotune.choose_impl("conv", (1, 8, 8, 4), (1, 1, 4, 8), 1) == "lax"
    assert autotune.choose_impl("conv", (1, 8, 8, 4), (3, 3, 4, 8), 1) == "patches"
    x, w = jnp.ones((1, 6, 6, 2)), jnp.ones((3, 3, 2, 2))
    np.testing.assert_allclose(conv(x, w, impl="auto"), conv(x, w, impl="lax"), rtol=1e-5)


# --------------------------------------------------------------------------
# Bad input: ValueError naming the argument, the expected and the received value.

X = jnp.ones((2, 8, 8, 4))
W = jnp.ones((3, 3, 4, 6))


@pytest.mark.parametrize("impl", ["lax", "patches"])
@pytest.mark.parametrize("call, words", [
    (lambda i: conv(X, jnp.ones((3, 3, 3, 6)), impl=i),
     ["kernel expects 3 input channels", "got input with 4 channels"]),
    (lambda i: conv(X, jnp.ones((3, 3, 2, 6)), groups=3, impl=i),
     ["groups=3 must divide the 4 input channels"]),
    (lambda i: conv(X, jnp.ones((3, 3, 2, 5)), groups=2, impl=i),
     ["groups=2 must divide the 5 output channels"]),
    (lambda i: conv(X, jnp.ones((9, 9, 4, 6)), padding="VALID", impl=i),
     ["kernel of size (9, 9)", "larger than the padded input (8, 8)"]),
    (lambda i: conv(X, jnp.ones((3, 3, 4, 6)), padding=(-3, 0), dilation=(1, 1), impl=i),
     ["larger than the padded input (2, 8)"]),
    (lambda i: conv(X, W, stride=0, impl=i),
     ["conv: stride must be an int or a sequence of ints >= 1, got 0"]),
    (lambda i: conv(X, W, dilation=(1, -1), impl=i),
     ["dilation must be an int or a sequence of ints >= 1, got (1, -1)"]),
    (lambda i: conv(jnp.ones((8, 8, 4)), W, impl=i),
     ["expected input of rank 4", "got shape (8, 8, 4)"]),
    (lambda i: conv(X, jnp.ones((4, 6)), impl=i), ["kernel must have rank 3, 4 or 5"]),
    (lambda i: conv(X, W, padding="FULL", impl=i), ["unknown padding 'FULL'", "'SAME'"]),
    (lambda i: conv(X, W, padding=(1, 2, 3), impl=i), ["padding must be", "got (1, 2, 3)"]),
    (lambda i: conv(X, W, padding_mode="mirror", impl=i),
     ["unknown padding_mode 'mirror'", "'reflect'"]),
    (lambda i: conv(X, W, padding=8, padding_mode="reflect", impl=i),
     ["padding_mode='reflect' needs padding smaller than the input size",
      "padding ((8, 8), (8, 8))", "spatial size (8, 8)"]),
    (lambda i: conv(X, W, padding=9, padding_mode="circular", impl=i),
     ["padding_mode='circular' needs padding at most the input size"]),
    (lambda i: conv_transpose(X, jnp.ones((3, 3, 6, 3)), impl=i),
     ["conv_transpose: kernel expects 3 input channels", "got input with 4 channels"]),
    (lambda i: conv_transpose(X, jnp.ones((3, 3, 2, 4)), groups=3, impl=i),
     ["groups=3 must divide the 4 input channels"]),
    (lambda i: conv_transpose(X, jnp.ones((3, 3, 2, 4)), stride=2, output_padding=2, impl=i),
     ["output_padding must be smaller than stride or dilation", "output_padding=2"]),
    (lambda i: conv_transpose(X, jnp.ones((3, 3, 2, 4)), padding=9, impl=i),
     ["crops the whole output"]),
])
def test_bad_input_raises_value_error(impl, call, words):
    with pytest.raises(ValueError) as info:
        call(impl)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_unknown_impl():
    with pytest.raises(ValueError, match="conv: unknown impl 'fast'; expected one of"):
        conv(X, W, impl="fast")
    with pytest.raises(ValueError, match="conv_transpose: unknown impl 'fast'"):
        conv_transpose(X, jnp.ones((3, 3, 2, 4)), impl="fast")
