"""Upsample, PixelShuffle, PixelUnshuffle: the layer contract, agreement with the ops and PyTorch, errors."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import jaxconv as jc
from jaxconv.layers.upsample import PixelShuffle, PixelUnshuffle, Upsample
from jaxconv.ops.sampling import pixel_shuffle, pixel_unshuffle, resize
from tests.contract import check_layer_contract, random_input
from tests.torch_ref import import_torch

LAYERS = [
    (Upsample(2), (-1, 3, 4, 2), lambda x: resize(x, scale_factor=2)),
    (Upsample(size=(7, 3), method="bicubic", align_corners=True), (-1, 5, 7, 2),
     lambda x: resize(x, size=(7, 3), method="bicubic", align_corners=True)),
    (Upsample(0.6, method="linear"), (-1, 7, 3), lambda x: resize(x, scale_factor=0.6, method="linear")),
    (Upsample(size=4, method="trilinear"), (-1, 1, 3, 2, 2),
     lambda x: resize(x, size=4, method="trilinear")),
    (PixelShuffle(2), (-1, 3, 4, 8), lambda x: pixel_shuffle(x, 2)),
    (PixelUnshuffle(2), (-1, 4, 6, 2), lambda x: pixel_unshuffle(x, 2)),
]


@pytest.mark.parametrize("layer,shape,op", LAYERS, ids=[f"{layer.kind}{i}" for i, (layer, _, _)
                                                        in enumerate(LAYERS)])
def test_contract_and_matches_op(layer, shape, op):
    params, state, x, y = check_layer_contract(layer, shape)
    assert params == {} and state == {}
    np.testing.assert_array_equal(y, op(x))


def test_declared_shapes_without_compute():
    assert Upsample(2).init(None, (-1, 16, 16, 3))[0] == (-1, 32, 32, 3)
    assert Upsample((1.7, 0.6)).init(None, (8, 5, 7, 3))[0] == (8, 8, 4, 3)
    assert Upsample(np.float32(2.5), method="linear").init(None, (-1, 3, 1))[0] == (-1, 7, 1)
    assert Upsample(size=(4, 5, 6), method="trilinear").init(None, (-1, 2, 2, 2, 1))[0] == (
        -1, 4, 5, 6, 1)
    assert PixelShuffle(2).init(None, (-1, 8, 8, 12))[0] == (-1, 16, 16, 3)
    assert PixelUnshuffle(3).init(None, (-1, 9, 6, 2))[0] == (-1, 3, 2, 18)
    assert PixelShuffle(2).init(None, (-1, 2, 3, 4, 16))[0] == (-1, 4, 6, 8, 2)


def test_pixel_layers_match_torch_modules():
    torch = import_torch()
    x = random_input((2, 3, 4, 12), key=3)
    to_torch = lambda a: torch.from_numpy(np.asarray(a).transpose(0, 3, 1, 2).copy())  # noqa: E731
    want = torch.nn.PixelShuffle(2)(to_torch(x)).numpy().transpose(0, 2, 3, 1)
    y, _ = PixelShuffle(2).apply({}, {}, x)
    np.testing.assert_array_equal(y, want)
    want = torch.nn.PixelUnshuffle(2)(to_torch(y)).numpy().transpose(0, 2, 3, 1)
    z, _ = PixelUnshuffle(2).apply({}, {}, y)
    np.testing.assert_array_equal(z, want)
    np.testing.assert_array_equal(z, x)


def test_in_serial_with_unknown_batch():
    model = jc.serial(PixelUnshuffle(2), Upsample(size=(3, 2), method="bilinear"),
                      PixelShuffle(2))
    out, params, state = model.init(jax.random.PRNGKey(0), (-1, 4, 6, 3))
    assert out == (-1, 6, 4, 3)
    x = random_input((2, 4, 6, 3))
    y, _ = model.apply(params, state, x)
    expected = pixel_shuffle(resize(pixel_unshuffle(x, 2), size=(3, 2), method="bilinear"), 2)
    np.testing.assert_array_equal(y, expected)


@pytest.mark.parametrize("make,words", [
    (lambda: Upsample(), "Upsample: give exactly one of size and scale_factor"),
    (lambda: Upsample(2, size=4), "Upsample: give exactly one of size and scale_factor, got size=4 "
                                  "and scale_factor=2"),
    (lambda: Upsample(2, method="area"), "Upsample: unknown method 'area'; expected one of"),
    (lambda: Upsample(2, align_corners=True), "Upsample: align_corners=True is only defined for the "
                                              "interpolating methods"),
    (lambda: Upsample(2, method="bilinear", align_corners="yes"), "Upsample: align_corners must be "
                                                                  "True or False, got 'yes'"),
    (lambda: Upsample(0), "Upsample: scale_factor must be a number > 0"),
    (lambda: Upsample((2, -1.5)), "Upsample: scale_factor must be a number > 0 or a sequence of "
                                  "numbers > 0, got (2, -1.5)"),
    (lambda: Upsample(size=(4, 0)), "Upsample: size must be an int or a sequence of ints >= 1, "
                                    "got (4, 0)"),
    (lambda: Upsample(size=2.5), "Upsample: size must be an int"),
    (lambda: PixelShuffle(0), "PixelShuffle: r must be an int >= 1, got 0"),
    (lambda: PixelShuffle(2.0), "PixelShuffle: r must be an int >= 1, got 2.0"),
    (lambda: PixelUnshuffle(True), "PixelUnshuffle: r must be an int >= 1, got True"),
])
def test_factory_errors(make, words):
    with pytest.raises(ValueError) as err:
        make()
    assert words in str(err.value)


@pytest.mark.parametrize("layer,shape,words", [
    (Upsample(2), (-1, 8), "Upsample: expected input of rank 3, 4 or 5 (N, *spatial, C), got shape "
                           "(-1, 8)"),
    (Upsample(2, method="bilinear"), (-1, 8, 3), "Upsample: method 'bilinear' expects input of "
                                                 "rank 4 (N, 2 spatial dims, C), got shape (-1, 8, 3)"),
    (Upsample(2, method="bicubic"), (-1, 4, 4, 4, 3), "Upsample: method 'bicubic' expects input of "
                                                      "rank 4"),
    (Upsample(size=(3, 3)), (-1, 4, 4, 4, 3), "Upsample: size must be an int or a sequence of 3 "
                                              "ints >= 1, got (3, 3)"),
    (Upsample((2, 2)), (-1, 4, 3), "Upsample: scale_factor must be a number > 0 or a sequence of "
                                   "1 numbers > 0, got (2, 2)"),
    (Upsample(0.2), (-1, 4, 9, 3), "Upsample: scale_factor 0.2 maps the spatial shape (4, 9) of "
                                   "input (-1, 4, 9, 3) to (0, 1); every size must be >= 1"),
    (PixelShuffle(2), (-1, 4, 4, 6), "PixelShuffle: expected input (N, *spatial, C * r**2) with a "
                                     "channel count divisible by r**2 = 4 (r=2), got shape "
                                     "(-1, 4, 4, 6)"),
    (PixelShuffle(2), (-1, 8), "PixelShuffle: expected input of rank 3, 4 or 5"),
    (PixelUnshuffle(2), (-1, 4, 5, 3), "PixelUnshuffle: expected input (N, *spatial, C) with every "
                                       "spatial size divisible by r=2, got shape (-1, 4, 5, 3)"),
])
def test_init_errors(layer, shape, words):
    with pytest.raises(ValueError) as err:
        layer.init(jax.random.PRNGKey(0), shape)
    assert words in str(err.value)


@pytest.mark.parametrize("layer,good,bad,words", [
    (Upsample(2, method="bilinear"), (1, 4, 4, 1), (4, 4, 1), "Upsample: method 'bilinear' expects "
                                                              "input of rank 4"),
    (PixelShuffle(2), (1, 2, 2, 4), (1, 2, 2, 3), "PixelShuffle: expected input (N, *spatial, "
                                                  "C * r**2)"),
    (PixelUnshuffle(2), (1, 4, 4, 1), (1, 4, 3, 1), "PixelUnshuffle: expected input (N, *spatial, "
                                                    "C) with every spatial size divisible by r=2, "
                                                    "got shape (1, 4, 3, 1)"),
])
def test_apply_errors_name_the_layer(layer, good, bad, words):
    _, params, state = layer.init(None, good)
    with pytest.raises(ValueError) as err:
        layer.apply(params, state, np.zeros(bad, np.float32))
    assert words in str(err.value)
