"""Augmentations beyond the random crop and flip of ``jaxconv.data``: cutout, mixup and cutmix.

Two kinds of pure, jittable functions, both applied inside the compiled
training step (training mode only):

- per-image augmentations, ``augment(key, images) -> images`` (``fit(augment=...)``):
  ``cutout(size)``, and ``compose(...)`` to chain them after
  ``jaxconv.data.augmentation`` (crop, flip);
- batch mixes, ``mix(key, images, labels) -> (images, targets)`` (``fit(mix=...)``):
  ``mixup(alpha, num_classes)``, ``cutmix(alpha, num_classes)`` and
  ``mixing(num_classes, mixup=..., cutmix=...)``, which picks one of the two per
  batch. They pair every image with another of the batch (a random
  permutation) and return probability targets ``(N, K)`` mixed in the same
  proportion, for a loss that takes them (``jaxconv.losses.cross_entropy``).

``parse(spec)`` reads the command line's ``--augment`` spec
(``"crop:1,flip,cutout:4,mixup:0.2,cutmix:1.0"``) and ``build(spec, num_classes)``
makes the ``(augment, mix)`` pair it describes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxconv.data.arrays import augmentation
from jaxconv.validate import integer, number

AugmentFn = Callable[[Any, Any], Any]
MixFn = Callable[[Any, Any, Any], tuple[Any, Any]]


def _check_images(images: Any, context: str) -> None:
    if images.ndim != 4:
        raise ValueError(f"{context}: expected images (N, H, W, C), got shape {tuple(images.shape)}")


def cutout(size: int) -> AugmentFn:
    """``augment(key, images)`` that zeroes one ``size`` x ``size`` square of every image.

    The square's centre is a uniformly random pixel of the image (a different
    one per image) and the square is clipped at the borders, as in DeVries &
    Taylor (2017), so less than ``size**2`` pixels may be erased.
    """
    size = integer(size, "size", context="cutout", minimum=1)

    def augment(key, images):
        _check_images(images, "cutout")
        n, h, w = images.shape[:3]
        ky, kx = jax.random.split(key)
        cy = jax.random.randint(ky, (n, 1, 1), 0, h)
        cx = jax.random.randint(kx, (n, 1, 1), 0, w)
        rows, cols = jnp.arange(h)[None, :, None], jnp.arange(w)[None, None, :]
        low = size // 2
        inside = ((rows >= cy - low) & (rows < cy - low + size) & (cols >= cx - low) & (cols < cx - low + size))
        return jnp.where(inside[..., None], jnp.zeros((), images.dtype), images)

    return augment


def compose(*augments: AugmentFn | None) -> AugmentFn | None:
    """Chains per-image augmentations (``None`` entries are left out); ``None`` if none is left.

    With one augmentation that one is returned as it is; with several, the
    key is split into one key per augmentation.
    """
    chain = [a for a in augments if a is not None]
    if len(chain) <= 1:
        return chain[0] if chain else None

    def augment(key, images):
        for sub, a in zip(jax.random.split(key, len(chain)), chain):
            images = a(sub, images)
        return images

    return augment


def _targets(labels: Any, num_classes: int) -> Any:
    """Probability targets ``(N, K)`` from class ids ``(N,)``; targets are passed through."""
    if labels.ndim == 2:
        return labels.astype(jnp.float32)
    return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)


def _box_mask(key: Any, lam: Any, h: int, w: int) -> tuple[Any, Any]:
    """A box covering about ``1 - lam`` of an ``h`` x ``w`` image at a random centre (clipped).

    Returns ``(mask (h, w) bool, its area as a fraction of the image)``.
    """
    ky, kx = jax.random.split(key)
    side = jnp.sqrt(1.0 - lam)
    half_h, half_w = jnp.floor(h * side) // 2, jnp.floor(w * side) // 2
    cy, cx = jax.random.randint(ky, (), 0, h), jax.random.randint(kx, (), 0, w)
    rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
    mask = ((rows >= cy - half_h) & (rows < cy + half_h) & (cols >= cx - half_w) & (cols < cx + half_w))
    return mask, jnp.mean(mask.astype(jnp.float32))


def _mixer(name: str, alpha: float, num_classes: int, blend: Callable) -> MixFn:
    """A batch mix: ``lam ~ Beta(alpha, alpha)``, a random pairing, ``blend`` for the images."""
    alpha = number(alpha, "alpha", context=name, minimum=0, exclusive_minimum=True)
    num_classes = integer(num_classes, "num_classes", context=name, minimum=1)

    def mix(key, images, labels):
        _check_images(images, name)
        k_lam, k_perm, k_blend = jax.random.split(key, 3)
        lam = jax.random.beta(k_lam, alpha, alpha)
        order = jax.random.permutation(k_perm, images.shape[0])
        images, lam = blend(k_blend, lam, images, images[order])
        targets = _targets(labels, num_classes)
        return images, lam * targets + (1.0 - lam) * targets[order]

    return mix


def mixup(alpha: float, num_classes: int) -> MixFn:
    """Mixup (Zhang et al., 2018): ``lam * x + (1 - lam) * x[perm]``, targets likewise.

    One ``lam ~ Beta(alpha, alpha)`` per batch; ``perm`` a random permutation of the batch.
    """

    def blend(key, lam, images, others):
        lam = lam.astype(images.dtype)
        return lam * images + (1 - lam) * others, lam.astype(jnp.float32)

    return _mixer("mixup", alpha, num_classes, blend)


def cutmix(alpha: float, num_classes: int) -> MixFn:
    """CutMix (Yun et al., 2019): a box of each image replaced by the same box of its partner.

    The box covers about ``1 - lam`` of the image (``lam ~ Beta(alpha, alpha)``,
    one box per batch, random centre, clipped at the borders); the targets mix
    in the proportion of the pixels actually kept.
    """

    def blend(key, lam, images, others):
        mask, area = _box_mask(key, lam, images.shape[1], images.shape[2])
        return jnp.where(mask[None, :, :, None], others, images), 1.0 - area

    return _mixer("cutmix", alpha, num_classes, blend)


def mixing(num_classes: int, *, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0) -> MixFn | None:
    """Mixup, cutmix, or one of the two per batch (probability 1/2 each) when both are on.

    An ``alpha`` of 0 turns that mix off; ``None`` when both are off.
    """
    mixes = [make(alpha, num_classes) for make, alpha in ((mixup, mixup_alpha), (cutmix, cutmix_alpha))
             if alpha]
    if len(mixes) <= 1:
        return mixes[0] if mixes else None
    first, second = mixes

    def mix(key, images, labels):
        k_pick, k_mix = jax.random.split(key)
        pick = jax.random.bernoulli(k_pick)
        a, b = first(k_mix, images, labels), second(k_mix, images, labels)
        return jax.tree_util.tree_map(lambda x, y: jnp.where(pick, x, y), a, b)

    return mix


class AugmentSpec(NamedTuple):
    """The parts of an ``--augment`` spec (0/``False``: off)."""

    crop: int = 0
    flip: bool = False
    cutout: int = 0
    mixup: float = 0.0
    cutmix: float = 0.0


_VALUED = {"crop": ("crop padding", int, 0), "cutout": ("cutout size", int, 1),
           "mixup": ("mixup alpha", float, None), "cutmix": ("cutmix alpha", float, None)}


def _value(name: str, arg: str, spec: str) -> Any:
    """The value of ``name:arg`` in ``spec``, checked (``crop`` alone means ``crop:4``)."""
    if name == "crop" and not arg:
        return 4
    what, kind, minimum = _VALUED[name]
    try:
        value = kind(arg)
    except ValueError:
        value = None
    if kind is int:
        ok, expected = value is not None and value >= minimum, f"an int >= {minimum}"
    else:
        ok, expected = value is not None and 0 < value < float("inf"), "a finite number > 0"
    if not ok:
        raise ValueError(f"augment: {what} must be {expected}, got {arg!r} in {spec!r}")
    return value


def parse(spec: str) -> AugmentSpec:
    """Reads an augmentation spec: ``"none"`` or a comma list of ``crop:P``, ``flip``,
    ``cutout:S``, ``mixup:A`` and ``cutmix:A``.

    ``"crop"`` alone means ``crop:4``. Examples: ``"crop:4,flip"`` (CIFAR-10),
    ``"crop:1"`` (digits), ``"crop:1,cutout:3,mixup:0.2"``.

    Raises:
      ValueError: an unknown item or a bad value, naming it.
    """
    parts = {}
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        name, _, arg = part.partition(":")
        if name in ("none", "flip") and not arg:
            parts["flip"] = parts.get("flip", False) or name == "flip"
        elif name in _VALUED:
            parts[name] = _value(name, arg, spec)
        else:
            raise ValueError(f"augment: unknown item {part!r} in {spec!r}; expected 'none', 'flip', "
                             "'crop:P', 'cutout:S', 'mixup:A' or 'cutmix:A'")
    return AugmentSpec(**parts)


def build(spec: AugmentSpec | str, num_classes: int) -> tuple[AugmentFn | None, MixFn | None]:
    """``(augment, mix)`` for ``fit`` from a spec: crop, flip, then cutout; mixup and/or cutmix."""
    if isinstance(spec, str):
        spec = parse(spec)
    augment = compose(augmentation(spec.crop, spec.flip), cutout(spec.cutout) if spec.cutout else None)
    return augment, mixing(num_classes, mixup_alpha=spec.mixup, cutmix_alpha=spec.cutmix)
