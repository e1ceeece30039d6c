"""torchvision for the model-zoo cross-checks: imported once, never silently skipped in CI.

torchvision's model code is pure Python, but on import it also registers
"meta" kernels for its compiled operators (``torchvision._meta_registrations``),
which fails when its compiled ops do not load next to the installed CPU torch
("operator torchvision::nms does not exist"). The cross-checks need no
compiled operator, so a stub module takes the place of those registrations
before ``import torchvision``.

Outside CI a missing torch or torchvision skips the test; with ``CI`` set in
the environment it fails the test instead (as ``tests/torch_ref.py``).

``ZooCheck`` holds what the zoo tests compare: a PyTorch model, the jaxconv
model loaded from its ``state_dict``, and their outputs, parameter counts and
BatchNorm statistics.
"""

import copy
import math
import sys
import types

import jax
import numpy as np

from jaxconv import count_params, models
from jaxconv.convert import load_torch_state_dict
from tests.torch_ref import import_or_fail_in_ci, import_torch

_META = "torchvision._meta_registrations"


def import_torchvision():
    """The ``torchvision`` module (its models usable; its compiled operators may not be)."""
    import_torch()
    if "torchvision" not in sys.modules:
        sys.modules.setdefault(_META, types.ModuleType(_META))
    return import_or_fail_in_ci("torchvision", "the model-zoo cross-checks")


# --------------------------------------------------------------------------
# Shared by the model-zoo cross-checks (tests/test_zoo_*.py).


def randomize_batch_norms(module, seed=0):
    """Draws every BatchNorm's affine parameters and running statistics, so that they matter."""
    torch = import_torch()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=gen))
                m.bias.copy_(0.2 * torch.randn(c, generator=gen))
                m.running_mean.copy_(0.2 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=gen))
    return module


def relative_error(value, reference):
    """``max |value - reference| / max |reference|`` (the error relative to the output's scale)."""
    value, reference = np.asarray(value, np.float64), np.asarray(reference, np.float64)
    return float(np.max(np.abs(value - reference)) / np.max(np.abs(reference)))


def random_images(shape, seed):
    """A float32 channels-last batch ``(N, H, W, C)`` of standard normal values."""
    return np.random.RandomState(seed).standard_normal(shape).astype(np.float32)


def init_param_count(model, input_shape):
    """The number of parameters ``model.init`` makes, counted without making them."""
    shapes = jax.eval_shape(lambda k: model.init(k, input_shape)[1], jax.random.key(0))
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(shapes))


def torchvision_param_count(name, **kwargs):
    """The number of parameters of torchvision's ``name``, built on the "meta" device (no memory)."""
    torch = import_torch()
    with torch.device("meta"):
        model = getattr(import_torchvision().models, name)(weights=None, **kwargs)
    return sum(p.numel() for p in model.parameters())


def numpy_init(model, input_shape, seed=0):
    """``(params, state)`` for ``model`` drawn with NumPy (no jit compile, unlike ``model.init``).

    Params are normal with standard deviation 0.2; the state (BatchNorm
    statistics) is all ones, a valid mean and variance.
    """
    rng = np.random.RandomState(seed)
    params, state = jax.eval_shape(lambda k: model.init(k, input_shape)[1:], jax.random.key(0))
    return (jax.tree_util.tree_map(lambda s: 0.2 * rng.standard_normal(s.shape).astype(s.dtype),
                                   params),
            jax.tree_util.tree_map(lambda s: np.ones(s.shape, s.dtype), state))


#: Inference, float32: ``relative_error`` of the outputs.
LOGITS_TOLERANCE = 1e-4
#: Training, float64: ``relative_error`` of the statistics' update (PyTorch's stored in float32).
STATISTICS_TOLERANCE = 1e-5


