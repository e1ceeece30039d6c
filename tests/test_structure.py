"""summary(): walking combinators, exact multiply-add counts, the table, and the CLI."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import jaxconv as jc
from jaxconv.cli import main
from jaxconv.structure import init_shapes, jaxpr_macs, walk


def test_walk_paths_and_shapes_through_combinators():
    model = jc.serial(
        ("stem", jc.Conv(8, 3, stride=2)),
        jc.residual(jc.Conv(8, 3), jc.BatchNorm(), shortcut=jc.Conv(8, 1)),
        jc.fan_out(2),
        jc.parallel(jc.MaxPool(2), jc.AvgPool(2)),
        jc.fan_in_concat(),
        jc.GlobalAvgPool(),
    )
    infos = list(walk(model, (-1, 16, 16, 3)))
    assert [i.path for i in infos] == [
        "stem", "residual0/body/conv0", "residual0/body/batch_norm0", "residual0/shortcut",
        "fan_out0", "parallel0/max_pool0", "parallel0/avg_pool0", "fan_in_concat0",
        "global_avg_pool0"]
    assert infos[1].input_shape == infos[3].input_shape == (-1, 8, 8, 8)
    assert infos[6].input_shape == (-1, 8, 8, 8) and infos[6].output_shape == (-1, 4, 4, 8)
    assert infos[-1].output_shape == (-1, 16)

    s = jc.summary(model, (-1, 16, 16, 3))
    assert s.output_shape == (-1, 16)
    stem = 8 * 8 * 8 * 27
    body, shortcut = 8 * 8 * 8 * 9 * 8, 8 * 8 * 8 * 8
    assert s.total_macs == stem + body + shortcut
    assert s.total_params == (27 * 8 + 8) + (72 * 8 + 8) + 2 * 8 + (8 * 8 + 8)
    assert s.total_state == 2 * 8
    assert [r.macs for r in s.rows][:4] == [stem, body, 0, shortcut]


def test_init_shapes_runs_no_computation_and_matches_init():
    model = jc.serial(jc.Conv(6, 3, stride=2), jc.BatchNorm(), jc.Flatten(), jc.Dense(5))
    out, params, state = init_shapes(model, (-1, 9, 9, 2))
    assert out == (-1, 5)
    assert isinstance(params["conv0"]["kernel"], jax.ShapeDtypeStruct)
    real_out, real_params, real_state = model.init(jax.random.PRNGKey(1), (-1, 9, 9, 2))
    assert real_out == out
    for got, want in ((params, real_params), (state, real_state)):
        assert jax.tree.structure(got) == jax.tree.structure(want)
        assert [(a.shape, a.dtype) for a in jax.tree.leaves(got)] == [
            (b.shape, b.dtype) for b in jax.tree.leaves(want)]


def test_macs_of_grouped_strided_conv_and_dense_on_sequences():
    model = jc.serial(jc.Conv(12, (3, 5), stride=(2, 1), groups=3, padding="VALID"),
                      jc.Dense(7))
    s = jc.summary(model, (4, 11, 9, 6))  # the batch does not matter: counts are per example
    assert s.rows[0].output_shape == (4, 5, 5, 12)
    assert s.rows[0].macs == 5 * 5 * 12 * (3 * 5 * 2)
    assert s.rows[1].macs == 5 * 5 * 12 * 7  # Dense over the last axis of a 4-D input
    assert s.total_flops == 2 * s.total_macs


def test_jaxpr_macs_counts_scan_and_nested_jit():
    import jax

    def f(x, w):
        def body(c, _):
            return jax.jit(lambda a: a @ w)(c), None
        return jax.lax.scan(body, x, None, length=3)[0]

    jaxpr = jax.make_jaxpr(f)(jnp.ones((2, 4)), jnp.ones((4, 4)))
    assert jaxpr_macs(jaxpr.jaxpr) == 3 * 2 * 4 * 4


def test_table_text():
    s = jc.summary(jc.serial(jc.Conv(4, 3), jc.Relu(), jc.Flatten(), jc.Dense(2)),
                   (-1, 5, 5, 1))
    text = str(s)
    for words in ("Layer", "Output shape", "Params", "State", "MACs", "conv0",
                  "(-1, 5, 5, 4)", "dense0", "(-1, 2)", "Total params: 242",
                  "Multiply-adds per example: 1,100"):
        assert words in text, words


def test_bad_arguments():
    with pytest.raises(TypeError, match="summary: model must be a jaxconv Layer"):
        jc.summary(lambda x: x, (-1, 3))
    with pytest.raises(TypeError, match="summary: input_shape must be a tuple of ints"):
        jc.summary(jc.Relu(), 3)
    with pytest.raises(ValueError, match="Conv: kernel of size"):
        jc.summary(jc.Conv(4, 5, padding="VALID"), (-1, 3, 3, 1))


def test_cli_summary(capsys):
    assert main(["summary", "lenet5", "--impl", "lax"]) == 0
    out = capsys.readouterr().out
    assert "Total params: 61,706" in out and "avg_pool1" in out and "(-1, 5, 5, 16)" in out
    assert main(["summary", "intro_cnn", "--impl", "lax", "--input-shape", "64,64,3",
                 "--num-classes", "4"]) == 0
    out = capsys.readouterr().out
    assert "(-1, 32, 32, 12)" in out and "(-1, 4)" in out
    assert main(["summary", "intro_cnn", "--input-shape", "64,x"]) == 2
    assert "--input-shape must be comma-separated ints" in capsys.readouterr().err
