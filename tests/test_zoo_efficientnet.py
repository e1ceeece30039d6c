"""EfficientNet-B0 of jaxconv.models against torchvision's: weights load without a mapping, same outputs.

As tests/test_zoo_mobilenet.py: random weights, BatchNorm parameters and
statistics and biases; float32 inference logits (matmul precision "highest")
at two sizes within a relative error of 1e-4; the running statistics after one
training forward (float64) within 1e-5 of the update; equal parameter counts.
The training forward runs with stochastic depth off in both models (their
random row masks cannot agree); the stochastic depth rates are checked block
by block instead. The cross-checks are ``slow`` (they still run in CI).
"""

from __future__ import annotations

import jax.numpy as jnp
import pytest

from jaxconv.models.efficientnet import efficientnet_b0
from tests.test_convert_torchvision import randomize_parameters
from tests.test_zoo_mobilenet import assert_computes_in, child, drop_path_scale
from tests.torchvision_ref import ZooCheck, import_torchvision, init_param_count, torchvision_param_count

NUM_CLASSES = 10
SIZES = [(2, 64, 64, 3), (2, 96, 80, 3)]

def torch_efficientnet(**kwargs):
    return import_torchvision().models.efficientnet_b0(weights=None, num_classes=NUM_CLASSES,
                                                       **kwargs)


@pytest.fixture(scope="module")
def torch_model():
    return randomize_parameters(torch_efficientnet(), seed=1)


@pytest.fixture(scope="module")
def check(torch_model):
    return ZooCheck(torch_model, efficientnet_b0(NUM_CLASSES, impl="lax"), SIZES[0],
                    name="efficientnet_b0")


@pytest.mark.slow
def test_param_counts_equal_torchvision(check):
    check.assert_param_counts_equal(SIZES[0])
    assert init_param_count(efficientnet_b0(), (1, 224, 224, 3)) == torchvision_param_count(
        "efficientnet_b0") == 5_288_548


@pytest.mark.slow
def test_logits_match_torchvision_at_two_sizes(check):
    check.assert_logits_match(SIZES)


@pytest.mark.slow
def test_train_forward_updates_batch_norm_statistics_as_torchvision(torch_model):
    deterministic = torch_efficientnet(stochastic_depth_prob=0.0)
    deterministic.load_state_dict(torch_model.state_dict())
    model = efficientnet_b0(NUM_CLASSES, impl="lax", stochastic_depth_prob=0.0)
    ZooCheck(deterministic, model, SIZES[0], name="efficientnet_b0").assert_statistics_match(SIZES[0])


@pytest.mark.parametrize("rate", [0.2, 0.5])
def test_stochastic_depth_on_the_skip_blocks_at_torchvision_rates(rate):
    torch_model = torch_efficientnet(stochastic_depth_prob=rate)
    model = efficientnet_b0(stochastic_depth_prob=rate)
    skips = 0
    for stage in range(1, 8):
        for i, block in enumerate(torch_model.features[stage]):
            layer = child(model, f"features/{stage}/{i}")
            assert (layer.kind == "residual") == block.use_res_connect, (stage, i)
            if block.use_res_connect:
                scale = drop_path_scale(child(layer, "body/stochastic_depth"), seed=stage * 10 + i)
                assert scale == pytest.approx(1 / (1 - block.stochastic_depth.p), rel=1e-6)
                skips += 1
    assert skips == 9


def test_dtype_bfloat16_runs_every_convolution_and_matmul_in_bfloat16():
    assert_computes_in(efficientnet_b0(NUM_CLASSES, dtype=jnp.bfloat16), jnp.bfloat16)


def test_bad_arguments_name_the_model_and_argument():
    with pytest.raises(ValueError, match=r"efficientnet_b0: num_classes must be an int >= 1, got 0"):
        efficientnet_b0(0)
    with pytest.raises(ValueError, match=r"efficientnet_b0: stochastic_depth_prob must be .*< 1"):
        efficientnet_b0(stochastic_depth_prob=1.0)
