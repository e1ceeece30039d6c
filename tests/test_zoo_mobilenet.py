"""MobileNets of jaxconv.models against torchvision's: weights load without a mapping, same outputs.

torchvision's models have random weights (``weights=None``) and random
values for everything torchvision initialises to a constant (BatchNorm
parameters and running statistics, biases). Inference logits, in float32
with matmul precision "highest" (``ZooCheck`` traces the jitted forward under
``jax.default_matmul_precision("highest")``: full float32 convolutions and
matmuls, no TF32 or bfloat16 passes, on every backend), on random images at
two sizes (a square and a non-square one), agree within a relative error of
1e-4 (``max |diff| / max |logits|``); one training forward updates every
BatchNorm's running statistics as torchvision's does (float64, within 1e-5
of the update); parameter counts are equal. One conversion and one compile
per model and size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv.models.mobilenet import make_divisible, mobilenet_v2, mobilenet_v3_large, mobilenet_v3_small
from tests.test_convert_torchvision import randomize_parameters
from tests.torchvision_ref import ZooCheck, import_torchvision, init_param_count, numpy_init, torchvision_param_count

NUM_CLASSES = 10
#: Input shapes: one square, one not (the last feature maps are 2x2 and 3x3).
SIZES = [(2, 64, 64, 3), (2, 96, 80, 3)]
MODELS = {"mobilenet_v2": mobilenet_v2, "mobilenet_v3_small": mobilenet_v3_small,
          "mobilenet_v3_large": mobilenet_v3_large}
NAMES = ["mobilenet_v3_small", pytest.param("mobilenet_v2", marks=pytest.mark.slow),
         pytest.param("mobilenet_v3_large", marks=pytest.mark.slow)]


@pytest.fixture(scope="module", params=NAMES)
def check(request):
    """torchvision's model (random weights and statistics) and its conversion, one per model."""
    name = request.param
    torch_model = getattr(import_torchvision().models, name)(weights=None, num_classes=NUM_CLASSES)
    model = MODELS[name](NUM_CLASSES, impl="lax")
    return ZooCheck(randomize_parameters(torch_model, seed=1), model, SIZES[0], name=name)


def test_param_counts_equal_torchvision(check):
    check.assert_param_counts_equal(SIZES[0])


def test_logits_match_torchvision_at_two_sizes(check):
    check.assert_logits_match(SIZES)


def test_train_forward_updates_batch_norm_statistics_as_torchvision(check):
    check.assert_statistics_match(SIZES[0])


# --------------------------------------------------------------------------
# Helpers shared with the EfficientNet and ConvNeXt tests.


def child(layer, path):
    """The sub-layer of ``layer`` at the params path ``path`` (``"features/1/body"``)."""
    for key in path.split("/"):
        layer = dict(layer.children)[key]
    return layer


def equations(jaxpr):
    """The equations of ``jaxpr`` and of the jaxprs nested in them (jitted functions)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            inner = getattr(value, "jaxpr", value)
            if hasattr(inner, "eqns"):
                yield from equations(inner)


def products(model, input_shape, dtype=np.float32):
    """The convolution and matmul equations of one inference forward (traced, not compiled)."""
    params, state = jax.eval_shape(lambda k: model.init(k, input_shape)[1:], jax.random.key(0))
    x = jax.ShapeDtypeStruct(input_shape, dtype)
    jaxpr = jax.make_jaxpr(lambda p, s, x: model.apply(p, s, x)[0])(params, state, x)
    return jaxpr, [e for e in equations(jaxpr.jaxpr)
                   if e.primitive.name in ("conv_general_dilated", "dot_general")]


def assert_computes_in(model, dtype, input_shape=(2, 32, 32, 3)):
    """Every convolution and matmul of ``model`` takes ``dtype`` operands; so does its output."""
    jaxpr, eqns = products(model, input_shape)
    assert eqns
    wrong = [(e.primitive.name, [v.aval.dtype for v in e.invars]) for e in eqns
             if any(v.aval.dtype != dtype for v in e.invars)]
    assert not wrong, wrong[:3]
    assert jaxpr.out_avals[0].dtype == dtype


def drop_path_scale(layer, rows=256, seed=0):
    """The factor a ``DropPath`` layer scales kept rows by in training (``1 / (1 - rate)``), from
    one training forward on ones; also checks that every row is kept whole or dropped."""
    y, _ = layer.apply({}, {}, jnp.ones((rows, 2, 2, 3)), key=jax.random.key(seed), train=True)
    y = np.asarray(y).reshape(rows, -1)
    assert np.all(y == y[:, :1]) and np.any(y != 0)
    return float(y[y != 0].max())


# --------------------------------------------------------------------------
# Construction.


@pytest.mark.parametrize("name", sorted(MODELS))
def test_param_counts_for_1000_classes(name):
    assert init_param_count(MODELS[name](), (1, 224, 224, 3)) == torchvision_param_count(name)


def test_make_divisible_rounds_as_torchvision():
    assert [make_divisible(v) for v in (3, 8, 12, 16 * 0.75, 72 // 4, 100, 37.5)] == [
        8, 8, 16, 16, 24, 104, 40]
    assert make_divisible(96 // 4) == 24 and make_divisible(5, 8, min_value=2) == 8


def test_blocks_skip_where_torchvision_adds_the_input():
    torch_model = import_torchvision().models.mobilenet_v3_large(weights=None)
    model = mobilenet_v3_large()
    for i, block in enumerate(torch_model.features[1:-1], start=1):
        assert (child(model, f"features/{i}").kind == "residual") == block.use_res_connect, i


@pytest.mark.parametrize("name", sorted(MODELS))
def test_dtype_bfloat16_runs_every_convolution_and_matmul_in_bfloat16(name):
    assert_computes_in(MODELS[name](NUM_CLASSES, dtype=jnp.bfloat16), jnp.bfloat16)


def test_impl_patches_has_no_convolution_primitive():
    _, eqns = products(mobilenet_v3_small(NUM_CLASSES, impl="patches"), (2, 32, 32, 3))
    assert {e.primitive.name for e in eqns} == {"dot_general"}
    _, eqns = products(mobilenet_v3_small(NUM_CLASSES, impl="lax"), (2, 32, 32, 3))
    assert "conv_general_dilated" in {e.primitive.name for e in eqns}


@pytest.mark.slow
def test_impl_patches_computes_what_lax_does():
    x = np.random.RandomState(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
    outputs = []
    for impl in ("lax", "patches"):
        model = mobilenet_v3_small(NUM_CLASSES, impl=impl)
        params, state = numpy_init(model, x.shape)
        with jax.default_matmul_precision("highest"):
            outputs.append(jax.jit(lambda p, s, x, m=model: m.apply(p, s, x)[0])(params, state, x))
    np.testing.assert_allclose(outputs[1], outputs[0], rtol=1e-4, atol=1e-4 * np.abs(outputs[0]).max())


@pytest.mark.parametrize("factory", [mobilenet_v2, mobilenet_v3_small, mobilenet_v3_large])
def test_bad_arguments_name_the_model_and_argument(factory):
    name = factory.__name__
    with pytest.raises(ValueError, match=rf"{name}: num_classes must be an int >= 1, got 0"):
        factory(0)
    with pytest.raises(ValueError, match=rf"{name}: dropout must be .*< 1.*got 1.0"):
        factory(dropout=1.0)
