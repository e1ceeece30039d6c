"""jaxconv.models.unet against a PyTorch U-Net written here (torchvision has none).

The reference is the textbook U-Net in ``torch.nn`` (double 3x3 conv-BN-ReLU
blocks, 2x2 max pools, ``ConvTranspose2d(2, stride=2)`` or nearest
``Upsample`` + 3x3 conv, skip concatenation ``[skip, up]``, 1x1 head), its
modules registered in the order the jaxconv model keeps its weights, so that
``load_torch_state_dict`` needs no mapping. As for the torchvision models:
random weights and BatchNorm statistics; float32 inference outputs at two
sizes within a relative error of 1e-4; the running statistics after one
training forward (float64) within 1e-5 of the update; equal parameter counts.
"""

from __future__ import annotations

from collections import OrderedDict

import jax
import jax.numpy as jnp
import pytest

from jaxconv import models as zoo
from tests.torch_ref import import_torch
from tests.torchvision_ref import ZooCheck, numpy_init, random_images, randomize_batch_norms, relative_error

#: name -> (unet keyword arguments, input shapes: one square, one not).
CONFIGS = {
    "transpose_default": (dict(num_classes=2, in_channels=3),
                          [(2, 32, 32, 3), (2, 48, 64, 3)]),
    "upsample_small": (dict(num_classes=3, in_channels=1, depth=3, width=16, up="upsample"),
                       [(2, 16, 16, 1), (2, 24, 40, 1)]),
}


def torch_unet(num_classes, in_channels, depth=4, width=64, up="transpose"):
    """The PyTorch U-Net: stem, encoders 1..depth, then (up, conv) from the bottom up, head."""
    torch = import_torch()
    nn = torch.nn
    channels = [width * 2**d for d in range(depth + 1)]

    def double_conv(cin, cout):
        return nn.Sequential(OrderedDict(
            conv1=nn.Conv2d(cin, cout, 3, padding=1, bias=False), bn1=nn.BatchNorm2d(cout),
            relu1=nn.ReLU(), conv2=nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            bn2=nn.BatchNorm2d(cout), relu2=nn.ReLU()))

    def upsampler(cin, cout):
        if up == "transpose":
            return nn.ConvTranspose2d(cin, cout, 2, stride=2)
        return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                             nn.Conv2d(cin, cout, 3, padding=1))

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = double_conv(in_channels, channels[0])
            self.encoders = nn.ModuleList(double_conv(channels[d - 1], channels[d])
                                          for d in range(1, depth + 1))
            self.decoders = nn.ModuleList(nn.ModuleDict(OrderedDict(
                up=upsampler(channels[d], channels[d - 1]),
                conv=double_conv(2 * channels[d - 1], channels[d - 1])))
                for d in range(depth, 0, -1))
            self.head = nn.Conv2d(channels[0], num_classes, 1)

        def forward(self, x):
            x, skips = self.stem(x), []
            for encoder in self.encoders:
                skips.append(x)
                x = encoder(nn.functional.max_pool2d(x, 2))
            for decoder in self.decoders:
                x = decoder["conv"](torch.cat([skips.pop(), decoder["up"](x)], dim=1))
            return self.head(x)

    torch.manual_seed(0)
    return UNet()


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def check(request):
    kwargs, shapes = CONFIGS[request.param]
    torch_model = randomize_batch_norms(torch_unet(**kwargs), seed=1)
    return ZooCheck(torch_model, zoo.unet(**kwargs, impl="lax"), shapes[0], name=request.param)


def test_param_counts_equal_torch(check):
    check.assert_param_counts_equal(CONFIGS[check.name][1][0])


def test_outputs_match_torch_at_two_sizes(check):
    check.assert_logits_match(CONFIGS[check.name][1])


def test_train_forward_updates_running_statistics_as_torch(check):
    check.assert_statistics_match(CONFIGS[check.name][1][0])


