"""jc.intermediates and jc.feature_extractor: every layer's output by path."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import jaxconv as jc
from jaxconv.models.resnet import resnet18

SHAPE = (2, 32, 32, 3)


@pytest.fixture(scope="module")
def resnet():
    model = resnet18(num_classes=5, impl="lax")
    _, params, state = model.init(jax.random.PRNGKey(0), (-1, *SHAPE[1:]))
    x = jax.random.normal(jax.random.PRNGKey(1), SHAPE)
    return model, params, state, x


def test_resnet_intermediates_equal_its_parts_applied_by_hand(resnet):
    model, params, state, x = resnet
    paths = ["conv1", "maxpool", "layer1/0/body/conv1", "layer1/0", "layer2/0/downsample", "layer2", "fc"]
    out = jax.jit(lambda p, s, x: jc.intermediates(model, p, s, x, paths=paths))(params, state, x)
    assert set(out) == set(paths)  # a dict through jit comes back with sorted keys

    parts = dict(model.children)
    y = x
    by_hand = {}
    for name in ("conv1", "bn1", "relu", "maxpool", "layer1"):
        y, _ = parts[name].apply(params[name], state[name], y)
        by_hand[name] = y
    block0 = dict(parts["layer1"].children)["0"]
    p0, s0 = params["layer1"]["0"], state["layer1"]["0"]
    conv1 = dict(dict(block0.children)["body"].children)["conv1"]
    by_hand["layer1/0/body/conv1"], _ = conv1.apply(p0["body"]["conv1"], s0["body"]["conv1"], by_hand["maxpool"])
    by_hand["layer1/0"], _ = block0.apply(p0, s0, by_hand["maxpool"])
    downsample = dict(dict(parts["layer2"].children)["0"].children)["downsample"]
    p2, s2 = params["layer2"]["0"]["downsample"], state["layer2"]["0"]["downsample"]
    by_hand["layer2/0/downsample"], _ = downsample.apply(p2, s2, by_hand["layer1"])
    by_hand["layer2"], _ = parts["layer2"].apply(params["layer2"], state["layer2"], by_hand["layer1"])
    logits, _ = model.apply(params, state, x)
    by_hand["fc"] = logits
    for path in paths:
        np.testing.assert_allclose(out[path], by_hand[path], rtol=1e-5, atol=1e-5, err_msg=path)


def test_all_paths_in_execution_order_and_bad_paths_list_the_valid_ones(resnet):
    model, params, state, x = resnet
    everything = jc.intermediates(model, params, state, x)  # eagerly: a dict out of jit has sorted keys
    paths = list(everything)
    assert paths.index("layer1/0/body/conv1") < paths.index("layer1/0") < paths.index("layer1")
    assert paths[-1] == "fc" and everything["fc"].shape == (2, 5)
    with pytest.raises(ValueError, match=r"intermediates: unknown layer path\(s\) \['layer9'\]; "
                                         r"the model's paths are: conv1, bn1, relu, maxpool, "):
        jc.intermediates(model, params, state, x, paths=["conv1", "layer9"])
    with pytest.raises(ValueError, match="paths must be a non-empty sequence"):
        jc.intermediates(model, params, state, x, paths=[])


def test_feature_extractor_is_a_layer_with_the_models_params(resnet):
    model, params, state, x = resnet
    backbone = jc.feature_extractor(model, ["layer2", "layer4"])
    shapes, p, s = backbone.init(jax.random.PRNGKey(0), (-1, *SHAPE[1:]))
    assert shapes == {"layer2": (-1, 4, 4, 128), "layer4": (-1, 1, 1, 512)}
    assert jax.tree_util.tree_structure(p) == jax.tree_util.tree_structure(params)
    feats, new_state = jax.jit(backbone.apply)(params, state, x)
    assert {k: v.shape for k, v in feats.items()} == {"layer2": (2, 4, 4, 128), "layer4": (2, 1, 1, 512)}
    ref = jc.intermediates(model, params, state, x, paths=["layer4"])["layer4"]
    np.testing.assert_allclose(feats["layer4"], ref, rtol=1e-6)
    with pytest.raises(ValueError, match=r"feature_extractor: unknown layer path\(s\) \['layer5'\]"):
        jc.feature_extractor(model, ["layer5"]).init(jax.random.PRNGKey(0), (-1, *SHAPE[1:]))


def test_training_mode_records_and_returns_the_new_state():
    model = jc.serial(jc.Conv(4, 3), jc.BatchNorm(), jc.Relu())
    _, params, state = model.init(jax.random.PRNGKey(0), (-1, 6, 6, 2))
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 6, 6, 2))
    feats, new_state = jc.feature_extractor(model, "batch_norm0").apply(params, state, x, train=True)
    _, expected_state = model.apply(params, state, x, train=True)
    assert feats["batch_norm0"].shape == (3, 6, 6, 4)
    jax.tree_util.tree_map(np.testing.assert_allclose, new_state, expected_state)
