"""What enters ``fit`` and ``evaluate`` is checked once, on the host, with messages that name the problem."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

import jaxconv as jc
from jaxconv.train import evaluate, fit
from jaxconv.train.inputs import check_labels, output_shape

RNG = np.random.default_rng(1)
IMAGES = RNG.random((24, 5, 5, 1), dtype=np.float32)
LABELS = (np.arange(24) % 3).astype(np.int32)


def model():
    return jc.serial(jc.Flatten(), jc.Dense(3))


def run_fit(train=(IMAGES, LABELS), **kw):
    return fit(model(), optax.sgd(0.1), train, **dict(dict(epochs=1, batch_size=8, progress=False, log=None), **kw))


@pytest.mark.parametrize("bad, position", [(3, 7), (-1, 0), (255, 23)])
def test_a_label_outside_the_classes_is_named_with_the_class_count(bad, position):
    labels = LABELS.copy()
    labels[position] = bad
    with pytest.raises(ValueError, match=rf"fit: train label {bad} \(example {position}\) is not a class of the "
                                         r"model, which has 3 outputs: labels must be in \[0, 3\); 1 of 24"):
        run_fit((IMAGES, labels))
    with pytest.raises(ValueError, match=rf"fit: test label {bad} \(example {position}\)"):
        run_fit(test=(IMAGES, labels))
    _, params, state = model().init(jax.random.PRNGKey(0), (-1, 5, 5, 1))
    with pytest.raises(ValueError, match=rf"evaluate: the data label {bad} .* has 3 outputs"):
        evaluate(model(), params, state, (IMAGES, labels))


def test_empty_splits_mismatched_shapes_and_bad_counts():
    with pytest.raises(ValueError, match=r"fit: test is empty \(0 examples\)"):
        run_fit(test=(IMAGES[:0], LABELS[:0]))
    with pytest.raises(ValueError, match=r"fit: train is empty \(0 examples\)"):
        run_fit((IMAGES[:0], LABELS[:0]))
    with pytest.raises(ValueError, match=r"fit: test images are \(4, 4, 1\) each, train images \(5, 5, 1\)"):
        run_fit(test=(IMAGES[:, :4, :4], LABELS))
    with pytest.raises(ValueError, match="fit: test has 24 images but 23 labels"):
        run_fit(test=(IMAGES, LABELS[:-1]))
    with pytest.raises(ValueError, match="fit: train must be an .images, labels. pair, got ndarray"):
        run_fit(IMAGES)
    for name, value, bounds in (("seed", 2**32, ">= 0 and <= 4294967295"), ("seed", -1, ">= 0 and <= 4294967295"),
                                ("epochs", 0, ">= 1"), ("batch_size", 0, ">= 1"), ("keep", 0, ">= 1"),
                                ("steps_per_call", 1.0, ">= 1")):
        with pytest.raises(ValueError, match=f"fit: {name} must be an int {bounds}, got {value!r}"):
            run_fit(**{name: value})
    _, params, state = model().init(jax.random.PRNGKey(0), (-1, 5, 5, 1))
    with pytest.raises(ValueError, match=r"evaluate: the data is empty \(0 examples\)"):
        evaluate(model(), params, state, (IMAGES[:0], LABELS[:0]))


def test_targets_shaped_like_the_outputs_are_left_to_the_loss():
    targets = np.eye(3, dtype=np.float32)[LABELS] * 5  # not class ids: 5 is no class, and need not be
    _, params, state = model().init(jax.random.PRNGKey(0), (-1, 5, 5, 1))
    check_labels(targets, output_shape(model(), params, state, IMAGES), name="train", context="fit")
    float_ids = LABELS.astype(np.float32)  # class ids as floats are checked like ints
    float_ids[2] = 3.0
    with pytest.raises(ValueError, match=r"fit: train label 3.0 \(example 2\)"):
        run_fit((IMAGES, float_ids), loss_fn=jc.losses.square_loss)
