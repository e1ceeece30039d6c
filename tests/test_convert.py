"""PyTorch -> jaxconv weight conversion: layouts, Flatten ordering, whole models, errors."""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

import jaxconv as jc
from jaxconv import convert
from jaxconv.models import mnist_cnn
from tests.torch_ref import import_torch


@pytest.fixture(autouse=True)
def full_float32_matmuls():
    """GPUs would otherwise run float32 convolutions and matmuls in TF32."""
    with jax.default_matmul_precision("highest"):
        yield


def rand(*shape, seed=0):
    return np.random.RandomState(seed).randn(*shape).astype(np.float32)


def test_conv_kernel_layout_1d_2d_3d():
    for k in [(3,), (3, 2), (3, 2, 4)]:
        w = rand(5, 6, *k)  # (O, I, *k)
        kern = convert.conv_kernel(w)
        assert kern.shape == (*k, 6, 5)
        idx = tuple(d - 1 for d in k)
        assert kern[idx + (4, 2)] == w[(2, 4) + idx]


def test_conv_matches_reference_direct_convolution():
    # A float64 direct NCHW cross-correlation with the PyTorch weight, vs jaxconv's conv.
    x, w, b = rand(2, 3, 6, 5, seed=1), rand(4, 3, 3, 2, seed=2), rand(4, seed=3)
    ref = np.zeros((2, 4, 4, 4))
    for i in range(4):
        for j in range(4):
            patch = x[:, :, i:i + 3, j:j + 2].astype(np.float64)
            ref[:, :, i, j] = np.einsum("nchw,ochw->no", patch, w) + b
    y = jc.ops.conv(x.transpose(0, 2, 3, 1), convert.conv_kernel(w), padding="VALID") + b
    np.testing.assert_allclose(y, ref.transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)


def test_dense_kernel_and_flatten_order():
    w = rand(7, 4 * 3 * 2)  # Linear(24 -> 7) after torch.flatten of (C=4, H=3, W=2)
    fmap = rand(4, 3, 2, seed=5)
    torch_out = w @ fmap.reshape(-1)
    kern = convert.dense_kernel(w, flatten_from=(4, 3, 2))
    jax_out = fmap.transpose(1, 2, 0).reshape(-1) @ kern  # jaxconv Flatten of (H, W, C)
    np.testing.assert_allclose(jax_out, torch_out, rtol=1e-5)
    np.testing.assert_array_equal(convert.dense_kernel(w), w.T)
    with pytest.raises(ValueError, match=r"flatten_from=\(4, 3, 3\) has 36 features, but the "
                                         r"weight has 24 inputs"):
        convert.dense_kernel(w, flatten_from=(4, 3, 3))


def test_batch_norm_conversion():
    p, s = convert.batch_norm(np.ones(3), np.zeros(3), np.arange(3.0), np.full(3, 2.0))
    assert set(p) == {"scale", "bias"} and set(s) == {"mean", "var"}
    with pytest.raises(ValueError) as err:
        convert.batch_norm(np.ones(3), np.zeros(4), np.zeros(3), np.ones(3), name="bn1")
    assert "bn1.bias: expected shape (3,), got (4,)" in str(err.value)


