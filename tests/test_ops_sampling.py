"""ops.resize, pixel_shuffle and pixel_unshuffle against PyTorch.

Two levels of check, both in float64:

- the per-axis tables (source indices and weights) against the interpolation
  matrix PyTorch produces from an identity basis, over a sweep of sizes and
  scale factors for every method, rank and ``align_corners`` (NumPy and
  PyTorch only, no JAX compile, so the sweep is cheap);
- ``resize`` itself (channels-last, several axes at once) against
  ``torch.nn.functional.interpolate``: values, and the gradient as ``jax.vjp``
  with a random cotangent against torch autograd.

The tables and PyTorch compute the same positions and weights in float64, so
the only differences are the order of the additions: tolerance ``1e-12``.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv.ops.sampling import axis_taps, pixel_shuffle, pixel_unshuffle, resize
from tests.torch_ref import import_torch

TOL = 1e-12  # float64 against float64: summation order only

TORCH_MODE = {("linear", 1): "linear", ("linear", 2): "bilinear", ("linear", 3): "trilinear"}
INTERPOLATING = ("linear", "bilinear", "trilinear", "bicubic")


def torch_interpolate(x, cotangent, method, align_corners, **sizing):
    """PyTorch's interpolate on a channels-last array: ``(y, d<y, cotangent>/dx)``, channels-last."""
    torch = import_torch()
    nd = x.ndim - 2
    mode = TORCH_MODE.get((method, nd), method)
    xt = torch.from_numpy(np.moveaxis(x, -1, 1).copy()).requires_grad_()
    yt = torch.nn.functional.interpolate(
        xt, mode=mode, align_corners=align_corners if method in INTERPOLATING else None, **sizing)
    yt.backward(torch.from_numpy(np.moveaxis(cotangent, -1, 1).copy()))
    return np.moveaxis(yt.detach().numpy(), 1, -1), np.moveaxis(xt.grad.numpy(), 1, -1)


# --------------------------------------------------------------------------
# The tables: one axis, a sweep of sizes and factors.

SWEEP_SIZES = (1, 2, 3, 4, 5, 7, 8, 13)
SWEEP_FACTORS = (0.25, 0.6, 0.7, 1.0, 1.1, 1.7, 2.1, 2.5, 4.0)
TABLE_CASES = [("nearest", nd, False) for nd in (1, 2, 3)] + [
    ("nearest-exact", nd, False) for nd in (1, 2)] + [
    (method, nd, ac) for method, nd in (("linear", 1), ("bilinear", 2), ("trilinear", 3),
                                        ("bicubic", 2)) for ac in (False, True)]


def dense_table(n_in, n_out, factor, method, align_corners, nd):
    """The ``(n_in, n_out)`` matrix of weights that the taps of one axis apply."""
    index, weight = axis_taps(n_in, n_out, factor, method, align_corners, nd)
    table = np.zeros((n_in, n_out))
    np.add.at(table, (index, np.arange(n_out)[:, None]), weight)
    return table


def torch_table(n_in, method, align_corners, nd, **sizing):
    """PyTorch's weights on the first spatial axis (the others have size 1): resize an identity."""
    torch = import_torch()
    basis = torch.eye(n_in, dtype=torch.float64).reshape((n_in, 1, n_in) + (1,) * (nd - 1))
    y = torch.nn.functional.interpolate(
        basis, mode=method, align_corners=align_corners if method in INTERPOLATING else None,
        **sizing)
    return y.reshape(n_in, -1).numpy()


