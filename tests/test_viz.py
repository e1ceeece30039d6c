"""Plots: the mosaic layout, the confusion matrix, and the PNG files."""

from __future__ import annotations

import jax
import matplotlib.image
import numpy as np
import pytest

import jaxconv as jc
from jaxconv import viz


def test_mosaic_places_tiles_row_major_with_gaps():
    tiles = [np.full((2, 3), k, np.float32) for k in range(5)]
    m = viz.mosaic(tiles, gap=1)
    assert m.shape == (2 * 2 + 1, 3 * 3 + 2)  # 5 tiles -> 2 rows x 3 columns
    assert m[0, 0] == 0 and m[0, 4] == 1 and m[0, 8] == 2 and m[3, 0] == 3 and m[3, 4] == 4
    assert np.isnan(m[2, 0]) and np.isnan(m[0, 3]) and np.isnan(m[3, 8])  # gaps and the empty slot


def test_confusion_matrix_counts():
    m = viz.confusion_matrix([0, 1, 1, 2, 2, 2], [0, 1, 2, 2, 2, 0], 3)
    np.testing.assert_array_equal(m, [[1, 0, 0], [0, 1, 1], [1, 0, 2]])


def test_plots_are_written(tmp_path):
    model = jc.serial(jc.Conv(5, 3), jc.Relu(), jc.Flatten(), jc.Dense(3))
    _, params, state = model.init(jax.random.PRNGKey(0), (-1, 6, 6, 3))
    path, kernel = viz.first_conv(model, params)
    assert path == ["conv0"] and kernel.shape == (3, 3, 3, 5)
    image = np.random.default_rng(0).random((6, 6, 3), dtype=np.float32)
    files = [
        viz.plot_filters(kernel, str(tmp_path / "f.png")),
        viz.plot_feature_maps(model, params, state, image, str(tmp_path / "m.png"), label=2),
        viz.plot_confusion(np.eye(3, dtype=int) * 4, str(tmp_path / "c.png")),
        viz.plot_history([{"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.5},
                          {"epoch": 2, "train_loss": 0.5, "train_accuracy": 0.7}], str(tmp_path / "h.png")),
    ]
    for f in files:
        assert matplotlib.image.imread(f).shape[2] in (3, 4)
    assert viz.first_block_output(model, params, state, image).shape == (6, 6, 5)
    with pytest.raises(ValueError, match=r"expected a 2-D conv kernel \(kh, kw, C_in, C_out\), got shape \(3, 5\)"):
        viz.plot_filters(np.ones((3, 5)), str(tmp_path / "x.png"))
    dense = jc.serial(jc.Flatten(), jc.Dense(2))
    _, p, _ = dense.init(jax.random.PRNGKey(0), (-1, 4))
    with pytest.raises(ValueError, match="the model has no convolution layer"):
        viz.first_conv(dense, p)
