"""The introductory ConvNet, step by step, on a real photograph.

A 32x32x3 image goes through a Conv layer with 12 filters (3x3, SAME padding)
-> 32x32x12, ReLU -> 32x32x12, 2x2 max pooling with stride 2 -> 16x16x12, and a
fully connected layer -> class scores. The 12 filters are set by hand: four
edge detectors (Sobel x, Sobel y, Laplacian, diagonal) on each colour channel.
The feature maps are saved as a PNG.

    python examples/intro_walkthrough.py [--out runs/intro_walkthrough.png]
"""

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from sklearn.datasets import load_sample_images

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # uninstalled
from jaxconv.models import intro_cnn  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

EDGES = {
    "sobel x": [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]],
    "sobel y": [[-1, -2, -1], [0, 0, 0], [1, 2, 1]],
    "laplacian": [[0, 1, 0], [1, -4, 1], [0, 1, 0]],
    "diagonal": [[2, 1, 0], [1, 0, -1], [0, -1, -2]],
}
CHANNELS = ("red", "green", "blue")


def load_photo(size=32):
    """scikit-learn's flower photo, centre-cropped to a square and resized to size x size x 3."""
    img = load_sample_images().images[1].astype(np.float32) / 255.0  # (427, 640, 3)
    h, w, _ = img.shape
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    square = img[top:top + s, left:left + s]
    return jax.image.resize(jnp.asarray(square), (size, size, 3), method="linear", antialias=True)


def edge_kernel():
    """(3, 3, 3, 12): filter 3*e + c applies edge detector e to colour channel c only."""
    kernel = np.zeros((3, 3, 3, 12), np.float32)
    for e, weights in enumerate(EDGES.values()):
        for c in range(3):
            kernel[:, :, c, 3 * e + c] = weights
    return jnp.asarray(kernel)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/intro_walkthrough.png")
    args = parser.parse_args()

    image = load_photo()
    x = image[None]  # a batch of one: (1, 32, 32, 3)
    model = intro_cnn(num_classes=10, impl="lax")
    out_shape, params, state = model.init(jax.random.PRNGKey(0), (-1, 32, 32, 3))
    params["conv0"] = {"kernel": edge_kernel(), "bias": jnp.zeros(12)}

    print(f"input volume: {'x'.join(map(str, x.shape[1:]))}")
    volumes = {}
    for name, layer in model.children:  # serial's (name, layer) pairs, applied one by one
        x, _ = layer.apply(params[name], state[name], x)
        volumes[name] = x
        dims = "x".join(map(str, x.shape[1:]))
        print(f"  {name:<10} ({layer.kind}) -> {dims}")
    scores = np.asarray(x[0])
    print(f"class scores (untrained Dense layer): {np.array2string(scores, precision=3)}")
    print(f"declared output shape {out_shape}, produced {tuple(x.shape)}")

    names = [f"{e}, {c}" for e in EDGES for c in CHANNELS]
    fig, axes = plt.subplots(3, 13, figsize=(19, 5.2))
    rows = (("conv0", "conv 32x32x12"), ("relu0", "ReLU 32x32x12"),
            ("max_pool0", "max pool 16x16x12"))
    for r, (key, title) in enumerate(rows):
        if r == 0:
            axes[r, 0].imshow(np.clip(np.asarray(image), 0, 1))
            axes[r, 0].set_title("input 32x32x3", fontsize=8)
        else:
            axes[r, 0].axis("off")
        axes[r, 0].text(-0.15, 0.5, title, transform=axes[r, 0].transAxes, rotation=90,
                        va="center", ha="right", fontsize=8)
        maps = np.asarray(volumes[key][0])
        for f in range(12):
            axes[r, f + 1].imshow(maps[..., f], cmap="gray")
            if r == 0:
                axes[r, f + 1].set_title(names[f], fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("seed ConvNet on scikit-learn's flower photo: rows = conv, ReLU, 2x2 max pool")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