@pytest.mark.parametrize("method,nd,align_corners", TABLE_CASES)
def test_axis_tables_match_torch(method, nd, align_corners):
    checked = 0
    for n_in in SWEEP_SIZES:
        for n_out in SWEEP_SIZES:
            want = torch_table(n_in, method, align_corners, nd, size=(n_out,) + (1,) * (nd - 1))
            got = dense_table(n_in, n_out, None, method, align_corners, nd)
            np.testing.assert_allclose(got, want, rtol=0, atol=TOL, err_msg=f"{n_in}->{n_out}")
            checked += 1
        for factor in SWEEP_FACTORS:
            n_out = int(n_in * factor)
            if n_out < 1:
                continue
            want = torch_table(n_in, method, align_corners, nd,
                               scale_factor=(factor,) + (1.0,) * (nd - 1))
            got = dense_table(n_in, n_out, factor, method, align_corners, nd)
            np.testing.assert_allclose(got, want, rtol=0, atol=TOL,
                                       err_msg=f"{n_in} * {factor} -> {n_out}")
            checked += 1
    assert checked > 100


def test_nearest_floors_in_single_precision():
    # 31 * 1.3 -> 40: at output 39, 39 * (1 / 1.3) is 29.999999999999996 in float64 and 30 in
    # float32; PyTorch floors the float32 value (floorf), whatever the input dtype.
    assert np.floor(39 * (1 / 1.3)) == 29
    for nd in (1, 2, 3):
        want = torch_table(31, "nearest", False, nd, scale_factor=(1.3,) + (1.0,) * (nd - 1))
        got = dense_table(31, 40, 1.3, "nearest", False, nd)
        np.testing.assert_array_equal(got, want)
        assert got[30, 39] == 1


def test_scale_factor_uses_its_inverse_not_the_size_ratio():
    # 5 * 1.7 -> 8 outputs: the mapping uses 1/1.7, not 5/8 (PyTorch, recompute_scale_factor unset).
    by_factor = dense_table(5, 8, 1.7, "linear", False, 1)
    by_size = dense_table(5, 8, None, "linear", False, 1)
    assert np.abs(by_factor - by_size).max() > 0.1


# --------------------------------------------------------------------------
# resize: channels-last arrays, all axes at once, values and gradients.

# Per rank, (input shape, sizing) pairs: a size and a non-integer scale factor, together
# covering 5 -> 7, 7 -> 3, 1 -> 4, factors 1.7, 0.6 and 2.5.
SIZINGS = {
    1: [((2, 7, 3), dict(size=3)), ((2, 7, 3), dict(scale_factor=1.7))],
    2: [((2, 5, 7, 3), dict(size=(7, 3))), ((2, 1, 5, 3), dict(scale_factor=(4, 0.6)))],
    3: [((1, 5, 7, 1, 2), dict(size=(7, 3, 4))), ((1, 5, 7, 1, 2), dict(scale_factor=(0.6, 1.7, 2.5)))],
}
RANK_METHODS = {1: ("nearest", "nearest-exact", "linear"),
                2: ("nearest", "nearest-exact", "bilinear", "bicubic"),
                3: ("nearest", "nearest-exact", "trilinear")}
RESIZE_CASES = [
    (shape, method, ac, sizing)
    for nd, methods in RANK_METHODS.items() for method in methods
    for ac in ((False, True) if method in INTERPOLATING else (False,))
    for shape, sizing in SIZINGS[nd]
] + [((2, 5, 7, 3), method, False, dict(scale_factor=2)) for method in ("nearest", "bilinear")]


def _case_id(case):
    shape, method, ac, sizing = case
    (kind, value), = sizing.items()
    return f"{len(shape) - 2}d-{method}-{'ac' if ac else 'hc'}-{kind}{value}"


def _resize_and_vjp(x, cotangent, **options):
    """``resize`` and its vjp with ``cotangent``, in one jit (one compile per case)."""
    y, vjp = jax.vjp(lambda v: resize(v, **options), x)
    return y, vjp(cotangent)[0]


@pytest.mark.parametrize("shape,method,align_corners,sizing", RESIZE_CASES,
                         ids=map(_case_id, RESIZE_CASES))
