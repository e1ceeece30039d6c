"""jaxconv.ops.spec: a convolution's arguments are checked once, and resolved once per call."""

from __future__ import annotations

import ast
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxconv as jc
from jaxconv.ops import spec
from jaxconv.ops.conv import conv, conv_transpose
from jaxconv.ops.patches import extract_patches
from jaxconv.ops.spec import ConvOptions, ConvSpec, conv_options, resolve_conv
from jaxconv.verify import draw_case, numpy_chooser


def _count_calls(monkeypatch, name):
    """Replaces ``spec.<name>`` wherever jaxconv bound it by a wrapper that records each call."""
    original = getattr(spec, name)
    calls = []

    def counting(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    modules = [m for n, m in list(sys.modules.items()) if n.startswith("jaxconv")]
    patched = [m for m in modules if getattr(m, name, None) is original]
    for module in patched:
        monkeypatch.setattr(module, name, counting)
    assert spec in patched and len(patched) > 1, [m.__name__ for m in patched]
    return calls


LAYERS = [
    (lambda: jc.Conv(6, 3, stride=2, padding="SAME", groups=2, padding_mode="reflect",
                     impl="patches"), (2, 9, 8, 4)),
    (lambda: jc.Conv(4, (3, 2), padding=((1, 0), 1), dilation=(1, 2), impl="auto"), (2, 7, 6, 3)),
    (lambda: jc.ConvTranspose(6, 3, stride=2, padding=1, output_padding=1, groups=2,
                              impl="lax"), (2, 5, 4, 4)),
]


@pytest.mark.parametrize("make, shape", LAYERS, ids=["conv-patches", "conv-auto", "transpose-lax"])
def test_a_layer_checks_its_arguments_once_and_resolves_them_once_per_apply(monkeypatch, make,
                                                                            shape):
    parsed = _count_calls(monkeypatch, "conv_options")
    resolved = _count_calls(monkeypatch, "resolve_conv")
    layer = make()
    assert (len(parsed), len(resolved)) == (1, 0)  # the factory checks the arguments
    out, params, state = layer.init(jax.random.PRNGKey(0), shape)
    assert (len(parsed), len(resolved)) == (1, 1)  # init resolves them for its shape
    jaxpr = jax.make_jaxpr(lambda p, x: layer.apply(p, state, x)[0])(params, jnp.ones(shape))
    assert jaxpr.out_avals[0].shape == out
    assert (len(parsed), len(resolved)) == (1, 2)  # each apply resolves once, parses nothing
    jax.make_jaxpr(jax.grad(lambda p, x: jnp.sum(layer.apply(p, state, x)[0])))(
        params, jnp.ones(shape))
    assert (len(parsed), len(resolved)) == (1, 3)
    assert all(isinstance(args[0], ConvOptions) for args in resolved)


def test_each_op_call_checks_and_resolves_once(monkeypatch):
    parsed = _count_calls(monkeypatch, "conv_options")
    resolved = _count_calls(monkeypatch, "resolve_conv")
    x = jnp.ones((2, 6, 6, 4))
    calls = [lambda: conv(x, jnp.ones((3, 3, 4, 2)), stride=2, impl="patches"),
             lambda: conv(x, jnp.ones((3, 3, 2, 2)), groups=2, padding_mode="circular", impl="auto"),
             lambda: conv_transpose(x, jnp.ones((3, 3, 2, 4)), stride=2, impl="lax"),
             lambda: extract_patches(x, 3, stride=2, padding=1),
             lambda: spec.conv_output_shape(x.shape, (3, 3, 4, 2)),
             lambda: spec.conv_transpose_output_shape(x.shape, (3, 3, 2, 4), stride=2)]
    for count, call in enumerate(calls, start=1):
        jax.eval_shape(call)
        assert (len(parsed), len(resolved)) == (count, count)


def test_the_shape_rule_is_the_shape_each_implementation_produces():
    rng = np.random.default_rng(7)
    for _ in range(25):
        case = draw_case(numpy_chooser(rng))
        op, fn = (("conv", conv) if case.op == "conv" else ("conv_transpose", conv_transpose))
        options = conv_options(op, **case.kwargs)
        _, out = resolve_conv(options, (-1, *case.x_shape[1:]), case.kernel_shape)
        x, w = jnp.ones(case.x_shape), jnp.ones(case.kernel_shape)
        for impl in ("lax", "patches"):
            y = jax.eval_shape(lambda a, b, fn=fn, impl=impl, kw=case.kwargs: fn(a, b, impl=impl, **kw),
                               x, w)
            assert y.shape == (case.x_shape[0], *out[1:]), (impl, case)


def test_options_in_normal_form():
    options = conv_options("conv", "Conv", stride=(2, 1), padding="same_lower", dilation=2,
                           groups=2, padding_mode="reflect", impl="patches")
    assert options == ConvOptions("conv", "Conv", (2, 1), "SAME_LOWER", 2, 2, "reflect", 0,
                                  "patches", None)
    assert conv_options("conv", padding=[1, [0, -1]]).padding == (1, (0, -1))
    assert conv_options("conv", stride=np.int64(2)).stride == 2
    assert conv_options("conv_transpose", output_padding=[1, 0]).output_padding == (1, 0)


def test_resolved_specs():
    options = conv_options("conv", stride=2, padding="SAME", dilation=(1, 3), groups=2,
                           padding_mode="replicate")
    got = resolve_conv(options, (-1, 7, 8, 4), (3, 1, 2, 6))
    want = ConvSpec((2, 2), ((1, 1), (0, 0)), (1, 1), (1, 1), 2, None, "replicate")
    assert got == (want, (-1, 4, 4, 6))  # dilation is 1 along the kernel's size-1 dimension
    # conv_transpose in gather form: input dilated by the stride, padding span - 1 - p (+ op).
    options = conv_options("conv_transpose", stride=(2, 3), padding=1, output_padding=(1, 0))
    got = resolve_conv(options, (2, 5, 4, 6), (3, 2, 4, 6))
    want = ConvSpec((1, 1), ((1, 2), (0, 0)), (2, 3), (1, 1), 1)
    assert got == (want, (2, 10, 9, 4))   # (n - 1) * s - 2p + k + op


@pytest.mark.parametrize("call, words", [
    (lambda: conv_options("conv", padding=((1, 2, 3), 1)),
     "conv: padding must be 'SAME', 'SAME_LOWER', 'VALID', an int, or a sequence of ints or "
     "(low, high) pairs (one per spatial dimension), got ((1, 2, 3), 1)"),
    (lambda: conv_options("conv", padding=()), "got ()"),
    (lambda: conv_options("conv", padding=1.5), "got 1.5"),
    (lambda: conv_options("conv", stride=True), "conv: stride must be an int or a sequence of ints"),
    (lambda: conv_options("conv", groups=2.0), "conv: groups must be an int >= 1, got 2.0"),
    (lambda: conv_options("conv", output_padding=1),
     "conv: output_padding is an option of transposed convolutions only, got 1"),
    (lambda: conv_options("conv_transpose", padding_mode="reflect"),
     "conv_transpose: unknown padding_mode 'reflect'; expected one of ('zeros',)"),
    (lambda: conv_options("deconv"), "conv_options: unknown op 'deconv'"),
    (lambda: resolve_conv(conv_options("conv", dilation=(1, 2, 1)), (1, 5, 5, 1), (3, 3, 1, 1)),
     "conv: dilation must be an int or a sequence of 2 ints >= 1, got (1, 2, 1)"),
    (lambda: resolve_conv(conv_options("conv_transpose", output_padding=(1, 1, 1)), (1, 5, 5, 1),
                          (3, 3, 1, 1)),
     "conv_transpose: output_padding must be an int or a sequence of 2 ints >= 0, got (1, 1, 1)"),
])
def test_option_errors_name_the_argument_and_the_value(call, words):
    with pytest.raises(ValueError) as info:
        call()
    assert words in str(info.value), str(info.value)


OPS = pathlib.Path(spec.__file__).parent


def _imports(path):
    """``(module, at_top_level)`` for every import in ``path``."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            yield node.module, id(node) in top
        elif isinstance(node, ast.Import):
            yield from ((alias.name, id(node) in top) for alias in node.names)


def test_spec_is_a_leaf_and_ops_import_at_the_top_only():
    jaxconv_imports = {m for m, _ in _imports(OPS / "spec.py") if m.startswith("jaxconv")}
    assert jaxconv_imports == {"jaxconv.validate"}
    for path in OPS.glob("*.py"):
        lazy = [m for m, top in _imports(path) if not top]
        assert not lazy, (path.name, lazy)
    # The implementations do not import the dispatch, which imports both.
    for name in ("patches.py", "pool.py", "autotune.py"):
        assert "jaxconv.ops.conv" not in {m for m, _ in _imports(OPS / name)}, name
