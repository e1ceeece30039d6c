"""Tests of the benchmark machinery: timing core, results-file sections, CLI, run_steps.

No test asserts a time: only the bookkeeping around the timings.
"""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxconv as jc
from jaxconv import cli
from jaxconv.bench import (
    Case,
    ConvShape,
    Stats,
    conv_bench_table,
    conv_cases,
    markdown_table,
    measure_interleaved,
    parse_shape,
    ratio,
    run_conv_bench,
)
from jaxconv.train import contains_convolution, run_steps

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import common  # noqa: E402


def test_stats_median_spread_rate():
    s = Stats("x", [2.0, 1.0, 4.0], items_per_call=10, flops_per_call=8.0)
    assert s.median == 2.0
    assert s.spread == pytest.approx((4.0 - 1.0) / 2.0)
    assert s.rate == pytest.approx(5.0)
    assert s.flops_rate == pytest.approx(4.0)
    assert Stats("y", [3.0]).spread == 0.0


def test_measure_interleaved_runs_in_rounds_and_drops_failures():
    order = []

    def make(name):
        def run():
            order.append(name)
            return jnp.zeros(())
        return run

    def broken():
        raise RuntimeError("boom")

    messages = []
    stats = measure_interleaved(
        [Case("a", make("a")), Case("bad", broken), Case("b", make("b"))],
        rounds=3, warmup=1, target_s=0.0, max_inner=1, log=messages.append)
    assert set(stats) == {"a", "b"}
    assert len(stats["a"].samples) == len(stats["b"].samples) == 3
    # warm-up a, warm-up b, then a and b alternate round by round
    assert order == ["a", "b", "a", "b", "a", "b", "a", "b"]
    assert any("bad" in m and "boom" in m for m in messages)


def test_zero_rounds_are_refused_not_reported_as_timings():
    case = Case("a", lambda: jnp.zeros(()))
    for bad in (0, -1):
        with pytest.raises(ValueError, match=f"measure_interleaved: rounds must be an int >= 1, got {bad}"):
            measure_interleaved([case], rounds=bad)
        with pytest.raises(ValueError, match=f"run_conv_bench: rounds must be an int >= 1, got {bad}"):
            run_conv_bench([ConvShape("t", 2, 6, 3, 4)], ["lax"], rounds=bad)


def test_replace_section_keeps_other_sections():
    doc = common.replace_section("", "cpu", "first")
    doc = common.replace_section(doc, "gpu", "gpu text")
    doc = common.replace_section(doc, "cpu", "second\n")
    assert "first" not in doc
    assert doc.count("<!-- BEGIN cpu -->") == 1 and "second" in doc
    assert "gpu text" in doc
    assert doc.index("BEGIN cpu") < doc.index("BEGIN gpu")


def test_write_section_creates_and_updates(tmp_path):
    path = str(tmp_path / "RESULTS.md")
    common.write_section(path, "cpu", "A")
    common.write_section(path, "gpu", "B")
    common.write_section(path, "cpu", "C")
    text = open(path).read()
    assert text.startswith("# Benchmark results")
    assert "C" in text and "B" in text and "\nA\n" not in text


def test_partial_log_appends_json_lines(tmp_path):
    log = common.PartialLog(str(tmp_path / "out" / "partial.jsonl"))
    log.write("s1", {"v": 1})
    log.write("s2", {"v": 2})
    lines = open(tmp_path / "out" / "partial.jsonl").read().splitlines()
    assert [json.loads(line)["section"] for line in lines] == ["s1", "s2"]


def test_run_section_survives_an_exception():
    messages = []

    def bad():
        raise ValueError("section exploded")

    assert common.run_section("s", bad, messages.append) is None
    assert any("FAILED" in m for m in messages)
    assert any("section exploded" in m for m in messages)


def test_markdown_table_and_ratio():
    table = markdown_table(["a", "bb"], [[1, 2.5], ["xyz", "-"]])
    lines = table.splitlines()
    assert lines[0].startswith("| a ") and lines[1].startswith("|--")
    assert len({len(line) for line in lines}) == 1
    assert ratio(3.0, 2.0) == "1.50x"
    assert ratio(None, 2.0) == "-"