def test_load_state_dict_numpy_only_and_mismatches():
    model = jc.serial(jc.Conv(4, 3, padding="VALID", impl="lax"), jc.BatchNorm(), jc.Relu(),
                      jc.Flatten(), jc.Dense(3))
    sd = {"0.weight": rand(4, 2, 3, 3), "0.bias": rand(4),
          "1.weight": rand(4), "1.bias": rand(4), "1.running_mean": rand(4),
          "1.running_var": np.abs(rand(4)) + 0.5, "1.num_batches_tracked": np.array(3),
          "3.weight": rand(3, 4 * 2 * 2), "3.bias": rand(3)}
    params, state = convert.load_torch_state_dict(model, (-1, 4, 4, 2), sd)
    np.testing.assert_array_equal(params["conv0"]["kernel"], convert.conv_kernel(sd["0.weight"]))
    np.testing.assert_array_equal(state["batch_norm0"]["var"], sd["1.running_var"])
    np.testing.assert_array_equal(params["dense0"]["kernel"],
                                  convert.dense_kernel(sd["3.weight"], flatten_from=(4, 2, 2)))
    assert params["relu0"] == {} and params["conv0"]["kernel"].dtype == jnp.float32

    bad = dict(sd, **{"0.weight": rand(4, 2, 5, 5)})
    with pytest.raises(ValueError) as err:
        convert.load_torch_state_dict(model, (-1, 4, 4, 2), bad)
    msg = str(err.value)
    assert "0.weight: expected shape (4, 2, 3, 3)" in msg and "got (4, 2, 5, 5)" in msg
    assert "conv0" in msg

    bad = dict(sd, **{"3.weight": rand(3, 10)})
    with pytest.raises(ValueError, match=r"3.weight: expected shape \(3, 16\).*got \(3, 10\)"):
        convert.load_torch_state_dict(model, (-1, 4, 4, 2), bad)
    missing = {k: v for k, v in sd.items() if not k.startswith("3.")}
    with pytest.raises(ValueError, match="has 3 layers with weights"):
        convert.load_torch_state_dict(model, (-1, 4, 4, 2), missing)
    with pytest.raises(ValueError, match=r"convert: torch module 'fc' \(for 'dense0'\) is not"):
        convert.load_torch_state_dict(model, (-1, 4, 4, 2), sd, mapping={
            "conv0": "0", "batch_norm0": "1", "dense0": "fc"})
    with pytest.raises(ValueError, match=r"expected a rank 3, 4 or 5 convolution weight"):
        convert.conv_kernel(rand(3, 3))


def test_torch_mnist_cnn_outputs_match():
    torch = import_torch()
    nn = torch.nn
    torch.manual_seed(0)

    class Net(nn.Module):  # pytorch/examples mnist
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(1, 32, 3, 1), nn.Conv2d(32, 64, 3, 1)
            self.dropout1, self.dropout2 = nn.Dropout(0.25), nn.Dropout(0.5)
            self.fc1, self.fc2 = nn.Linear(9216, 128), nn.Linear(128, 10)

        def forward(self, x):
            x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
            x = self.dropout1(nn.functional.max_pool2d(x, 2))
            x = self.dropout2(torch.relu(self.fc1(torch.flatten(x, 1))))
            return self.fc2(x)

    net = Net().eval()
    model = mnist_cnn(impl="lax")
    params, state = convert.load_torch_state_dict(
        model, (-1, 28, 28, 1), net.state_dict(),
        mapping={"conv0": "conv1", "conv1": "conv2", "dense0": "fc1", "dense1": "fc2"})
    x = rand(3, 1, 28, 28, seed=4)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    y, _ = model.apply(params, state, x.transpose(0, 2, 3, 1))
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


def test_torch_conv_bn_net_with_running_stats():
    torch = import_torch()
    nn = torch.nn
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv1d(3, 6, 3, padding=1, bias=False), nn.BatchNorm1d(6), nn.ReLU(),
                        nn.AdaptiveAvgPool1d(3), nn.Flatten(), nn.Linear(18, 4))
    net.train()
    for i in range(3):  # give BatchNorm non-trivial running statistics
        net(torch.from_numpy(rand(5, 3, 7, seed=10 + i) * 2 + 1))
    net.eval()
    model = jc.serial(jc.Conv(6, 3, padding=1, use_bias=False, impl="lax"), jc.BatchNorm(),
                      jc.Relu(), jc.AdaptiveAvgPool(3), jc.Flatten(), jc.Dense(4))
    params, state = convert.load_torch_state_dict(model, (-1, 7, 3), net.state_dict())
    x = rand(2, 3, 7, seed=20)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    y, _ = model.apply(params, state, x.transpose(0, 2, 1))
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


