"""VGGs of jaxconv.models against torchvision's: weights load without a mapping, same outputs.

As tests/test_zoo_resnet.py: torchvision's random initialisation with random
BatchNorm parameters and statistics; float32 inference logits at two sizes
within a relative error of 1e-4; for the ``_bn`` variants, the running
statistics after one training forward (float64) within 1e-5 of the update;
equal parameter counts. VGG's adaptive average pool makes small inputs
(32x32, where the features end at 1x1) as good as 224x224 for the check.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxconv import models as zoo
from jaxconv.models.vgg import vgg
from tests.torchvision_ref import init_param_count, torchvision_check, torchvision_param_count

NUM_CLASSES = 10
SIZES = [(2, 32, 32, 3), (2, 64, 48, 3)]
NAMES = ["vgg11", "vgg11_bn", pytest.param("vgg16", marks=pytest.mark.slow),
         pytest.param("vgg16_bn", marks=pytest.mark.slow)]


@pytest.fixture(scope="module", params=NAMES)
def check(request):
    """torchvision's model (random weights and statistics) and its conversion, one per model."""
    return torchvision_check(request.param, SIZES[0], NUM_CLASSES)


def test_param_counts_equal_torchvision(check):
    check.assert_param_counts_equal(SIZES[0])


def test_logits_match_torchvision_at_two_sizes(check):
    check.assert_logits_match(SIZES)


def test_train_forward_updates_running_statistics_as_torchvision(check):
    if check.name.endswith("_bn"):
        check.assert_statistics_match(SIZES[0])
    else:  # no BatchNorm, no statistics
        assert not jax.tree_util.tree_leaves(check.state)


@pytest.mark.parametrize("name", ["vgg11", "vgg11_bn", "vgg16", "vgg16_bn"])
def test_param_counts_with_1000_classes_equal_torchvision(name):
    assert init_param_count(getattr(zoo, name)(), (1, 224, 224, 3)) == torchvision_param_count(name)


def test_first_linear_columns_are_reordered_from_channels_first(check):
    # torchvision flattens (N, 512, 7, 7) to column c*49 + h*7 + w; jaxconv (N, 7, 7, 512) to
    # row (h*7 + w)*512 + c of the kernel.
    weight = check.torch_model.classifier[0].weight.detach().numpy()
    kernel = check.params["classifier"]["0"]["kernel"]
    c, h, w = np.random.RandomState(0).randint((512, 7, 7), size=(64, 3)).T
    np.testing.assert_array_equal(kernel[(h * 7 + w) * 512 + c], weight[:, c * 49 + h * 7 + w].T)


@pytest.mark.parametrize("build, message", [
    (lambda: zoo.vgg11(0), "vgg11: num_classes must be an int >= 1, got 0"),
    (lambda: vgg("vgg19"), "vgg: unknown config 'vgg19'"),
    (lambda: vgg("vgg11", dropout=1.0), "vgg: dropout must be a number >= 0 and < 1, got 1.0"),
    (lambda: vgg("vgg11", batch_norm=1), "vgg: batch_norm must be True or False, got 1"),
])
def test_bad_arguments_fail_when_the_model_is_built(build, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        build()


def test_input_smaller_than_the_pools_is_rejected_at_init():
    with pytest.raises(ValueError, match="MaxPool"):
        jax.eval_shape(lambda key: zoo.vgg11().init(key, (1, 16, 16, 3))[1], jax.random.key(0))
