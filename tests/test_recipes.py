"""The training recipe: EMA, gradient clipping, mixup/cutmix/cutout, soft-label losses, warmup."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxconv as jc
from jaxconv import augment
from jaxconv.recipes import learning_rate_schedule, make_optimizer
from jaxconv.train import ema_decay_at, fit, loss_and_grad

RNG = np.random.default_rng(0)
IMAGES = RNG.random((96, 6, 6, 1), dtype=np.float32)
LABELS = (IMAGES[:, :3].sum(axis=(1, 2, 3)) > IMAGES[:, 3:].sum(axis=(1, 2, 3))).astype(np.int32)
TRAIN, TEST = (IMAGES, LABELS), (IMAGES[:32], LABELS[:32])
SHAPE = (-1, 6, 6, 1)


def tiny_model():
    return jc.serial(jc.Conv(3, 3), jc.Relu(), jc.Flatten(), jc.Dense(2))


def bits(tree):
    return [np.asarray(x).tobytes() for x in jax.tree.leaves(tree)]


def run(**kw):
    kw = dict(dict(test=TEST, epochs=2, batch_size=16, seed=0, progress=False, log=None), **kw)
    return fit(tiny_model(), optax.adam(1e-2), TRAIN, **kw)


# --------------------------------------------------------------------------
# EMA


def test_ema_follows_its_recurrence_and_leaves_training_alone():
    model, opt = tiny_model(), optax.sgd(0.1)
    ts = jc.create_train_state(model, jax.random.PRNGKey(0), SHAPE, opt, ema=True)
    assert bits(ts.ema) == bits(ts.params)
    step = jc.make_train_step(model, opt, ema_decay=0.9)
    expected = jax.tree.map(np.array, ts.params)
    for t in range(1, 16):
        ts, _ = step(ts, (IMAGES[:16], LABELS[:16]))
        d = np.float32(min(0.9, (1 + t) / (10 + t)))
        expected = jax.tree.map(lambda e, p, d=d: e * d + np.asarray(p) * (1 - d), expected, ts.params)
    for a, b in zip(jax.tree.leaves(ts.ema), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert float(ema_decay_at(0.9, 1)) == pytest.approx(2 / 11) and float(ema_decay_at(0.9, 1000)) == np.float32(0.9)


def test_fit_with_ema_evaluates_the_average_and_trains_the_same_params():
    plain, plain_history = run()
    averaged, history = run(ema=0.95)
    assert bits(averaged.params) == bits(plain.params) and bits(averaged.opt_state) == bits(plain.opt_state)
    assert bits(averaged.ema) != bits(averaged.params)
    assert averaged.eval_params is averaged.ema and plain.eval_params is plain.params
    again = jc.evaluate(tiny_model(), averaged.ema, averaged.state, TEST)
    assert history[-1]["test_loss"] == again["loss"] != plain_history[-1]["test_loss"]
    assert [r["train_loss"] for r in history] == [r["train_loss"] for r in plain_history]
    assert bits(run(ema=0.95)[0]) == bits(averaged)  # bitwise reproducible


# --------------------------------------------------------------------------
# Gradient clipping


def test_clipping_scales_the_gradient_to_the_global_norm():
    model, opt = tiny_model(), optax.sgd(1.0)
    ts = jc.create_train_state(model, jax.random.PRNGKey(0), SHAPE, opt)
    batch = (IMAGES[:16], LABELS[:16])
    grads = loss_and_grad(model)(ts.params, ts.state, *batch, jax.random.fold_in(ts.key, 0))[0]
    norm = float(optax.tree.norm(grads))
    clipped, _ = jc.make_train_step(model, opt, clip_norm=norm / 4)(jax.tree.map(jnp.copy, ts), batch)
    for new, old, g in zip(jax.tree.leaves(clipped.params), jax.tree.leaves(ts.params), jax.tree.leaves(grads)):
        np.testing.assert_allclose(old - new, g / 4, rtol=2e-5, atol=1e-7)
    # Above the norm nothing changes, bit for bit.
    loose, _ = jc.make_train_step(model, opt, clip_norm=norm * 2)(jax.tree.map(jnp.copy, ts), batch)
    plain, _ = jc.make_train_step(model, opt)(jax.tree.map(jnp.copy, ts), batch)
    assert bits(loose) == bits(plain)


def test_fit_with_clipping_changes_the_run_reproducibly():
    plain, _ = run()
    a, b = run(clip_norm=0.05)[0], run(clip_norm=0.05)[0]
    assert bits(a) == bits(b) and bits(a.params) != bits(plain.params)
    with pytest.raises(ValueError, match="fit: clip_norm must be a number > 0, got 0"):
        run(clip_norm=0)
    with pytest.raises(ValueError, match="fit: ema must be a number > 0 and < 1, got 1"):
        run(ema=1)


# --------------------------------------------------------------------------
# Mixup, cutmix, cutout


def test_mixup_mixes_images_and_targets_in_one_proportion():
    key, x, y = jax.random.PRNGKey(3), IMAGES[:16], LABELS[:16]
    mixed, targets = augment.mixup(0.4, 2)(key, x, y)
    np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)
    # Recover the proportion and the pairing from the targets, then check the images.
    k_lam, k_perm, _ = jax.random.split(key, 3)
    lam = float(jax.random.beta(k_lam, 0.4, 0.4))
    order = np.asarray(jax.random.permutation(k_perm, 16))
    assert 0 < lam < 1 and sorted(order) == list(range(16)) and not np.array_equal(order, np.arange(16))
    np.testing.assert_allclose(mixed, lam * x + (1 - lam) * x[order], rtol=1e-6, atol=1e-6)
    onehot = np.eye(2, dtype=np.float32)[y]
    np.testing.assert_allclose(targets, lam * onehot + (1 - lam) * onehot[order], rtol=1e-6, atol=1e-7)


def test_cutmix_pastes_one_box_and_weighs_the_targets_by_its_area():
    x = np.arange(16 * 6 * 6, dtype=np.float32).reshape(16, 6, 6, 1)  # every pixel distinct
    y = np.arange(16) % 4
    mixed, targets = augment.cutmix(1.0, 4)(jax.random.PRNGKey(5), x, y)
    mixed, targets = np.asarray(mixed), np.asarray(targets)
    pasted = (mixed != x)[..., 0]
    box = pasted[np.flatnonzero(pasted.reshape(16, -1).any(1))[0]]  # an image not paired with itself
    assert box.any() and not box.all()
    rows, cols = np.flatnonzero(box.any(1)), np.flatnonzero(box.any(0))
    assert box[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # one rectangle
    kept = 1 - box.mean()
    partners = []
    for i in range(16):
        assert np.array_equal(mixed[i, ..., 0][~box], x[i, ..., 0][~box])  # the same box for every image
        partner = [j for j in range(16) if np.array_equal(mixed[i, ..., 0][box], x[j, ..., 0][box])]
        assert len(partner) == 1
        partners.append(partner[0])
        expected = kept * np.eye(4)[y[i]] + (1 - kept) * np.eye(4)[y[partner[0]]]
        np.testing.assert_allclose(targets[i], expected, rtol=1e-6, atol=1e-7)
    assert sorted(partners) == list(range(16))  # a permutation of the batch


def test_cutout_erases_one_clipped_square_per_image():
    x = np.ones((64, 8, 8, 1), np.float32)
    out = np.asarray(augment.cutout(3)(jax.random.PRNGKey(0), x))
    erased = (out == 0)[..., 0]
    counts = erased.reshape(64, -1).sum(1)
    assert counts.max() == 9 and counts.min() >= 4 and len(set(counts)) > 1  # clipped at the borders
    assert len({e.tobytes() for e in erased}) > 20  # centres differ per image


def test_mixing_both_picks_one_per_batch():
    both = augment.mixing(2, mixup_alpha=0.4, cutmix_alpha=1.0)
    kinds = set()
    for seed in range(8):
        key = jax.random.PRNGKey(seed)
        out = both(key, IMAGES[:16], LABELS[:16])
        k_pick, k_mix = jax.random.split(key)
        chosen = augment.mixup(0.4, 2) if bool(jax.random.bernoulli(k_pick)) else augment.cutmix(1.0, 2)
        assert bits(out) == bits(chosen(k_mix, IMAGES[:16], LABELS[:16]))
        kinds.add(bool(jax.random.bernoulli(k_pick)))
    assert kinds == {True, False}
    assert augment.mixing(2) is None


def test_fit_with_mixup_is_reproducible_and_sees_soft_targets():
    plain, _ = run()
    kw = dict(mix=augment.mixup(0.4, 2), augment=augment.cutout(2))
    a, history = run(**kw)
    b, _ = run(**kw)
    c, _ = run(**dict(kw, seed=1))
    assert bits(a) == bits(b) and bits(a.params) != bits(plain.params) and bits(a.params) != bits(c.params)
    assert all(np.isfinite(r["train_loss"]) for r in history)


def test_soft_targets_in_cross_entropy_and_accuracy():
    logits = jnp.asarray(RNG.normal(size=(5, 3)), jnp.float32)
    labels = jnp.asarray([0, 2, 1, 1, 0])
    onehot = jax.nn.one_hot(labels, 3)
    assert float(jc.cross_entropy(logits, onehot)) == pytest.approx(float(jc.cross_entropy(logits, labels)), rel=1e-6)
    soft = jnp.asarray(RNG.dirichlet(np.ones(3), size=5), jnp.float32)
    ref = -np.mean(np.sum(np.asarray(soft) * np.asarray(jax.nn.log_softmax(logits)), -1))
    assert float(jc.cross_entropy(logits, soft)) == pytest.approx(ref, rel=1e-6)
    smoothed = float(jc.cross_entropy(logits, soft, label_smoothing=0.3))
    assert smoothed == pytest.approx(float(jc.cross_entropy(logits, 0.7 * soft + 0.1)), rel=1e-6)
    assert float(jc.cross_entropy(logits, onehot, label_smoothing=0.3)) == pytest.approx(
        float(jc.cross_entropy(logits, labels, label_smoothing=0.3)), rel=1e-6)
    assert float(jc.accuracy(logits, soft)) == float(jc.accuracy(logits, jnp.argmax(soft, -1)))


def test_augment_specs():
    assert augment.parse("crop:1,flip,cutout:3,mixup:0.2,cutmix:1") == augment.AugmentSpec(1, True, 3, 0.2, 1.0)
    assert augment.parse("none") == augment.AugmentSpec() and augment.parse("crop").crop == 4
    per_image, mix = augment.build("crop:1", 10)
    assert mix is None and per_image is not None
    assert augment.build("none", 10) == (None, None)
    for spec, message in (("rotate", "augment: unknown item 'rotate' in 'rotate'"),
                          ("cutout:0", "augment: cutout size must be an int >= 1, got '0'"),
                          ("mixup:-1", "augment: mixup alpha must be a finite number > 0, got '-1'"),
                          ("cutmix:nan", "augment: cutmix alpha must be a finite number > 0, got 'nan'"),
                          ("crop:x", "augment: crop padding must be an int >= 0, got 'x'")):
        with pytest.raises(ValueError, match=message):
            augment.parse(spec)
    with pytest.raises(ValueError, match="mixup: alpha must be a number > 0, got 0"):
        augment.mixup(0, 10)
    with pytest.raises(ValueError, match="cutmix: expected images \\(N, H, W, C\\), got shape \\(4, 6\\)"):
        augment.cutmix(1.0, 2)(jax.random.PRNGKey(0), jnp.zeros((4, 6)), jnp.zeros(4, jnp.int32))


# --------------------------------------------------------------------------
# Warmup


def test_warmup_on_every_schedule():
    for name in ("constant", "cosine", "onecycle"):
        base = learning_rate_schedule(name, 1.0, 90)
        warm = learning_rate_schedule(name, 1.0, 100, warmup_steps=10)
        assert float(warm(0)) == 0.0
        assert float(warm(5)) == pytest.approx(float(base(0)) / 2, rel=1e-6)
        for t in (10, 40, 100):
            assert float(warm(t)) == pytest.approx(float(base(t - 10)), rel=1e-6, abs=1e-9)
    fraction = learning_rate_schedule("cosine", 1.0, 200, warmup_steps=0.05)
    assert float(fraction(10)) == pytest.approx(1.0) and float(fraction(5)) == pytest.approx(0.5)
    assert float(learning_rate_schedule("warmup_cosine", 1.0, 100, warmup_steps=20)(20)) == pytest.approx(1.0)
    default = learning_rate_schedule("warmup_cosine", 1.0, 100)
    assert float(default(5)) == pytest.approx(1.0)  # its own 5 % warmup
    steps = jnp.arange(100)
    assert bits(jax.vmap(learning_rate_schedule("onecycle", 1.0, 100, warmup_steps=0))(steps)) == bits(
        jax.vmap(learning_rate_schedule("onecycle", 1.0, 100))(steps))
    for bad, message in ((1.5, "a number > 0 and < 1, got 1.5"), (-1, "an int >= 0, got -1"), ("5", "an int")):
        with pytest.raises(ValueError, match=f"learning_rate_schedule: warmup_steps must be {message}"):
            learning_rate_schedule("cosine", 1.0, 100, warmup_steps=bad)
    opt = make_optimizer("sgd", 0.5, schedule="constant", total_steps=10, warmup_steps=4)
    params = {"w": jnp.ones(2)}
    state = opt.init(params)
    updates, state = opt.update({"w": jnp.ones(2)}, state, params)
    assert np.all(np.asarray(updates["w"]) == 0)  # the first step's rate is 0