def test_resize_matches_torch_values_and_gradients(shape, method, align_corners, sizing):
    rng = np.random.RandomState(len(shape))
    x = rng.randn(*shape)
    options = dict(method=method, align_corners=align_corners, **sizing)
    with jax.enable_x64(True):
        out_shape = jax.eval_shape(lambda v: resize(v, **options), x).shape
        cotangent = rng.randn(*out_shape)
        y, dx = jax.jit(functools.partial(_resize_and_vjp, **options))(x, cotangent)
        assert y.dtype == jnp.float64 and dx.dtype == jnp.float64
    want_y, want_dx = torch_interpolate(x, cotangent, method, align_corners, **sizing)
    assert y.shape == want_y.shape
    np.testing.assert_allclose(y, want_y, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(dx, want_dx, rtol=TOL, atol=TOL)


def test_linear_is_the_rank_generic_name():
    x = jax.ShapeDtypeStruct((2, 5, 7, 3), jnp.float32)
    for ac in (False, True):
        linear, bilinear = (jax.make_jaxpr(functools.partial(
            resize, size=(7, 3), method=method, align_corners=ac))(x) for method in ("linear", "bilinear"))
        assert str(linear) == str(bilinear)


def test_float32_and_dtypes():
    x = np.random.RandomState(1).randn(2, 5, 7, 3).astype(np.float32)
    bicubic = functools.partial(resize, size=(7, 3), method="bicubic", align_corners=True)
    want, _ = torch_interpolate(x.astype(np.float64), np.zeros((2, 7, 3, 3)), "bicubic", True,
                                size=(7, 3))
    y = jax.jit(bicubic)(x)
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)  # float32 rounding
    bf16 = jax.ShapeDtypeStruct((1, 3, 4, 1), jnp.bfloat16)
    assert jax.eval_shape(lambda v: resize(v, scale_factor=2, method="bilinear"), bf16).dtype == bf16.dtype
    ints = np.arange(12, dtype=np.int32).reshape(1, 3, 4, 1)
    nearest = resize(ints, scale_factor=2)
    assert nearest.dtype == jnp.int32
    np.testing.assert_array_equal(nearest[0, :, :, 0], ints[0, :, :, 0].repeat(2, 0).repeat(2, 1))
    as_float = jax.eval_shape(lambda v: resize(v, size=(5, 5), method="bilinear"), ints)
    assert as_float.dtype == jnp.float32


def test_unchanged_axis_is_not_resampled():
    # PyTorch copies a linear axis whose size does not change, even with scale_factor 1.1;
    # resize skips such an axis (no gather), and an unchanged input is returned as is.
    x = np.random.RandomState(2).randn(1, 5, 4, 1).astype(np.float32)
    along_one_axis = lambda v: resize(v, scale_factor=(1.1, 2.0), method="bilinear")  # noqa: E731
    np.testing.assert_array_equal(along_one_axis(x), resize(x, size=(5, 8), method="bilinear"))
    assert str(jax.make_jaxpr(along_one_axis)(x)).count("gather") == 1
    unchanged = lambda v: resize(v, size=(5, 4), method="bicubic")  # noqa: E731
    np.testing.assert_array_equal(unchanged(x), x)
    assert "gather" not in str(jax.make_jaxpr(unchanged)(x))


# --------------------------------------------------------------------------
# pixel_shuffle / pixel_unshuffle.


