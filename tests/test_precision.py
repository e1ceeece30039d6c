"""Mixed precision: bf16 and fp16 policies train digits; fp16's dynamic loss scale recovers from overflow."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxconv as jc
from jaxconv import checkpoint as ckpt
from jaxconv.precision import DynamicLossScale, LossScaleState, Policy, get_policy, next_loss_scale
from jaxconv.train import fit

DIGITS = jc.load_dataset("digits")
SHAPE = (-1, 8, 8, 1)


def small_cnn():
    return jc.serial(jc.Conv(8, 3), jc.BatchNorm(), jc.Relu(), jc.MaxPool(2), jc.Flatten(), jc.Dense(10))


def equal_bits(a, b):
    return all(np.asarray(x).tobytes() == np.asarray(y).tobytes()
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope="module")
def runs():
    kw = dict(test=DIGITS.test, epochs=4, batch_size=64, seed=0, progress=False, log=None)
    return {policy: fit(small_cnn(), optax.adam(1e-2), DIGITS.train, policy=policy, **kw)
            for policy in ("f32", "bf16", "fp16")}


@pytest.mark.parametrize("policy", ["bf16", "fp16"])
def test_low_precision_policies_train_digits(runs, policy):
    ts, history = runs[policy]
    f32 = runs["f32"][1][-1]["test_accuracy"]
    assert history[-1]["test_accuracy"] > 0.9 and abs(history[-1]["test_accuracy"] - f32) < 0.03
    # Params, BatchNorm statistics and the optimizer state stay float32.
    for tree in (ts.params, ts.state, ts.opt_state):
        assert {a.dtype for a in jax.tree.leaves(tree) if jnp.issubdtype(a.dtype, jnp.floating)} == {
            jnp.dtype(jnp.float32)}
    assert not equal_bits(ts.params, runs["f32"][0].params)
    if policy == "fp16":
        assert float(ts.loss_scale.scale) == 2.0 ** 16 and int(ts.loss_scale.good_steps) == int(ts.step)
    else:
        assert ts.loss_scale is None


def equations(jaxpr):
    """``(primitive name, input dtypes, output dtypes)`` of every equation, nested jaxprs included."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    for eqn in jaxpr.eqns:
        yield (eqn.primitive.name, [str(v.aval.dtype) for v in eqn.invars if hasattr(v.aval, "dtype")],
               [str(v.aval.dtype) for v in eqn.outvars])
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if hasattr(getattr(sub, "jaxpr", sub), "eqns"):
                    yield from equations(sub)


@pytest.mark.parametrize("policy, dtype", [("bf16", "bfloat16"), ("fp16", "float16"), ("f32", "float32")])
def test_the_model_computes_in_the_policy_dtype_and_statistics_and_loss_in_float32(policy, dtype):
    model = jc.serial(jc.Conv(8, 3, impl="lax"), jc.BatchNorm(), jc.Relu(), jc.Flatten(), jc.Dense(10))
    opt = optax.sgd(0.1)
    ts = jc.create_train_state(model, jax.random.PRNGKey(0), SHAPE, opt, policy=policy)
    step = jc.make_train_step(model, opt, policy=policy)
    eqns = list(equations(jax.make_jaxpr(step)(ts, (DIGITS.train.images[:8], DIGITS.train.labels[:8]))))
    # Forward and backward convolutions and matmuls (conv: 2, no input gradient; dense: 3) run in
    # the compute dtype...
    heavy = [e for e in eqns if e[0] in ("conv_general_dilated", "dot_general")]
    assert len(heavy) == 5 and all(e[1] == [dtype, dtype] for e in heavy), heavy
    # ... the batch statistics (the forward pass's first sums, over the conv output) and the
    # softmax in float32 (the backward pass sums bias gradients in the compute dtype).
    sums = [e for e in eqns if e[0] == "reduce_sum"]
    assert [e[1:] for e in sums[:2]] == [(["float32"], ["float32"])] * 2
    assert all(e[2] == ["float32"] for e in eqns if e[0] in ("log", "exp", "reduce_max") and e[1] != ["int32"])


