"""ConvNeXt-Tiny of jaxconv.models against torchvision's: weights load without a mapping, same outputs.

As tests/test_zoo_mobilenet.py, with what ConvNeXt has instead of BatchNorm
drawn at random: LayerNorm scales and biases, every bias, and the layer
scales (torchvision starts them at 1e-6, which would hide the blocks from the
logits). Float32 inference logits (matmul precision "highest") at two sizes
agree within a relative error of 1e-4; parameter counts are equal. ConvNeXt
has no BatchNorm statistics; in training it differs from inference only by
stochastic depth, whose rates are checked block by block. The cross-checks
are ``slow`` (they still run in CI).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv.models.convnext import convnext_tiny
from tests.test_convert_torchvision import randomize_parameters
from tests.test_zoo_mobilenet import assert_computes_in, child, drop_path_scale
from tests.torchvision_ref import ZooCheck, import_torchvision, init_param_count, torchvision_param_count

NUM_CLASSES = 10
#: ConvNeXt needs at least 32x32; the last feature maps are 2x2 and 3x2.
SIZES = [(2, 64, 64, 3), (2, 96, 80, 3)]
#: features index -> blocks of ConvNeXt-Tiny's stages.
STAGES = {1: 3, 3: 3, 5: 9, 7: 3}


def torch_convnext(**kwargs):
    return import_torchvision().models.convnext_tiny(weights=None, num_classes=NUM_CLASSES,
                                                     **kwargs)


@pytest.fixture(scope="module")
def check():
    torch_model = randomize_parameters(torch_convnext(), seed=1)
    return ZooCheck(torch_model, convnext_tiny(NUM_CLASSES, impl="lax"), SIZES[0],
                    name="convnext_tiny")


@pytest.mark.slow
def test_param_counts_equal_torchvision(check):
    check.assert_param_counts_equal(SIZES[0])
    assert init_param_count(convnext_tiny(), (1, 224, 224, 3)) == torchvision_param_count(
        "convnext_tiny") == 28_589_128


@pytest.mark.slow
def test_logits_match_torchvision_at_two_sizes(check):
    layer_scale = check.params["features"]["5"]["4"]["body"]["layer_scale"]["scale"]
    assert np.min(np.abs(layer_scale)) > 0.4  # the drawn layer scales, not 1e-6
    check.assert_logits_match(SIZES)


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_stochastic_depth_in_every_block_at_torchvision_rates(rate):
    torch_model = torch_convnext(stochastic_depth_prob=rate)
    model = convnext_tiny(stochastic_depth_prob=rate)
    for stage, blocks in STAGES.items():
        assert len(torch_model.features[stage]) == blocks
        for i, block in enumerate(torch_model.features[stage]):
            layer = child(model, f"features/{stage}/{i}/body/stochastic_depth")
            scale = drop_path_scale(layer, seed=stage * 10 + i)
            assert scale == pytest.approx(1 / (1 - block.stochastic_depth.p), rel=1e-6), (stage, i)


def test_dtype_bfloat16_runs_every_convolution_and_matmul_in_bfloat16():
    assert_computes_in(convnext_tiny(NUM_CLASSES, dtype=jnp.bfloat16), jnp.bfloat16)


def test_too_small_inputs_and_bad_arguments_fail_clearly():
    with pytest.raises(ValueError, match=r"convnext_tiny: num_classes must be an int >= 1, got 0"):
        convnext_tiny(0)
    with pytest.raises(ValueError, match=r"convnext_tiny: stochastic_depth_prob must be .*< 1"):
        convnext_tiny(stochastic_depth_prob=1.0)
    with pytest.raises(ValueError, match=r"Conv: kernel of size \(2, 2\) .* larger than the padded "
                                         r"input \(1, 4\)"):
        init_param_count(convnext_tiny(NUM_CLASSES), (1, 31, 64, 3))