def reference_shuffle(x, r):
    """Input channel ``c * r**nd + k`` lands at sub-position ``k`` (row-major) of output channel ``c``."""
    n, *spatial, channels = x.shape
    nd = len(spatial)
    out = np.zeros((n, *(s * r for s in spatial), channels // r**nd), x.dtype)
    for k, sub in enumerate(itertools.product(range(r), repeat=nd)):
        out[(slice(None), *(slice(s, None, r) for s in sub))] = x[..., k::r**nd]
    return out


def test_pixel_shuffle_matches_torch_channel_order():
    torch = import_torch()
    x = np.random.RandomState(3).randn(2, 3, 4, 12).astype(np.float32)
    want = torch.nn.functional.pixel_shuffle(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), 2)
    y = pixel_shuffle(x, 2)
    np.testing.assert_array_equal(y, want.numpy().transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(y, reference_shuffle(x, 2))
    z = np.random.RandomState(4).randn(2, 6, 9, 2).astype(np.float32)
    want = torch.nn.functional.pixel_unshuffle(torch.from_numpy(z.transpose(0, 3, 1, 2).copy()), 3)
    np.testing.assert_array_equal(pixel_unshuffle(z, 3), want.numpy().transpose(0, 2, 3, 1))


@pytest.mark.parametrize("shape,r", [((2, 5, 6), 3), ((1, 2, 3, 2, 16), 2), ((2, 3, 4, 4), 1)])
def test_pixel_shuffle_any_rank_and_inverse(shape, r):
    x = np.random.RandomState(5).randn(*shape).astype(np.float32)
    y = pixel_shuffle(x, r)
    np.testing.assert_array_equal(y, reference_shuffle(x, r))
    np.testing.assert_array_equal(pixel_unshuffle(y, r), x)


# --------------------------------------------------------------------------
# Errors.

X2 = np.zeros((1, 5, 4, 2))


@pytest.mark.parametrize("call,words", [
    (lambda: resize(X2), "resize: give exactly one of size and scale_factor"),
    (lambda: resize(X2, size=3, scale_factor=2), "got size=3 and scale_factor=2"),
    (lambda: resize(X2, size=3, method="cubic"), "resize: unknown method 'cubic'; expected one of"),
    (lambda: resize(X2, size=3, align_corners=True), "align_corners=True is only defined for the "
                                                     "interpolating methods"),
    (lambda: resize(X2, size=3, method="linear", align_corners=1), "align_corners must be True or "
                                                                   "False, got 1"),
    (lambda: resize(X2[:, 0], size=3, method="bilinear"), "resize: method 'bilinear' expects input "
                                                          "of rank 4 (N, 2 spatial dims, C), got "
                                                          "shape (1, 4, 2); use method='linear'"),
    (lambda: resize(X2[..., None], size=3, method="bicubic"), "'bicubic' expects input of rank 4"),
    (lambda: resize(X2, size=3, method="trilinear"), "'trilinear' expects input of rank 5"),
    (lambda: resize(X2, size=(3, 3, 3)), "resize: size must be an int or a sequence of 2 ints >= 1"),
    (lambda: resize(X2, size=0), "size must be an int or a sequence of ints >= 1, got 0"),
    (lambda: resize(X2, scale_factor=0), "resize: scale_factor must be a number > 0"),
    (lambda: resize(X2, scale_factor=float("nan")), "scale_factor must be a number > 0"),
    (lambda: resize(X2, scale_factor=float("inf")), "scale_factor must be a number > 0"),
    (lambda: resize(X2, scale_factor="2"), "scale_factor must be a number > 0"),
    (lambda: resize(X2, scale_factor=(2, -1)), "got (2, -1)"),
    (lambda: resize(X2, scale_factor=(2, 2, 2)), "sequence of 2 numbers > 0, got (2, 2, 2)"),
    (lambda: resize(X2, scale_factor=0.2), "maps the spatial shape (5, 4) of input (1, 5, 4, 2) "
                                           "to (1, 0); every size must be >= 1"),
    (lambda: resize(X2[0, 0], size=3), "resize: expected input of rank 3, 4 or 5 (N, *spatial, C), "
                                          "got shape (4, 2)"),
    (lambda: pixel_shuffle(np.zeros((1, 4, 4, 6)), 2), "pixel_shuffle: expected input (N, *spatial, "
                                                       "C * r**2) with a channel count divisible by "
                                                       "r**2 = 4 (r=2), got shape (1, 4, 4, 6)"),
    (lambda: pixel_shuffle(X2, 0), "pixel_shuffle: r must be an int >= 1, got 0"),
    (lambda: pixel_unshuffle(X2, 2), "pixel_unshuffle: expected input (N, *spatial, C) with every "
                                     "spatial size divisible by r=2, got shape (1, 5, 4, 2)"),
    (lambda: pixel_unshuffle(X2, 2.0), "pixel_unshuffle: r must be an int >= 1, got 2.0"),
])
def test_bad_arguments(call, words):
    with pytest.raises(ValueError) as err:
        call()
    assert words in str(err.value)