class ZooCheck:
    """A PyTorch model (eval mode) and the jaxconv model loaded from its ``state_dict``.

    The weights are loaded by ``load_torch_state_dict`` without a mapping; the
    jaxconv forwards are jitted once here and shared by every check of the
    model. Inference is compared in float32 with matmul precision "highest"
    (full float32 convolutions and matmuls on every backend), training in float64.
    """

    def __init__(self, torch_model, model, input_shape, name=""):
        self.name = name
        self.torch = import_torch()
        self.torch_model = torch_model.eval()
        self.model = model
        self.params, self.state = load_torch_state_dict(model, input_shape,
                                                        torch_model.state_dict())
        self.infer = jax.jit(lambda p, s, x: model.apply(p, s, x)[0])
        self.train = jax.jit(lambda p, s, x, k: model.apply(p, s, x, key=k, train=True))

    def torch_forward(self, torch_model, x):
        """``torch_model`` on the channels-last batch ``x``; the result channels-last."""
        with self.torch.no_grad():
            y = torch_model(self.torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1))))
        return np.moveaxis(y.numpy(), 1, -1)

    def param_counts(self, input_shape):
        """``(jaxconv init, converted params, torchvision)`` parameter counts."""
        torch_count = sum(p.numel() for p in self.torch_model.parameters())
        return init_param_count(self.model, input_shape), count_params(self.params), torch_count

    def logits_error(self, shape, seed=0):
        """Relative error of jaxconv's inference output against PyTorch's, on random images."""
        x = random_images(shape, seed)
        with jax.default_matmul_precision("highest"):
            y = self.infer(self.params, self.state, x)
        return relative_error(y, self.torch_forward(self.torch_model, x))

    def statistics_errors(self, shape, seed=0):
        """``{path: error}`` of the running-statistics update of one training forward, in float64.

        Both models run one ``train=True`` forward on the same images in
        float64 (where the two agree to rounding, as deep networks in training
        mode do not in float32); for each BatchNorm statistic, the error is
        ``relative_error`` of jaxconv's change ``new - old`` against PyTorch's
        (so the batch's share is compared, not the old value that dominates
        ``new``). PyTorch's result passes through ``load_torch_state_dict``,
        which stores it in float32: errors are about 1e-6, not 1e-15.
        """
        x = random_images(shape, seed).astype(np.float64)
        trained = copy.deepcopy(self.torch_model).double().train()
        self.torch_forward(trained, x)
        _, want = load_torch_state_dict(self.model, shape, trained.state_dict())
        with jax.enable_x64(True):
            params, state = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64),
                                                   (self.params, self.state))
            _, got = self.train(params, state, x, jax.random.key(seed))
            errors = jax.tree_util.tree_map(lambda g, w, old: relative_error(g - old, w - old),
                                            got, want, state)
        return {jax.tree_util.keystr(path): err
                for path, err in jax.tree_util.tree_leaves_with_path(errors)}

    def assert_param_counts_equal(self, input_shape):
        counts = self.param_counts(input_shape)
        assert counts[0] == counts[1] == counts[2], f"{self.name}: (init, converted, torch) {counts}"

    def assert_logits_match(self, shapes):
        """Inference on random images of each of ``shapes``; returns ``{shape: error}``."""
        errors = {shape: self.logits_error(shape, seed=i) for i, shape in enumerate(shapes)}
        assert max(errors.values()) <= LOGITS_TOLERANCE, f"{self.name}: {errors}"
        return errors

    def assert_statistics_match(self, shape):
        """One training forward updates every BatchNorm's statistics as PyTorch's does."""
        errors = self.statistics_errors(shape, seed=7)
        count = sum(isinstance(m, self.torch.nn.BatchNorm2d) for m in self.torch_model.modules())
        assert count and len(errors) == 2 * count, f"{self.name}: {count} BatchNorms, {errors}"
        bad = {k: v for k, v in errors.items() if not v <= STATISTICS_TOLERANCE}
        assert not bad, f"{self.name}: {bad}"
        return errors


def torchvision_check(name, input_shape, num_classes=10):
    """``ZooCheck`` of torchvision's ``name`` (random weights and BatchNorm statistics) against
    ``jaxconv.models``'s ``name`` with ``impl="lax"``."""
    torch_model = getattr(import_torchvision().models, name)(weights=None,
                                                             num_classes=num_classes)
    randomize_batch_norms(torch_model, seed=1)
    model = getattr(models, name)(num_classes, impl="lax")
    return ZooCheck(torch_model, model, input_shape, name=name)
