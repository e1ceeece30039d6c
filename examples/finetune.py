"""Fine-tune a torchvision-layout ResNet-18 on a small dataset: frozen backbone, then all layers.

No weights can be downloaded here, so the example makes its "pretrained"
checkpoint itself: torchvision's ResNet-18 with its random initialisation,
saved as a ``.safetensors`` state dict, exactly as a downloaded one would be
stored. The steps are those of a real fine-tuning run:

1. load the torchvision state dict into jaxconv's ``resnet18`` (1000 classes);
2. build the 10-class model and take every weight but the new head from it
   (``jaxconv.convert.transfer``);
3. train only the head (an Optax mask freezes the backbone), then every layer
   with a smaller learning rate;
4. report the test accuracy after each phase.

The data are the embedded 8x8 digits, upsampled to 32x32 RGB.

    python examples/finetune.py [--epochs 3]
"""

import argparse
import os
import sys
import tempfile
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxconv as jc
from jaxconv.convert import load_torch_state_dict, transfer
from jaxconv.models import resnet18

INPUT = (-1, 32, 32, 3)


def torchvision_checkpoint(path: str) -> None:
    """Writes torchvision's ResNet-18 (random init) as a ``.safetensors`` state dict."""
    import safetensors.numpy
    # torchvision's compiled ops do not load beside a CPU-only torch on every
    # machine; its model code is pure Python and imports without them.
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("stub"))
    import torchvision

    model = torchvision.models.resnet18(weights=None)
    safetensors.numpy.save_file({k: v.numpy() for k, v in model.state_dict().items()}, path)


def rgb32(images: np.ndarray) -> np.ndarray:
    """``(N, 8, 8, 1)`` digits -> ``(N, 32, 32, 3)``: bilinear upsampling, standardised, grey to RGB."""
    x = jc.ops.resize(jnp.asarray(images), size=(32, 32), method="bilinear")
    x = (x - x.mean()) / x.std()
    return np.asarray(jnp.repeat(x, 3, axis=-1))


def head_only(params):
    """Optax labels: ``"train"`` for the classifier ``fc``, ``"frozen"`` for the backbone."""
    return {name: jax.tree_util.tree_map(lambda _, n=name: "train" if n == "fc" else "frozen", tree)
            for name, tree in params.items()}


def _backbone(params):
    return {name: tree for name, tree in params.items() if name != "fc"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs per phase")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, "resnet18.safetensors")
        torchvision_checkpoint(weights)
        params_1000, state = load_torch_state_dict(resnet18(1000), INPUT, weights)
    print("loaded torchvision's resnet18 state dict: "
          f"{jc.count_params(params_1000):,} params")

    data = jc.load_dataset("digits")
    train = (rgb32(data.train.images), data.train.labels)
    test = (rgb32(data.test.images), data.test.labels)

    model = resnet18(num_classes=10)
    _, fresh, _ = model.init(jax.random.PRNGKey(0), INPUT)
    params, new_head = transfer(params_1000, fresh)
    print(f"new head (fresh initialisation): {', '.join(new_head)}")

    frozen = optax.multi_transform({"train": optax.adam(1e-3), "frozen": optax.set_to_zero()},
                                   head_only(params))
    for name, optimizer in [("frozen backbone", frozen), ("all layers", optax.adam(1e-4))]:
        ts = jc.create_train_state(model, jax.random.PRNGKey(1), INPUT, optimizer)
        backbone = [np.asarray(a) for a in jax.tree_util.tree_leaves(_backbone(params))]
        ts = ts._replace(params=params, state=state, opt_state=optimizer.init(params))
        ts, history = jc.fit(model, optimizer, train, test=test, epochs=args.epochs, batch_size=64,
                             train_state=ts, progress=False, log=None)
        # (``fit`` donates the train state it is given: compare with the host copy.)
        moved = max(float(np.max(np.abs(a - np.asarray(b))))
                    for a, b in zip(backbone, jax.tree_util.tree_leaves(_backbone(ts.params))))
        params, state = ts.params, ts.state
        print(f"{name}: test accuracy {history[-1]['test_accuracy']:.4f} "
              f"(largest change of a backbone weight: {moved:.3g})")


if __name__ == "__main__":
    main()