def test_fp16_dynamic_scaling_skips_overflowing_steps_and_recovers():
    model, opt = small_cnn(), optax.adam(1e-2)
    ts = jc.create_train_state(model, jax.random.PRNGKey(0), SHAPE, opt, policy="fp16")
    step = jc.make_train_step(model, opt, policy="fp16")
    batch = (DIGITS.train.images[:64], DIGITS.train.labels[:64])
    ts, first = step(ts, batch)
    assert float(ts.loss_scale.scale) == 2.0 ** 16 and int(ts.loss_scale.good_steps) == 1
    # Inject an overflow: a loss scale of 2**40 sends the float16 backward pass to inf.
    ts = ts._replace(loss_scale=LossScaleState(jnp.float32(2.0 ** 40), jnp.int32(0)))
    before = jax.tree.map(np.array, ts)
    skipped = 0
    while True:
        ts, metrics = step(ts, batch)
        assert np.isfinite(float(metrics["loss"]))  # the forward pass and the loss are fine
        if not equal_bits(ts.params, before.params):
            break
        skipped += 1
        # A skipped step leaves params, layer state and optimizer state alone and halves the scale.
        assert equal_bits((ts.state, ts.opt_state), (before.state, before.opt_state))
        assert float(ts.loss_scale.scale) == 2.0 ** (40 - skipped) and int(ts.loss_scale.good_steps) == 0
        assert int(ts.step) == int(before.step) + skipped
        assert skipped < 30
    assert skipped >= 10  # 2**30 and above overflow float16 gradients of this model
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(ts.params))
    assert int(ts.loss_scale.good_steps) == 1
    for _ in range(10):
        ts, metrics = step(ts, batch)
    assert float(metrics["loss"]) < float(first["loss"])


def test_the_loss_scale_grows_after_growth_interval_finite_steps():
    config = DynamicLossScale(init_scale=8.0, growth_interval=3)
    state = LossScaleState(jnp.float32(8.0), jnp.int32(0))
    scales = []
    for finite in (True, True, True, True, False, True, True, True):
        state = next_loss_scale(config, state, jnp.asarray(finite))
        scales.append((float(state.scale), int(state.good_steps)))
    assert scales == [(8, 1), (8, 2), (16, 0), (16, 1), (8, 0), (8, 1), (8, 2), (16, 0)]
    huge = next_loss_scale(config, LossScaleState(jnp.float32(3e38), jnp.int32(2)), jnp.asarray(True))
    assert float(huge.scale) == np.float32(3e38)  # no growth into inf
    # A custom policy: the train state starts at its init_scale.
    policy = Policy("fp16-small", jnp.float16, config)
    ts = jc.create_train_state(small_cnn(), jax.random.PRNGKey(0), SHAPE, optax.sgd(0.1), policy=policy)
    assert float(ts.loss_scale.scale) == 8.0


def test_fp16_runs_checkpoint_the_loss_scale_and_resume_bitwise(tmp_path):
    kw = dict(epochs=2, batch_size=128, seed=1, progress=False, log=None, policy="fp16", keep=None)
    full, _ = fit(small_cnn(), optax.adam(1e-2), DIGITS.train, checkpoint_dir=str(tmp_path / "a"), **kw)
    first = ckpt.list_checkpoints(str(tmp_path / "a"))[0][1]
    arrays = ckpt.load_arrays(first)
    assert arrays["loss_scale/scale"] == np.float32(2.0 ** 16) and int(arrays["loss_scale/good_steps"]) == 11
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "ckpt-000000011.safetensors").write_bytes(open(first, "rb").read())
    resumed, _ = fit(small_cnn(), optax.adam(1e-2), DIGITS.train, checkpoint_dir=str(tmp_path / "b"),
                     resume=True, **kw)
    assert equal_bits(full, resumed)
    with pytest.raises(ValueError, match="written with policy='fp16', this run has policy='bf16'"):
        fit(small_cnn(), optax.adam(1e-2), DIGITS.train, checkpoint_dir=str(tmp_path / "b"), resume=True,
            **dict(kw, policy="bf16"))


def test_policy_arguments():
    assert get_policy(None).name == "f32" and get_policy("bf16").compute_dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="fit: unknown policy 'fp8'; expected one of \\('f32', 'bf16', 'fp16'\\)"):
        fit(small_cnn(), optax.sgd(0.1), DIGITS.train, policy="fp8")
    with pytest.raises(ValueError, match="get_policy: growth_interval must be an int >= 1, got 0"):
        get_policy(Policy("x", jnp.float16, DynamicLossScale(growth_interval=0)))
    with pytest.raises(TypeError, match="policy must be one of"):
        get_policy(jnp.float16)
    model, opt = small_cnn(), optax.sgd(0.1)
    ts = jc.create_train_state(model, jax.random.PRNGKey(0), SHAPE, opt)  # no loss scale
    with pytest.raises(ValueError, match="the train state has no loss scale; create it with"):
        jc.make_train_step(model, opt, policy="fp16")(ts, (DIGITS.train.images[:8], DIGITS.train.labels[:8]))