def init_shapes(model, input_shape):
    """``(output_shape, params)`` of ``model.init`` without computing anything."""
    box = {}

    def run(key):
        box["out"], params, _ = model.init(key, input_shape)
        return params

    params = jax.eval_shape(run, jax.random.key(0))
    return box["out"], params


def test_output_shape_and_parameter_paths():
    out, params = init_shapes(zoo.unet(5, depth=2, width=8), (-1, 12, 20, 4))
    assert out == (-1, 12, 20, 5)
    paths = {jax.tree_util.keystr(p, simple=True, separator="/"): leaf.shape
             for p, leaf in jax.tree_util.tree_leaves_with_path(params)}
    assert paths["stem/conv1/kernel"] == (3, 3, 4, 8)
    assert paths["level1/branches/down/encoder/conv2/kernel"] == (3, 3, 16, 16)
    assert paths["level1/branches/down/level2/branches/down/encoder/bn1/scale"] == (32,)
    assert paths["level1/branches/down/level2/branches/down/up/kernel"] == (2, 2, 16, 32)
    assert paths["level1/branches/down/up/kernel"] == (2, 2, 8, 16)
    assert paths["level1/decoder/conv1/kernel"] == (3, 3, 16, 8)
    assert paths["head/kernel"] == (1, 1, 8, 5)


@pytest.mark.parametrize("kwargs, shape, message", [
    (dict(), (1, 40, 32, 3),
     r"unet: input height and width must be divisible by 2\*\*depth = 16 \(depth=4\), "
     r"got shape \(1, 40, 32, 3\)"),
    (dict(depth=2), (1, 8, 6, 3), r"divisible by 2\*\*depth = 4 \(depth=2\)"),
    (dict(in_channels=1), (1, 32, 32, 3),
     r"unet: expected input with in_channels=1 channels, got shape \(1, 32, 32, 3\)"),
    (dict(), (1, 32, 32), r"unet: expected input of rank 4 \(N, H, W, C\), got shape"),
])
def test_input_shapes_are_checked_at_init(kwargs, shape, message):
    with pytest.raises(ValueError, match=message):
        init_shapes(zoo.unet(2, **kwargs), shape)


def test_input_shapes_are_checked_at_apply():
    model = zoo.unet(2, depth=1, width=4)
    params, state = numpy_init(model, (1, 8, 8, 3))
    with pytest.raises(ValueError, match=r"divisible by 2\*\*depth = 2 \(depth=1\), got shape "
                                         r"\(1, 8, 7, 3\)"):
        model.apply(params, state, jnp.zeros((1, 8, 7, 3)))


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_classes=0), "unet: num_classes must be an int >= 1, got 0"),
    (dict(num_classes=2, in_channels=0), "unet: in_channels must be an int >= 1, got 0"),
    (dict(num_classes=2, depth=0), "unet: depth must be an int >= 1, got 0"),
    (dict(num_classes=2, width=2.5), "unet: width must be an int >= 1, got 2.5"),
    (dict(num_classes=2, up="bilinear"), "unet: unknown up 'bilinear'; expected one of"),
])
def test_bad_arguments_fail_when_the_model_is_built(kwargs, message):
    with pytest.raises(ValueError, match=message):
        zoo.unet(**kwargs)


@pytest.mark.parametrize("up", ["transpose", "upsample"])
def test_bfloat16_compute_dtype(up):
    shape = (2, 16, 16, 3)
    params, state = numpy_init(zoo.unet(2, depth=2, width=8, up=up), shape)
    x = random_images(shape, seed=2)
    outputs = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        model = zoo.unet(2, depth=2, width=8, up=up, impl="lax", dtype=dtype)
        outputs[dtype] = jax.jit(model.apply)(params, state, x)[0]
    assert outputs[jnp.bfloat16].dtype == jnp.bfloat16
    assert relative_error(outputs[jnp.bfloat16], outputs[jnp.float32]) < 0.05