def test_torch_conv3d_and_conv_transpose_layouts():
    torch = import_torch()
    x = rand(2, 2, 5, 4, 3, seed=6)
    w = rand(3, 2, 3, 2, 2, seed=7)
    expected = torch.nn.functional.conv3d(torch.from_numpy(x), torch.from_numpy(w)).numpy()
    y = jc.ops.conv(x.transpose(0, 2, 3, 4, 1), convert.conv_kernel(w), padding="VALID")
    np.testing.assert_allclose(y, expected.transpose(0, 2, 3, 4, 1), rtol=1e-4, atol=1e-5)

    # ConvTranspose2d(C=3 -> F=4, k=3, stride=2, padding=1) is the adjoint of the
    # F -> C convolution whose kernel (*k, F, C) the converted weight is.
    xt = rand(2, 3, 4, 5, seed=8)
    wt = rand(3, 4, 3, 3, seed=9)
    expected = torch.nn.functional.conv_transpose2d(torch.from_numpy(xt), torch.from_numpy(wt),
                                                    stride=2, padding=1).numpy()
    kernel = convert.conv_transpose_kernel(wt)
    assert kernel.shape == (3, 3, 4, 3)
    out_hw = expected.shape[2:]
    _, vjp = jax.vjp(lambda v: jc.ops.conv(v, kernel, stride=2, padding=1),
                     jnp.zeros((2, *out_hw, 4)))
    (y,) = vjp(jnp.asarray(xt.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(y, expected.transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------
# Pairing by name: residual blocks, squeeze-and-excitation, depthwise convolutions,
# a parameter a module holds itself (layer scale); state_dict files.


def torch_block_net(torch):
    """A PyTorch net with ConvNeXt/EfficientNet-style blocks: ``x + layer_scale * block(x)``,
    ``block`` = depthwise conv, BatchNorm, squeeze-and-excitation (fc1/fc2 1x1 convs). Each
    block's own ``layer_scale`` (C, 1, 1) comes first in its state_dict, before ``block``."""
    nn = torch.nn

    class SqueezeExcitation(nn.Module):
        def __init__(self, c, s):
            super().__init__()
            self.fc1, self.fc2 = nn.Conv2d(c, s, 1), nn.Conv2d(s, c, 1)

        def forward(self, x):
            scale = self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True))))
            return x * torch.sigmoid(scale)

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.layer_scale = nn.Parameter(0.5 + torch.rand(c, 1, 1))
            self.block = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, groups=c), nn.BatchNorm2d(c),
                                       SqueezeExcitation(c, 2))

        def forward(self, x):
            return x + self.layer_scale * self.block(x)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.blocks = nn.Sequential(Block(8), Block(8))
            self.head = nn.Linear(8, 4)

        def forward(self, x):
            return self.head(self.blocks(self.stem(x)).mean((2, 3)))

    torch.manual_seed(3)
    net = Net().eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.3 * torch.randn(8))
                m.running_var.copy_(0.5 + torch.rand(8))
    return net


def jax_block_net():
    """``torch_block_net`` in jaxconv: paths read like its state_dict keys (``residual``'s
    ``body`` aside), so no mapping is needed."""
    def block(c):
        body = jc.serial(("0", jc.Conv(c, 3, padding=1, groups=c, impl="lax")), ("1", jc.BatchNorm()),
                         ("2", jc.SqueezeExcite(2)))
        return jc.residual(("block", body), ("layer_scale", jc.LayerScale()))

    return jc.serial(("stem", jc.Conv(8, 3, stride=2, padding=1, impl="lax")),
                     ("blocks", jc.serial(("0", block(8)), ("1", block(8)))),
                     ("pool", jc.GlobalAvgPool()), ("head", jc.Dense(4)))


BLOCK_NET_SHAPE = (-1, 9, 10, 3)


@pytest.fixture(scope="module")
def block_net():
    torch = import_torch()
    net = torch_block_net(torch)
    sd = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    return net, sd, convert.load_torch_state_dict(jax_block_net(), BLOCK_NET_SHAPE, sd)


def assert_trees_equal(got, want):
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_array_equal(a, b)


