"""PyTorch converter fault injection: object, text and complex tensors are refused by name.

Before, a bias of ``None`` entries became a NaN bias and a complex weight lost
its imaginary part silently. Each probe checks that the error names the
tensor, that the caller's state_dict is untouched, and that the good
state_dict still converts to the same weights (nothing lost).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

import jaxconv as jc
from jaxconv import convert

MODEL = jc.serial(jc.Conv(4, 3, padding="VALID", impl="lax"), jc.BatchNorm(), jc.Relu(),
                  jc.Flatten(), jc.Dense(3))
INPUT_SHAPE = (-1, 4, 4, 2)


def rand(*shape, seed=0):
    return np.random.RandomState(seed).randn(*shape).astype(np.float32)


def state_dict():
    return {"0.weight": rand(4, 2, 3, 3), "0.bias": rand(4, seed=1),
            "1.weight": rand(4, seed=2), "1.bias": rand(4, seed=3), "1.running_mean": rand(4, seed=4),
            "1.running_var": np.abs(rand(4, seed=5)) + 0.5, "1.num_batches_tracked": np.array(3),
            "3.weight": rand(3, 16, seed=6), "3.bias": rand(3, seed=7)}


def with_none(a):
    out = a.astype(object)
    out.flat[0] = None
    return out


@pytest.fixture(scope="module")
def reference():
    return convert.load_torch_state_dict(MODEL, INPUT_SHAPE, state_dict())


BAD_VALUES = {
    "None entries": (lambda a: np.array([None] * a.size, dtype=object).reshape(a.shape),
                     r"expected an array of numbers, got dtype object"),
    "numbers as objects": (lambda a: a.astype(object),
                           r"expected an array of numbers, got dtype object"),
    "nested lists with a None": (lambda a: with_none(a).tolist(),
                                 r"expected an array of numbers, got dtype object"),
    "text": (lambda a: a.astype(str), r"expected an array of numbers, got dtype <U"),
    "complex64": (lambda a: a.astype(np.complex64) * (1 + 1j),
                  r"expected a real array, got dtype complex64; .*imaginary parts would be lost"),
    "complex128 with zero imaginary parts": (lambda a: a.astype(np.complex128),
                                             r"expected a real array, got dtype complex128"),
}


@pytest.mark.parametrize("tensor", ["0.weight", "1.running_var", "3.bias"])
@pytest.mark.parametrize("kind", sorted(BAD_VALUES))
def test_non_numeric_and_complex_tensors_are_refused_by_name(reference, tensor, kind):
    make, message = BAD_VALUES[kind]
    sd = state_dict()
    sd[tensor] = make(sd[tensor])
    kept = copy.deepcopy(sd)
    with pytest.raises(ValueError, match=rf"convert: {tensor}: {message}"):
        convert.load_torch_state_dict(MODEL, INPUT_SHAPE, sd)
    for name, value in kept.items():  # the caller's state_dict is untouched
        np.testing.assert_array_equal(np.asarray(sd[name]), np.asarray(value))
    params, state = convert.load_torch_state_dict(MODEL, INPUT_SHAPE, state_dict())
    for got, want in ((params, reference[0]), (state, reference[1])):
        for path in ("conv0", "dense0", "batch_norm0"):
            for key in want.get(path, {}):
                np.testing.assert_array_equal(got[path][key], want[path][key])


def test_layout_helpers_refuse_them_too():
    with pytest.raises(ValueError, match=r"convert: conv1: expected a real array, got dtype complex64"):
        convert.conv_kernel(rand(2, 2, 3, 3).astype(np.complex64), name="conv1")
    with pytest.raises(ValueError, match=r"convert: fc: expected an array of numbers, got dtype object"):
        convert.dense_kernel(np.array([[None, 1.0]], dtype=object), name="fc")
    with pytest.raises(ValueError, match=r"convert: bn.running_mean: expected an array of numbers"):
        convert.batch_norm(np.ones(2), np.zeros(2), [None, None], np.ones(2), name="bn")
    p, s = convert.batch_norm(np.ones(2), np.zeros(2, np.float16), np.zeros(2, np.int32),
                              np.ones(2, bool), name="bn")  # real numbers of any kind still pass
    assert s["var"].dtype == bool and p["bias"].dtype == np.float16
