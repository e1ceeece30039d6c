"""PNG plots of a training run (matplotlib, headless ``Agg`` backend).

- ``plot_history``: loss and accuracy per epoch, train and test.
- ``plot_filters``: the learned kernels of the first convolution layer.
- ``plot_feature_maps``: one test image and the first convolution block's
  output channels for it.
- ``plot_confusion``: the test confusion matrix (rows: true class, columns:
  predicted class), with counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from jaxconv.core import Layer, PyTree
from jaxconv.structure import intermediates


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> str:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def plot_history(history: Sequence[dict[str, float]], path: str) -> str:
    """Loss (left) and accuracy (right) per epoch, train and (if present) test."""
    plt = _pyplot()
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        for split, style in (("train", "-o"), ("test", "-s")):
            key = f"{split}_{metric}"
            if history and key in history[0]:
                ax.plot(epochs, [r[key] for r in history], style, markersize=3, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    ax_loss.set_title("loss")
    if history and "test_accuracy" in history[-1]:
        ax_acc.set_title(f"accuracy (final test {history[-1]['test_accuracy']:.4f})")
    else:
        ax_acc.set_title("accuracy")
    return _save(fig, path)


def _grid(n: int) -> tuple[int, int]:
    cols = math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


def mosaic(tiles: Sequence[np.ndarray], *, gap: int = 1, fill: float = np.nan) -> np.ndarray:
    """Tiles equally shaped ``(h, w)`` or ``(h, w, 3)`` images into one near-square image.

    Tiles are separated by ``gap`` pixels of ``fill`` (NaN: drawn as the
    colour map's "bad" colour). One ``imshow`` of the mosaic is much faster
    than one subplot per tile.
    """
    rows, cols = _grid(len(tiles))
    h, w = tiles[0].shape[:2]
    extra = tiles[0].shape[2:]
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, *extra), fill, np.float32)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, cols)
        out[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = tile
    return out


def _show(ax, image, **kwargs):
    ax.imshow(image, interpolation="nearest", **kwargs)
    ax.set_xticks([])
    ax.set_yticks([])


def first_conv(model: Layer, params: PyTree) -> tuple[list[str], Any]:
    """The path (list of keys) and kernel of the first convolution in ``model``.

    Walks ``Layer.children`` depth-first; raises ``ValueError`` if there is none.
    """
    def walk(layer, p, path):
        if layer.kind == "conv" and isinstance(p, dict) and "kernel" in p:
            return path, p["kernel"]
        for name, child in layer.children:
            if isinstance(p, dict) and name in p:
                found = walk(child, p[name], path + [name])
                if found is not None:
                    return found
        return None

    found = walk(model, params, [])
    if found is None:
        raise ValueError("first_conv: the model has no convolution layer (kind 'conv')")
    return found


def plot_filters(kernel: Any, path: str, *, title: str = "first convolution filters") -> str:
    """Each output filter of a 2-D kernel ``(kh, kw, C_in, C_out)`` as one tile of a mosaic.

    RGB kernels (``C_in == 3``) are shown in colour, each filter scaled to
    ``[0, 1]``; otherwise each filter's input channel 0 is scaled by its
    largest magnitude and drawn blue (negative) - white - red (positive).
    """
    plt = _pyplot()
    k = np.asarray(jax.device_get(kernel), np.float32)
    if k.ndim != 4:
        raise ValueError(f"plot_filters: expected a 2-D conv kernel (kh, kw, C_in, C_out), got shape {k.shape}")
    n = k.shape[-1]
    fig, ax = plt.subplots(figsize=(6, 6))
    if k.shape[2] == 3:
        tiles = [(f - f.min()) / (f.max() - f.min() + 1e-12) for f in np.moveaxis(k, -1, 0)]
        _show(ax, mosaic(tiles, fill=1.0))
    else:
        tiles = [f / (np.abs(f).max() + 1e-12) for f in np.moveaxis(k[:, :, 0], -1, 0)]
        cmap = plt.get_cmap("bwr").with_extremes(bad="0.85")
        _show(ax, mosaic(tiles), cmap=cmap, vmin=-1, vmax=1)
    ax.set_title(f"{title}\n({n} filters of {k.shape[0]}x{k.shape[1]}"
                 f"{', RGB' if k.shape[2] == 3 else ', input channel 0'})")
    return _save(fig, path)


def first_block_output(model: Layer, params: PyTree, state: PyTree, image: Any) -> Any:
    """Output of the first convolution's block for one image: ``(H', W', C)``.

    The block is the first convolution and the layer applied after it in the
    same combinator (its activation, say), or the convolution alone when it is
    its combinator's last layer; the outputs come from
    ``jaxconv.structure.intermediates``.
    """
    conv_path = "/".join(first_conv(model, params)[0])
    outputs = intermediates(model, params, state, np.asarray(image)[None])
    parent = conv_path.rpartition("/")[0]
    paths = list(outputs)
    after = [p for p in paths[paths.index(conv_path) + 1:] if p.rpartition("/")[0] == parent]
    return np.asarray(outputs[after[0] if after else conv_path][0])


def plot_feature_maps(model: Layer, params: PyTree, state: PyTree, image: Any, path: str,
                      *, label: Any = None) -> str:
    """The input image (left) and every channel of the first conv block's output for it (right).

    Each channel is scaled to its own ``[0, max]`` range.
    """
    plt = _pyplot()
    maps = first_block_output(model, params, state, image)
    img = np.asarray(image, np.float32)
    n = maps.shape[-1]
    tiles = [m / (np.abs(m).max() + 1e-12) for m in np.moveaxis(maps, -1, 0)]
    fig, (ax_in, ax_maps) = plt.subplots(1, 2, figsize=(10, 5), gridspec_kw={"width_ratios": [1, 2.5]})
    if img.shape[-1] == 3:
        _show(ax_in, np.clip(img, 0, 1))
    else:
        _show(ax_in, img[..., 0], cmap="gray")
    ax_in.set_title("input" if label is None else f"input (label {label})")
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")
    _show(ax_maps, mosaic(tiles), cmap=cmap)
    ax_maps.set_title(f"first convolution block output: {n} channels of {maps.shape[0]}x{maps.shape[1]}")
    return _save(fig, path)


def confusion_matrix(labels: Any, predictions: Any, num_classes: int) -> np.ndarray:
    """``(K, K)`` int counts: entry ``[i, j]`` = examples of class ``i`` predicted as ``j``."""
    m = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(m, (np.asarray(labels), np.asarray(predictions)), 1)
    return m


def plot_confusion(matrix: Any, path: str, *, class_names: Sequence[str] | None = None) -> str:
    """Heat map of a confusion matrix with the count in every non-empty cell."""
    plt = _pyplot()
    m = np.asarray(matrix)
    k = m.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    fig, ax = plt.subplots(figsize=(0.5 * k + 2.5, 0.5 * k + 2))
    ax.imshow(m, cmap="Blues")
    for i in range(k):
        for j in range(k):
            if m[i, j]:
                ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if m[i, j] > m.max() / 2 else "black")
    ax.set_xticks(range(k), names, rotation=45 if max(map(len, names)) > 2 else 0)
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    acc = np.trace(m) / max(m.sum(), 1)
    ax.set_title(f"confusion matrix (accuracy {acc:.4f}, {m.sum()} examples)")
    return _save(fig, path)