def test_blocks_with_squeeze_excite_depthwise_and_layer_scale_pair_by_name(block_net):
    net, sd, (params, state) = block_net
    torch = import_torch()
    assert list(sd)[2:4] == ["blocks.0.layer_scale", "blocks.0.block.0.weight"]  # not execution order
    block = params["blocks"]["0"]["body"]
    assert block["layer_scale"]["scale"].shape == (8,)
    np.testing.assert_array_equal(block["layer_scale"]["scale"], sd["blocks.0.layer_scale"][:, 0, 0])
    np.testing.assert_array_equal(block["block"]["2"]["fc1"]["kernel"],
                                  sd["blocks.0.block.2.fc1.weight"].transpose(2, 3, 1, 0))
    assert block["block"]["0"]["kernel"].shape == (3, 3, 1, 8)  # depthwise: (*k, 1, C)
    np.testing.assert_array_equal(state["blocks"]["1"]["body"]["block"]["1"]["mean"],
                                  sd["blocks.1.block.1.running_mean"])
    x = rand(2, 3, 9, 10, seed=11)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    y, _ = jax_block_net().apply(params, state, x.transpose(0, 2, 3, 1))
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


def test_name_pairing_does_not_depend_on_the_state_dict_order(block_net):
    _, sd, want = block_net
    shuffled = dict(reversed(list(sd.items())))
    assert_trees_equal(convert.load_torch_state_dict(jax_block_net(), BLOCK_NET_SHAPE, shuffled), want)


def test_mismatched_block_tensors_name_the_tensor_and_both_shapes(block_net):
    _, sd, _ = block_net
    cases = {"blocks.1.layer_scale": (rand(9, 1, 1), r"blocks\.1\.layer_scale: expected shape "
                                                     r"\(8, 1, 1\) .*got \(9, 1, 1\)"),
             "blocks.0.block.2.fc1.weight": (rand(3, 8, 1, 1), r"blocks\.0\.block\.2\.fc1\.weight: "
                                                               r"expected shape \(2, 8, 1, 1\).*got "
                                                               r"\(3, 8, 1, 1\)"),
             "blocks.0.block.0.weight": (rand(8, 8, 3, 3), r"blocks\.0\.block\.0\.weight: expected "
                                                           r"shape \(8, 1, 3, 3\).*got \(8, 8, 3, 3\)")}
    for key, (value, message) in cases.items():
        with pytest.raises(ValueError, match=message):
            convert.load_torch_state_dict(jax_block_net(), BLOCK_NET_SHAPE, dict(sd, **{key: value}))
    missing = {k: v for k, v in sd.items() if k != "blocks.1.block.2.fc2.bias"}
    with pytest.raises(ValueError, match=r"'blocks/1/body/block/2/fc2' needs torch tensor "
                                         r"'blocks\.1\.block\.2\.fc2\.bias' \(shape \(8,\)\)"):
        convert.load_torch_state_dict(jax_block_net(), BLOCK_NET_SHAPE, missing)


def test_unpaired_layers_fall_back_to_order_but_not_for_safetensors_files(tmp_path):
    model = jc.serial(jc.Conv(4, 3, impl="lax"), jc.BatchNorm(), ("head", jc.Dense(2)))
    sd = {"features.weight": rand(4, 2, 3, 3), "features.bias": rand(4),
          "norm.weight": rand(4), "norm.bias": rand(4), "norm.running_mean": rand(4),
          "norm.running_var": np.ones(4, np.float32), "head.weight": rand(2, 4), "head.bias": rand(2)}
    params, _ = convert.load_torch_state_dict(model, (-1, 5, 5, 2), sd)  # conv0, batch_norm0 in order
    np.testing.assert_array_equal(params["batch_norm0"]["scale"], sd["norm.weight"])
    path = tmp_path / "net.safetensors"
    safetensors.numpy.save_file(sd, str(path))
    with pytest.raises(ValueError, match=r"jaxconv layers \['conv0', 'batch_norm0'\] have no torch "
                                         r"module of the same name, and a \.safetensors file does not "
                                         r"keep the modules' order"):
        convert.load_torch_state_dict(model, (-1, 5, 5, 2), path)
    params, _ = convert.load_torch_state_dict(model, (-1, 5, 5, 2), path, mapping={
        "conv0": "features", "batch_norm0": "norm", "head": "head"})
    np.testing.assert_array_equal(params["batch_norm0"]["scale"], sd["norm.weight"])


