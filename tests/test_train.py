"""Training: the step learns, runs are reproducible, fit checkpoints/resumes/stops on NaN."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxconv as jc
from jaxconv import checkpoint as ckpt
from jaxconv.data import augmentation
from jaxconv.recipes import learning_rate_schedule, make_optimizer
from jaxconv.train import NonFiniteLossError, fit, predict, with_augmentation

RNG = np.random.default_rng(0)
IMAGES = RNG.random((96, 6, 6, 1), dtype=np.float32)
LABELS = (IMAGES[:, :3].sum(axis=(1, 2, 3)) > IMAGES[:, 3:].sum(axis=(1, 2, 3))).astype(np.int32)
TRAIN = (IMAGES, LABELS)


def tiny_model():
    return jc.serial(jc.Conv(3, 3), jc.Relu(), jc.Flatten(), jc.Dense(2))


def leaves_equal(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(
        np.asarray(x).dtype == np.asarray(y).dtype and np.asarray(x).tobytes() == np.asarray(y).tobytes()
        for x, y in zip(la, lb))


def test_train_step_lowers_the_loss_on_a_fixed_batch():
    model = tiny_model()
    opt = optax.adam(1e-2)
    ts = jc.create_train_state(model, jax.random.PRNGKey(0), (-1, 6, 6, 1), opt)
    step = jc.make_train_step(model, opt, jc.cross_entropy)
    batch = (IMAGES[:32], LABELS[:32])
    losses = []
    for _ in range(25):
        ts, metrics = step(ts, batch)
        losses.append(float(metrics["loss"]))
    assert int(ts.step) == 25
    assert losses[-1] < 0.6 * losses[0], losses


def test_same_seed_gives_bitwise_identical_params_and_other_seed_differs():
    opt = make_optimizer("adamw", 3e-3, schedule="cosine", total_steps=12)
    kw = dict(epochs=2, batch_size=16, progress=False, log=None, augment=augmentation(1, flip=True))
    a, ha = fit(tiny_model(), opt, TRAIN, seed=1, **kw)
    b, hb = fit(tiny_model(), opt, TRAIN, seed=1, **kw)
    c, _ = fit(tiny_model(), opt, TRAIN, seed=2, **kw)
    assert int(a.step) == 12
    assert leaves_equal(a.params, b.params) and leaves_equal(a.opt_state, b.opt_state)
    assert [r["train_loss"] for r in ha] == [r["train_loss"] for r in hb]
    assert not leaves_equal(a.params, c.params)


def test_resume_mid_epoch_in_process_is_bitwise_identical(tmp_path):
    opt = make_optimizer("sgd", 0.05, schedule="onecycle", total_steps=18)
    kw = dict(test=(IMAGES[:20], LABELS[:20]), epochs=3, batch_size=16, seed=4, progress=False,
              log=None, augment=augmentation(1), checkpoint_every=4, keep=None)
    full, full_history = fit(tiny_model(), opt, TRAIN, checkpoint_dir=str(tmp_path / "a"), **kw)
    steps = [s for s, _ in ckpt.list_checkpoints(str(tmp_path / "a"))]
    assert steps == [4, 6, 8, 12, 16, 18]  # every 4 steps, plus each epoch end (6 steps)
    # Keep only the mid-epoch checkpoint of step 8 and resume from it.
    part = tmp_path / "b"
    part.mkdir()
    (part / "ckpt-000000008.safetensors").write_bytes(
        (tmp_path / "a" / "ckpt-000000008.safetensors").read_bytes())
    messages = []
    resumed, history = fit(tiny_model(), opt, TRAIN, checkpoint_dir=str(part), resume=True,
                           **dict(kw, log=messages.append))
    assert messages[0].startswith("resumed from") and "at step 8" in messages[0]
    assert leaves_equal(full, resumed)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in full_history]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def test_resume_skips_a_corrupt_newest_checkpoint(tmp_path):
    kw = dict(epochs=2, batch_size=16, seed=0, progress=False, checkpoint_dir=str(tmp_path), keep=None)
    full, _ = fit(tiny_model(), optax.sgd(0.05), TRAIN, log=None, **kw)
    assert [s for s, _ in ckpt.list_checkpoints(str(tmp_path))] == [6, 12]
    newest = tmp_path / "ckpt-000000012.safetensors"
    data = bytearray(newest.read_bytes())
    data[-5] ^= 1
    newest.write_bytes(bytes(data))
    messages = []
    resumed, _ = fit(tiny_model(), optax.sgd(0.05), TRAIN, log=messages.append, resume=True, **kw)
    assert "skipping" in messages[0] and "ckpt-000000012" in messages[0] and "SHA-256" in messages[0]
    assert "resumed from" in messages[1] and "at step 6" in messages[1]
    assert leaves_equal(full, resumed)


def test_resume_without_checkpoint_starts_fresh_and_finished_run_returns(tmp_path):
    opt = optax.sgd(0.1)
    kw = dict(epochs=1, batch_size=48, seed=0, progress=False, log=None,
              checkpoint_dir=str(tmp_path), resume=True)
    ts, history = fit(tiny_model(), opt, TRAIN, **kw)
    assert int(ts.step) == 2 and len(history) == 1
    again, history2 = fit(tiny_model(), opt, TRAIN, **kw)  # nothing left to do
    assert leaves_equal(ts.params, again.params) and history2 == history


def test_resume_rejects_a_different_batch_size(tmp_path):
    fit(tiny_model(), optax.sgd(0.1), TRAIN, epochs=1, batch_size=48, progress=False, log=None,
        checkpoint_dir=str(tmp_path))
    with pytest.raises(ValueError, match="written with batch_size=48, this run has batch_size=32"):
        fit(tiny_model(), optax.sgd(0.1), TRAIN, epochs=1, batch_size=32, progress=False, log=None,
            checkpoint_dir=str(tmp_path), resume=True)


def poison_after(n):
    """An optimizer stage that turns the updates into NaN from its ``n``-th call on."""

    def init(params):
        return jnp.zeros((), jnp.int32)

    def update(updates, count, params=None):
        updates = jax.tree.map(lambda u: jnp.where(count >= n, jnp.nan, u), updates)
        return updates, count + 1

    return optax.GradientTransformation(init, update)


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    # Steps 1-3 are fine; the update of step 4 makes the params NaN; the loss of step 5 is NaN.
    opt = optax.chain(optax.sgd(0.01), poison_after(3))
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss nan at step 5 \(epoch 1\); training "
                                                 r"stopped, the last good checkpoint is .*ckpt-000000003"):
        fit(tiny_model(), opt, TRAIN, epochs=2, batch_size=8, progress=False, log=None,
            checkpoint_dir=str(tmp_path), checkpoint_every=3)
    assert [s for s, _ in ckpt.list_checkpoints(str(tmp_path))] == [3]
    like = jc.create_train_state(tiny_model(), jax.random.PRNGKey(0), (-1, 6, 6, 1), opt)
    good = ckpt.load(ckpt.latest_checkpoint(str(tmp_path)), like)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(good.params))


def test_non_finite_params_are_never_checkpointed(tmp_path):
    opt = optax.chain(optax.sgd(0.01), poison_after(3))
    with pytest.raises(FloatingPointError, match="non-finite parameters after step 4"):
        fit(tiny_model(), opt, TRAIN, epochs=1, batch_size=8, progress=False, log=None,
            checkpoint_dir=str(tmp_path), checkpoint_every=4)
    assert ckpt.list_checkpoints(str(tmp_path)) == []


def test_with_augmentation_needs_a_key_in_training_only():
    model = with_augmentation(tiny_model(), augmentation(1))
    _, params, state = model.init(jax.random.PRNGKey(0), (-1, 6, 6, 1))
    y, _ = model.apply(params, state, IMAGES[:4])  # inference: no key needed, input unchanged
    ref, _ = tiny_model().apply(params, state, IMAGES[:4])
    np.testing.assert_array_equal(y, ref)
    with pytest.raises(ValueError, match="with_augmentation: training mode needs a key"):
        model.apply(params, state, IMAGES[:4], train=True)


def test_schedules_and_optimizer_factory():
    onecycle = learning_rate_schedule("onecycle", 1.0, 100)
    assert float(onecycle(30)) == pytest.approx(1.0) and float(onecycle(0)) == pytest.approx(0.04)
    assert float(onecycle(100)) < 1e-4
    cosine = learning_rate_schedule("cosine", 2.0, 10)
    assert float(cosine(5)) == pytest.approx(1.0) and float(cosine(10)) == pytest.approx(0.0)
    warm = learning_rate_schedule("warmup_cosine", 1.0, 100)
    assert float(warm(0)) == 0.0 and float(warm(5)) == pytest.approx(1.0)
    assert float(learning_rate_schedule("constant", 0.3, 5)(4)) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="unknown schedule 'step'; expected one of"):
        learning_rate_schedule("step", 1.0, 10)
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'; expected one of \\('sgd', 'adam', 'adamw'\\)"):
        make_optimizer("rmsprop", 0.1)
    with pytest.raises(ValueError, match="make_optimizer: lr must be a number > 0, got 0"):
        make_optimizer("adam", 0)
    for name in ("sgd", "adam", "adamw"):
        opt = make_optimizer(name, 0.1, weight_decay=0.01)
        params = {"w": jnp.ones(3)}
        updates, _ = opt.update({"w": jnp.ones(3)}, opt.init(params), params)
        assert np.all(np.asarray(updates["w"]) < 0)


def test_fit_argument_errors():
    with pytest.raises(ValueError, match="fit: checkpoint_every must be an int >= 1, got 0"):
        fit(tiny_model(), optax.sgd(0.1), TRAIN, checkpoint_every=0, checkpoint_dir="x")
    with pytest.raises(ValueError, match="resume=True needs checkpoint_dir"):
        fit(tiny_model(), optax.sgd(0.1), TRAIN, resume=True)
    with pytest.raises(ValueError, match="batch_size \\* steps_per_call = 200 exceeds the 96 training examples"):
        fit(tiny_model(), optax.sgd(0.1), TRAIN, batch_size=200)
    with pytest.raises(ValueError, match="96 images but 95 labels"):
        fit(tiny_model(), optax.sgd(0.1), (IMAGES, LABELS[:-1]))


def test_predict_matches_apply_with_padding():
    model = tiny_model()
    _, params, state = model.init(jax.random.PRNGKey(0), (-1, 6, 6, 1))
    logits, _ = model.apply(params, state, IMAGES[:10])
    np.testing.assert_array_equal(predict(model, params, state, IMAGES[:10], batch_size=4),
                                  np.argmax(logits, -1))


def test_resume_with_several_steps_per_call(tmp_path):
    kw = dict(epochs=2, batch_size=8, steps_per_call=3, seed=0, progress=False, log=None,
              checkpoint_every=5, keep=None)
    full, _ = fit(tiny_model(), optax.sgd(0.05), TRAIN, checkpoint_dir=str(tmp_path / "a"), **kw)
    # 4 calls of 3 steps per epoch; a checkpoint after each call that crosses a multiple of 5.
    assert [s for s, _ in ckpt.list_checkpoints(str(tmp_path / "a"))] == [6, 12, 15, 21, 24]
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "ckpt-000000015.safetensors").write_bytes(
        (tmp_path / "a" / "ckpt-000000015.safetensors").read_bytes())
    resumed, _ = fit(tiny_model(), optax.sgd(0.05), TRAIN, checkpoint_dir=str(tmp_path / "b"),
                     resume=True, **kw)
    assert int(resumed.step) == 24 and leaves_equal(full, resumed)


@pytest.mark.parametrize("impl", ["patches", "lax"])
def test_microbatches_give_the_whole_batch_update(impl):
    """M strided micro-batches: one update from the mean gradient, the batch's loss and accuracy
    (float64: equal to rounding). With lax on CPU the micro-batch loop is unrolled (run_steps)."""
    model = jc.serial(jc.Conv(4, 3, impl=impl), jc.Relu(), jc.Flatten(), jc.Dense(2))
    with jax.enable_x64(True):
        opt = optax.sgd(0.1)
        ts = jc.create_train_state(model, jax.random.PRNGKey(0), (-1, 6, 6, 1), opt)
        ts = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64) if a.dtype == jnp.float32 else a, ts)
        batch = (jnp.asarray(IMAGES[:24], jnp.float64), jnp.asarray(LABELS[:24]))
        outs = [jc.make_train_step(model, opt, microbatches=m)(jax.tree_util.tree_map(jnp.copy, ts), batch)
                for m in (1, 4)]
    (whole, m_whole), (micro, m_micro) = outs
    for a, b in zip(jax.tree_util.tree_leaves(whole.params), jax.tree_util.tree_leaves(micro.params)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    for name in ("loss", "accuracy"):
        np.testing.assert_allclose(m_whole[name], m_micro[name], rtol=1e-12)
    assert int(micro.step) == 1


def test_microbatches_errors_and_batch_statistics():
    model = jc.serial(jc.Conv(2, 3), jc.BatchNorm(), jc.Relu(), jc.Flatten(), jc.Dense(2))
    opt = optax.sgd(0.1)
    ts = jc.create_train_state(model, jax.random.PRNGKey(0), (-1, 6, 6, 1), opt)
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match=f"microbatches must be an int >= 1, got {bad!r}"):
            jc.make_train_step(model, opt, microbatches=bad)
    step = jc.make_train_step(model, opt, microbatches=4)
    with pytest.raises(ValueError, match="microbatched: microbatches=4 must divide the batch size, got a batch of 10"):
        step(ts, (IMAGES[:10], LABELS[:10]))
    # BatchNorm sees each micro-batch alone: its running state takes 4 updates, not 1.
    new, _ = step(jax.tree_util.tree_map(jnp.copy, ts), (IMAGES[:16], LABELS[:16]))
    once, _ = jc.make_train_step(model, opt)(jax.tree_util.tree_map(jnp.copy, ts), (IMAGES[:16], LABELS[:16]))
    assert not leaves_equal(new.state, once.state)
    with pytest.raises(ValueError, match="fit: microbatches=5 must divide batch_size=32"):
        fit(tiny_model(), opt, TRAIN, batch_size=32, microbatches=5)


def test_resume_rejects_other_microbatches(tmp_path):
    kw = dict(epochs=1, batch_size=16, progress=False, log=None, checkpoint_dir=str(tmp_path))
    fit(tiny_model(), optax.sgd(0.1), TRAIN, microbatches=2, **kw)
    with pytest.raises(ValueError, match="written with microbatches=2, this run has microbatches=4"):
        fit(tiny_model(), optax.sgd(0.1), TRAIN, microbatches=4, resume=True, **kw)
