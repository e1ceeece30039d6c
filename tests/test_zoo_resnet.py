"""ResNets of jaxconv.models against torchvision's: weights load without a mapping, same outputs.

Every model has torchvision's random initialisation and random BatchNorm
parameters and statistics. Inference logits, in float32 (matmul precision
"highest"), on random images at two sizes (a square and a non-square one),
agree within a relative error of 1e-4 (``max |diff| / max |logits|``); the
running statistics after one training forward, in float64, within 1e-5 of
the update; the parameter counts exactly (``tests/torchvision_ref.py``). One
``ZooCheck`` (one conversion, one jitted forward per mode) per model.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from jaxconv import models as zoo
from jaxconv.models.resnet import resnet
from tests.torchvision_ref import (
    init_param_count,
    numpy_init,
    random_images,
    relative_error,
    torchvision_check,
    torchvision_param_count,
)

NUM_CLASSES = 10
#: Input sizes ``(H, W)``: one square, one not; the largest models stay small.
SIZES = {
    "resnet18": [(64, 64), (96, 80)],
    "resnet34": [(64, 64), (96, 80)],
    "resnet50": [(64, 64), (96, 80)],
    "resnet101": [(32, 32), (64, 48)],
    "wide_resnet50_2": [(32, 32), (64, 48)],
    "resnext50_32x4d": [(32, 32), (64, 48)],
}
SLOW = {"resnet50", "resnet101", "wide_resnet50_2", "resnext50_32x4d"}
NAMES = [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in SIZES]
#: Training needs more than one value per channel in the last stage (2x2 at 64x64).
TRAIN_SHAPE = (2, 64, 64, 3)


def batch_shapes(name):
    return [(2, *hw, 3) for hw in SIZES[name]]


@pytest.fixture(scope="module", params=NAMES)
def check(request):
    """torchvision's model (random weights and statistics) and its conversion, one per model."""
    return torchvision_check(request.param, batch_shapes(request.param)[0], NUM_CLASSES)


def test_param_counts_equal_torchvision(check):
    check.assert_param_counts_equal(batch_shapes(check.name)[0])


def test_logits_match_torchvision_at_two_sizes(check):
    check.assert_logits_match(batch_shapes(check.name))


def test_train_forward_updates_running_statistics_as_torchvision(check):
    check.assert_statistics_match(TRAIN_SHAPE)


@pytest.mark.parametrize("name", list(SIZES))
def test_param_counts_with_1000_classes_equal_torchvision(name):
    assert init_param_count(getattr(zoo, name)(), (1, 224, 224, 3)) == torchvision_param_count(name)


def test_impl_reaches_every_convolution():
    shape = (1, 32, 32, 3)
    params, state = jax.eval_shape(lambda k: zoo.resnet50(impl="lax").init(k, shape)[1:],
                                   jax.random.key(0))
    x = jax.ShapeDtypeStruct(shape, jnp.float32)

    def jaxpr_text(impl):
        model = zoo.resnet50(impl=impl)
        return str(jax.make_jaxpr(lambda p, s, x: model.apply(p, s, x))(params, state, x))

    assert jaxpr_text("lax").count("conv_general_dilated[") == 53  # 49 + 4 downsample
    patches = jaxpr_text("patches")
    assert "conv_general_dilated" not in patches and "dot_general" in patches


def test_bfloat16_compute_dtype():
    shape = (2, 32, 32, 3)
    params, state = numpy_init(zoo.resnet18(NUM_CLASSES), shape)
    x = random_images(shape, seed=5)
    outputs = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        model = zoo.resnet18(NUM_CLASSES, impl="lax", dtype=dtype)
        outputs[dtype] = jax.jit(model.apply)(params, state, x)[0]
    assert outputs[jnp.bfloat16].dtype == jnp.bfloat16
    assert relative_error(outputs[jnp.bfloat16], outputs[jnp.float32]) < 0.05


@pytest.mark.parametrize("build, message", [
    (lambda: zoo.resnet18(0), "resnet18: num_classes must be an int >= 1, got 0"),
    (lambda: zoo.resnet50(10.0), "resnet50: num_classes must be an int >= 1, got 10.0"),
    (lambda: resnet("basic", (2, 2, 2, 2), groups=32), "resnet: basic blocks need groups=1"),
    (lambda: resnet("plain", (2, 2, 2, 2)), "resnet: unknown block 'plain'"),
    (lambda: resnet("basic", (2, 2, 2)), "resnet: layers must be 4 ints >= 1"),
    (lambda: zoo.resnet18(impl="fast"), "Conv: unknown impl 'fast'"),
])
def test_bad_arguments_fail_when_the_model_is_built(build, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        build()
