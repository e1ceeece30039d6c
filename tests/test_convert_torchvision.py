"""load_torch_state_dict on torchvision's models: every zoo model loads without a mapping.

The forward cross-checks of each model live in tests/test_zoo_*.py; here the
converter itself is checked on all of them, cheaply: each torchvision tensor
is filled with its own index (no random initialisation, no forward), so that
every jaxconv leaf must come out constant and every tensor must be used
exactly once. Models whose parameter paths read like torchvision's keys pair
by name and load the same from a reversed state_dict and from a
``.safetensors`` file (whose tensors are sorted by name); every model loads
the same from a ``.pt`` file.
"""

from __future__ import annotations

import collections

import jax
import numpy as np
import pytest
import safetensors.numpy

from jaxconv import count_params, models
from jaxconv.convert import load_torch_state_dict
from jaxconv.models.convnext import convnext_tiny
from jaxconv.models.efficientnet import efficientnet_b0
from jaxconv.models.mobilenet import mobilenet_v2, mobilenet_v3_large, mobilenet_v3_small
from tests.torch_ref import import_torch
from tests.torchvision_ref import import_torchvision, randomize_batch_norms

MINE = {"mobilenet_v2": mobilenet_v2, "mobilenet_v3_small": mobilenet_v3_small,
        "mobilenet_v3_large": mobilenet_v3_large, "efficientnet_b0": efficientnet_b0,
        "convnext_tiny": convnext_tiny}
OTHERS = ["resnet18", "resnet34", "resnet50", "resnet101", "wide_resnet50_2", "resnext50_32x4d",
          "vgg11", "vgg11_bn", "vgg16", "vgg16_bn"]
#: Over 60 million parameters: a few seconds and a few GB each.
HEAVY = {"wide_resnet50_2", "vgg11", "vgg11_bn", "vgg16", "vgg16_bn"}
NUM_CLASSES = 10
INPUT_SHAPE = (-1, 64, 64, 3)


def build(name):
    return MINE[name](NUM_CLASSES) if name in MINE else getattr(models, name)(NUM_CLASSES)


def randomize_parameters(module, seed=0):
    """Draws what torchvision initialises to constants, so that the cross-checks see it:
    BatchNorm parameters and statistics, LayerNorm scales, layer scales and every bias."""
    torch = import_torch()
    randomize_batch_norms(module, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith("layer_scale"):
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))
        for m in module.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
    return module


def indexed_state_dict(name):
    """torchvision's ``name`` as a state_dict of NumPy arrays, tensor ``i`` filled with ``i``."""
    torch = import_torch()
    with torch.device("meta"):
        torch_model = getattr(import_torchvision().models, name)(weights=None,
                                                                 num_classes=NUM_CLASSES)
    state_dict = torch_model.to_empty(device="cpu").state_dict()
    return {key: np.full(value.shape, i, value.numpy().dtype)
            for i, (key, value) in enumerate(state_dict.items())}


def assert_same(got, want):
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module", params=[
    pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in [*MINE, *OTHERS]])
def loaded(request):
    """``(name, state_dict, (params, state))``: the indexed state_dict loaded without a mapping."""
    name = request.param
    state_dict = indexed_state_dict(name)
    return name, state_dict, load_torch_state_dict(build(name), INPUT_SHAPE, state_dict)


def test_every_tensor_fills_one_leaf_and_every_leaf_comes_from_one_tensor(loaded):
    name, state_dict, (params, state) = loaded
    used = collections.Counter()
    for leaf in jax.tree_util.tree_leaves((params, state)):
        values = np.unique(np.asarray(leaf))
        assert len(values) == 1, f"{name}: a leaf mixes tensors {values[:5]}"
        used[int(values[0])] += 1
    keys = list(state_dict)
    expected = {i for i, key in enumerate(keys) if not key.endswith("num_batches_tracked")}
    assert set(used) == expected and set(used.values()) == {1}, (
        f"{name}: unused {[keys[i] for i in expected - set(used)]}, "
        f"reused {[keys[i] for i, n in used.items() if n > 1]}")
    sizes = sum(a.size for k, a in state_dict.items() if not k.endswith("num_batches_tracked"))
    assert count_params(params) + count_params(state) == sizes


def test_loading_does_not_depend_on_the_state_dict_order(loaded):
    """Every zoo model pairs all its layers by name: a reversed state_dict loads the same."""
    name, state_dict, want = loaded
    reverse = dict(reversed(list(state_dict.items())))
    assert_same(load_torch_state_dict(build(name), INPUT_SHAPE, reverse), want)


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "resnet18",
                                  pytest.param("convnext_tiny", marks=pytest.mark.slow)])
def test_safetensors_and_pt_files_load_like_the_state_dict(name, tmp_path):
    """A ``.pt`` file keeps the modules' order, a ``.safetensors`` file sorts them by name:
    every zoo model pairs by name, so both load as the state_dict does."""
    torch = import_torch()
    torch_model = randomize_parameters(
        getattr(import_torchvision().models, name)(weights=None, num_classes=NUM_CLASSES))
    state_dict = torch_model.state_dict()
    want = load_torch_state_dict(build(name), INPUT_SHAPE, state_dict)
    torch.save(state_dict, tmp_path / "weights.pt")
    safetensors.numpy.save_file({k: v.numpy() for k, v in state_dict.items()},
                                str(tmp_path / "weights.safetensors"))
    assert_same(load_torch_state_dict(build(name), INPUT_SHAPE, tmp_path / "weights.pt"), want)
    assert_same(load_torch_state_dict(build(name), INPUT_SHAPE, tmp_path / "weights.safetensors"), want)
