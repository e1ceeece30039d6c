"""Every model: declared shape == produced, a jitted train step runs, summary == hand count.

Models are built with ``impl="lax"``; ``impl="auto"`` is the default for users.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxconv as jc
from jaxconv.models import INPUT_SHAPES, get_model, intro_cnn, resnet9


def conv(h, w, cin, cout, k, bias=True):
    """(params, multiply-adds) of a k x k conv producing an h x w x cout map."""
    return k * k * cin * cout + (cout if bias else 0), h * w * cout * k * k * cin


def dense(fin, fout, bias=True):
    return fin * fout + (fout if bias else 0), fin * fout


def total(*layers):
    return tuple(sum(v) for v in zip(*layers))


def resnet9_count():
    convs = [conv(32, 32, 3, 64, 3, False), conv(32, 32, 64, 128, 3, False),
             conv(16, 16, 128, 128, 3, False), conv(16, 16, 128, 128, 3, False),
             conv(16, 16, 128, 256, 3, False), conv(8, 8, 256, 512, 3, False),
             conv(4, 4, 512, 512, 3, False), conv(4, 4, 512, 512, 3, False)]
    bn_channels = 64 + 3 * 128 + 256 + 3 * 512
    p, m = total(*convs, dense(512, 10, bias=False))
    return p + 2 * bn_channels, 2 * bn_channels, m


# name -> (params, state, multiply-adds per example), counted by hand from the architectures.
HAND = {
    "intro_mlp": (*total(dense(64, 4), dense(4, 4), dense(4, 10)), 0),
    "digits_cnn": (*total(conv(8, 8, 1, 32, 3), conv(8, 8, 32, 64, 3), dense(4 * 4 * 64, 128),
                          dense(128, 10)), 0),
    "intro_cnn": (*total(conv(32, 32, 3, 12, 3), dense(16 * 16 * 12, 10)), 0),
    "lenet5": (*total(conv(28, 28, 1, 6, 5), conv(10, 10, 6, 16, 5), dense(400, 120),
                      dense(120, 84), dense(84, 10)), 0),
    "mnist_cnn": (*total(conv(26, 26, 1, 32, 3), conv(24, 24, 32, 64, 3), dense(9216, 128),
                         dense(128, 10)), 0),
    "resnet9": resnet9_count(),
}
for name in ("intro_mlp", "digits_cnn", "intro_cnn", "lenet5", "mnist_cnn"):
    p, m, s = HAND[name]
    HAND[name] = (p, s, m)


def test_hand_counts_match_published_totals():
    assert HAND["mnist_cnn"][0] == 1_199_882  # pytorch/examples mnist
    assert HAND["lenet5"][0] == 61_706
    assert HAND["resnet9"][0] == 6_573_120


def run_model(name, batch=2):
    model = get_model(name, impl="lax")
    shape = (-1, *INPUT_SHAPES[name])
    declared, params, state = model.init(jax.random.PRNGKey(0), shape)
    assert declared == (-1, 10)
    x = jax.random.normal(jax.random.PRNGKey(1), (batch, *shape[1:]))
    labels = jnp.arange(batch) % 10
    forward = jax.jit(lambda p, s, x: model.apply(p, s, x, train=False)[0])
    y = forward(params, state, x)
    assert y.shape == (batch, 10)
    assert model.init(jax.random.PRNGKey(0), (batch, *shape[1:]))[0] == y.shape

    optimizer = optax.adam(1e-3)
    ts = jc.create_train_state(model, jax.random.PRNGKey(0), shape, optimizer)
    before = jax.tree_util.tree_map(np.asarray, (ts.params, ts.state))
    loss_before = float(jc.cross_entropy(forward(ts.params, ts.state, x), labels))
    step = jc.make_train_step(model, optimizer, jc.cross_entropy)
    for _ in range(4):
        ts, metrics = step(ts, (x, labels))
        assert np.isfinite(float(metrics["loss"]))
    if not jax.tree_util.tree_leaves(ts.state):  # no BatchNorm: inference loss must drop
        assert float(jc.cross_entropy(forward(ts.params, ts.state, x), labels)) < loss_before
    assert int(ts.step) == 4
    changed = jax.tree_util.tree_map(lambda a, b: not np.array_equal(a, b), before,
                                     (ts.params, ts.state))
    assert all(jax.tree_util.tree_leaves(changed[0]))
    return model, ts, changed


@pytest.mark.parametrize("name", ["intro_mlp", "digits_cnn", "intro_cnn", "lenet5", "mnist_cnn"])
def test_model_shapes_and_train_step(name):
    run_model(name)


@pytest.mark.slow
def test_resnet9_shapes_train_step_and_batchnorm_state():
    _, ts, changed = run_model("resnet9")
    # Every BatchNorm's running statistics moved in training.
    assert jax.tree_util.tree_leaves(changed[1]) and all(jax.tree_util.tree_leaves(changed[1]))
    assert set(ts.state["layer1"]["res"]["body"]["block0"]["bn"]) == {"mean", "var"}


@pytest.mark.parametrize("name", sorted(HAND))  # the zoo: tests/test_zoo_*.py
def test_summary_totals_equal_hand_count(name):
    model = get_model(name, impl="lax")
    s = jc.summary(model, (-1, *INPUT_SHAPES[name]))
    assert (s.total_params, s.total_state, s.total_macs) == HAND[name]
    assert s.output_shape == (-1, 10)
    assert sum(r.params for r in s.rows) == s.total_params


def test_intro_cnn_volumes():
    s = jc.summary(intro_cnn(impl="lax"), (-1, 32, 32, 3))
    shapes = [r.output_shape for r in s.rows]
    assert shapes == [(-1, 32, 32, 12), (-1, 32, 32, 12), (-1, 16, 16, 12), (-1, 3072), (-1, 10)]


def test_bf16_compute_dtype():
    model = intro_cnn(impl="lax", dtype=jnp.bfloat16)
    _, params, state = model.init(jax.random.PRNGKey(0), (-1, 32, 32, 3))
    assert params["conv0"]["kernel"].dtype == jnp.float32
    y, _ = model.apply(params, state, jnp.ones((1, 32, 32, 3)))
    assert y.dtype == jnp.bfloat16


def test_resnet9_width_and_classes():
    model = resnet9(num_classes=5, width=8, impl="lax")
    s = jc.summary(model, (-1, 32, 32, 3))
    assert s.output_shape == (-1, 5)
    assert [r.output_shape for r in s.rows if r.name.endswith("pool")][-1] == (-1, 64)


def test_get_model_errors():
    with pytest.raises(ValueError, match="unknown model 'vgg'; expected one of"):
        get_model("vgg")


@pytest.mark.slow
def test_intro_walkthrough_example(tmp_path, monkeypatch, capsys):
    import os
    import runpy

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "walk.png"
    monkeypatch.setattr("sys.argv", ["intro_walkthrough.py", "--out", str(out)])
    runpy.run_path(os.path.join(root, "examples", "intro_walkthrough.py"), run_name="__main__")
    stdout = capsys.readouterr().out
    for words in ("input volume: 32x32x3", "conv0      (conv) -> 32x32x12",
                  "relu0      (relu) -> 32x32x12", "max_pool0  (max_pool) -> 16x16x12",
                  "dense0     (dense) -> 10", "declared output shape (-1, 10), produced (1, 10)"):
        assert words in stdout, stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_renamed_models_still_build_from_saved_runs():
    with pytest.warns(DeprecationWarning, match="'seed_cnn' is now called 'intro_cnn'"):
        model = get_model("seed_cnn", impl="lax")
    assert model.init(jax.random.PRNGKey(0), (-1, 32, 32, 3))[0] == (-1, 10)