def test_conv_shape_flops_and_parse():
    s = ConvShape("t", 2, 8, 3, 4, padding="VALID")
    assert s.out_size == 6
    assert s.flops == 2.0 * 2 * 36 * 9 * 3 * 4
    p = parse_shape("4,16,8,32,3,valid,2")
    assert (p.batch, p.size, p.c_in, p.c_out, p.k, p.padding, p.stride) == (4, 16, 8, 32, 3, "VALID", 2)
    assert p.out_size == 7
    with pytest.raises(ValueError, match="N,H,C_in,C_out"):
        parse_shape("1,2")
    with pytest.raises(ValueError, match="integer sizes"):
        parse_shape("a,2,3,4")
    with pytest.raises(ValueError, match="SAME or VALID"):
        parse_shape("1,8,2,2,3,full")


def test_conv_cases_compute_the_convolution_and_its_gradients():
    shape = ConvShape("t", 2, 6, 3, 4)
    cases = {c.name: c for c in conv_cases(shape, ["lax", "patches"])}
    y_lax, y_patches = cases["t lax fwd"].run(), cases["t patches fwd"].run()
    assert y_lax.shape == (2, 6, 6, 4)
    np.testing.assert_allclose(y_lax, y_patches, rtol=1e-4, atol=1e-4)
    dx, dw = cases["t patches fwd+bwd"].run()
    dx_ref, dw_ref = cases["t lax fwd+bwd"].run()
    assert dx.shape == (2, 6, 6, 3) and dw.shape == (3, 3, 3, 4)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="unknown mode"):
        conv_cases(shape, ["lax"], modes=["sideways"])


def test_run_conv_bench_table_has_every_row():
    rows = run_conv_bench([ConvShape("t", 2, 6, 3, 4)], ["lax", "patches"], rounds=1,
                          target_s=0.0)
    assert [(r["impl"], r["mode"]) for r in rows] == [
        ("lax", "fwd"), ("lax", "fwd+bwd"), ("patches", "fwd"), ("patches", "fwd+bwd")]
    table = conv_bench_table(rows)
    assert table.count("\n") == 5 and "speed vs lax" in table