def test_state_dict_files_safetensors_and_pt(block_net, tmp_path):
    torch = import_torch()
    net, sd, want = block_net
    safetensors.numpy.save_file(sd, str(tmp_path / "net.safetensors"))
    torch.save(net.state_dict(), tmp_path / "net.pth")
    for name in ("net.safetensors", "net.pth"):
        for path in (tmp_path / name, str(tmp_path / name)):
            assert_trees_equal(convert.load_torch_state_dict(jax_block_net(), BLOCK_NET_SHAPE, path),
                               want)
    read = convert.read_state_dict(tmp_path / "net.pth")
    assert list(read) == list(net.state_dict())  # a .pt file keeps the modules' order


def test_state_dict_file_errors(tmp_path, monkeypatch):
    torch = import_torch()
    (tmp_path / "w.npz").write_bytes(b"")
    with pytest.raises(ValueError, match=r"w\.npz: expected a \.safetensors, .pt or .pth "
                                         r"state_dict file, got suffix '\.npz'"):
        convert.read_state_dict(tmp_path / "w.npz")
    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(ValueError, match=r"bad\.safetensors: not a readable safetensors file"):
        convert.read_state_dict(tmp_path / "bad.safetensors")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"list\.pt: expected a state_dict \(\{name: tensor\}\), "
                                         r"got a list"):
        convert.read_state_dict(tmp_path / "list.pt")
    torch.save(torch.nn.Linear(2, 3), tmp_path / "module.pt")
    (tmp_path / "damaged.pth").write_bytes(b"not a torch file")
    for name in ("module.pt", "damaged.pth"):
        with pytest.raises(ValueError, match=rf"{name}: torch\.load\(weights_only=True\) cannot read "
                                             r"it .*save model\.state_dict\(\) instead"):
            convert.read_state_dict(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        convert.read_state_dict(tmp_path / "missing.pt")
    torch.save({"w": torch.zeros(2)}, tmp_path / "w.pt")
    monkeypatch.setitem(sys.modules, "torch", None)  # as if PyTorch were not installed
    with pytest.raises(ImportError, match=r"w\.pt is a pickled PyTorch file.*install torch, or "
                                          r"convert the file to \.safetensors"):
        convert.read_state_dict(tmp_path / "w.pt")


def test_bfloat16_torch_tensors_convert_exactly():
    torch = import_torch()
    w = torch.randn(4, 3, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    kernel = convert.dense_kernel(w)
    assert kernel.dtype == np.float32
    np.testing.assert_array_equal(kernel, w.float().numpy().T)


def test_a_model_that_is_one_layer_takes_the_module_at_the_root():
    sd = {"weight": rand(4, 2, 3, 3), "bias": rand(4, seed=1)}
    params, state = convert.load_torch_state_dict(jc.Conv(4, 3, impl="lax"), (-1, 5, 5, 2), sd)
    assert set(params) == {"kernel", "bias"} and state == {}
    np.testing.assert_array_equal(params["kernel"], convert.conv_kernel(sd["weight"]))
    se = {"fc1.weight": rand(2, 8, 1, 1), "fc1.bias": rand(2), "fc2.weight": rand(8, 2, 1, 1),
          "fc2.bias": rand(8)}
    params, _ = convert.load_torch_state_dict(jc.SqueezeExcite(2), (-1, 3, 3, 8), se)
    np.testing.assert_array_equal(params["fc2"]["bias"], se["fc2.bias"])


def test_transfer_takes_matching_leaves_and_keeps_a_new_head():
    from jaxconv.convert import transfer

    def net(classes):
        return jc.serial(("conv", jc.Conv(4, 3)), ("flat", jc.Flatten()), ("fc", jc.Dense(classes)))

    _, source, _ = net(7).init(jax.random.PRNGKey(0), (-1, 5, 5, 2))
    _, target, _ = net(3).init(jax.random.PRNGKey(1), (-1, 5, 5, 2))
    target = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), target)
    out, kept = transfer(source, target)
    assert kept == ["fc/bias", "fc/kernel"]
    assert out["conv"]["kernel"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(out["conv"]["kernel"], source["conv"]["kernel"].astype(jnp.bfloat16))
    np.testing.assert_array_equal(out["fc"]["kernel"], target["fc"]["kernel"])