def test_cli_bench_prints_a_table(capsys):
    assert cli.main(["bench", "--shape", "2,6,3,4", "--impls", "lax,patches", "--rounds", "1",
                     "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "2x6x6x3->4" in out and "patches" in out and "GFLOP/s" in out


def test_cli_bench_rejects_bad_options(capsys):
    assert cli.main(["bench", "--impls", "lax,cudnn"]) == 2
    assert "--impls must list lax, patches or auto" in capsys.readouterr().err
    assert cli.main(["bench", "--shape", "1,2"]) == 2
    assert "--shape must be" in capsys.readouterr().err


@pytest.mark.parametrize("impl", ["lax", "patches"])
def test_run_steps_matches_separate_steps(impl):
    """K steps in one call (unrolled for lax on CPU, scanned for patches) == K separate steps."""
    model = jc.serial(jc.Conv(4, 3, impl=impl), jc.Relu(), jc.Flatten(), jc.Dense(3))
    opt = optax.sgd(0.1, momentum=0.9)
    key = jax.random.PRNGKey(0)
    xs = jax.random.normal(key, (3, 4, 5, 5, 2))
    ys = jnp.array([[0, 1, 2, 0], [1, 1, 0, 2], [2, 0, 1, 1]])
    state = jc.create_train_state(model, key, (-1, 5, 5, 2), opt)
    fresh = jax.tree_util.tree_map(jnp.copy, state)
    one = jc.make_train_step(model, opt)
    many = jc.make_train_step(model, opt, steps_per_call=3)
    losses = []
    for i in range(3):
        state, m = one(state, (xs[i], ys[i]))
        losses.append(float(m["loss"]))
    state3, m3 = many(fresh, (xs, ys))
    assert m3["loss"].shape == (3,)
    np.testing.assert_allclose(m3["loss"], losses, rtol=1e-5)
    assert int(state3.step) == 3
    for a, b in zip(jax.tree_util.tree_leaves(state3.params), jax.tree_util.tree_leaves(state.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_run_steps_unrolls_convolutions_on_cpu():
    """On CPU a step with a convolution primitive is unrolled: no loop around the convolution."""
    def one_step(c, x):
        y = jax.lax.conv_general_dilated(x, c, (1,), "SAME")
        return c, jnp.sum(y)

    jaxpr = jax.make_jaxpr(lambda c, xs: run_steps(one_step, c, xs, 3))(
        jnp.ones((2, 1, 3)), jnp.ones((3, 1, 1, 4)))
    names = {e.primitive.name for e in jaxpr.jaxpr.eqns}
    assert jax.default_backend() == "cpu"
    assert "scan" not in names and "while" not in names
    assert sum(e.primitive.name == "conv_general_dilated" for e in jaxpr.jaxpr.eqns) == 3


def test_run_steps_scans_convolution_free_steps():
    """A step without a convolution primitive (impl='patches', dense nets) keeps the lax.scan."""
    def one_step(c, x):
        return c + 1.0, jnp.sum(x @ c)

    jaxpr = jax.make_jaxpr(lambda c, xs: run_steps(one_step, c, xs, 4))(
        jnp.ones((3, 3)), jnp.ones((4, 2, 3)))
    names = [e.primitive.name for e in jaxpr.jaxpr.eqns]
    assert "scan" in names and "dot_general" not in names


def test_contains_convolution_sees_nested_jaxprs():
    model = jc.serial(jc.Conv(2, 3, impl="lax"), jc.Flatten(), jc.Dense(2))
    _, params, state = model.init(jax.random.PRNGKey(0), (-1, 4, 4, 1))

    def loss(p, impl_model):
        return jnp.sum(impl_model.apply(p, state, jnp.ones((1, 4, 4, 1)))[0])

    grad_lax = jax.make_jaxpr(jax.jit(jax.grad(lambda p: loss(p, model))))(params)
    assert contains_convolution(grad_lax)  # inside a pjit
    patches = jc.serial(jc.Conv(2, 3, impl="patches"), jc.Flatten(), jc.Dense(2))
    grad_patches = jax.make_jaxpr(jax.jit(jax.grad(lambda p: loss(p, patches))))(params)
    assert not contains_convolution(grad_patches)


def test_gpu_profile_kernel_classes_and_trace_parsing(tmp_path):
    import gzip

    import gpu  # benchmarks/gpu.py

    cases = {"sm90_xmma_fprop_implicit_gemm_bf16": "convolution",
             "cudnn_infer_dgrad_kernel": "convolution", "convolution.12": "convolution",
             "convert_select_fusion": "elementwise fusion", "loop_multiply_fusion": "elementwise fusion",
             "input_reduce_fusion_3": "fusion with a reduction", "cutlass_gemm_relu": "matmul",
             "Memcpy DtoD": "copy", "nccl_allreduce": "communication", "rng_kernel": "other"}
    for name, want in cases.items():
        assert gpu.kernel_category(name) == want, name
    events = [
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/host:CPU"}},
        {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/device:GPU:0"}},
        {"ph": "X", "pid": 1, "name": "host_op", "dur": 100.0},
        {"ph": "X", "pid": 2, "name": "fprop", "dur": 5.0},
        {"ph": "X", "pid": 2, "name": "fprop", "dur": 7.0},
        {"ph": "X", "pid": 2, "name": "loop_fusion", "dur": 1.0},
    ]
    os.makedirs(tmp_path / "plugins" / "profile")
    with gzip.open(tmp_path / "plugins" / "profile" / "t.trace.json.gz", "wt") as f:
        json.dump({"traceEvents": events}, f)
    assert gpu.trace_kernel_times(str(tmp_path)) == {"fprop": (12.0, 2), "loop_fusion": (1.0, 1)}
