"""Check your own convolution against lax with jaxconv's verification helpers.

Here the "custom" convolution is a shift-and-add one (one small matmul per
kernel position, summed). It reuses jaxconv's shared argument normalisation
(``padding_pairs``, ``pad_with_mode``), so it accepts every padding form and
padding_mode. ``jaxconv.verify.verify`` draws random configurations and
compares value and gradient with ``lax.conv_general_dilated``.

A deliberately wrong variant (a true convolution, i.e. a flipped kernel) is
caught as a mismatch.

Run: python examples/verify_custom_conv.py
"""

import itertools
import sys

import jax.numpy as jnp
from jax import lax

from jaxconv.ops.spec import pad_with_mode, padding_pairs
from jaxconv.validate import int_tuple
from jaxconv.verify import format_report, verify


def shift_add_conv(x, kernel, *, stride=1, padding="SAME", dilation=1, groups=1,
                   padding_mode="zeros", flip=False):
    nd = kernel.ndim - 2
    window = kernel.shape[:nd]
    strides = int_tuple(stride, "stride", context="shift_add_conv", length=nd, minimum=1)
    dilations = int_tuple(dilation, "dilation", context="shift_add_conv", length=nd, minimum=1)
    pads = padding_pairs(padding, x.shape[1:-1], window, strides, dilations)
    x, pads = pad_with_mode(x, pads, padding_mode)  # reflect/replicate/circular; crops remain
    x = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), *[(lo, hi, 0) for lo, hi in pads],
                                            (0, 0, 0)])
    out = [(n - (k - 1) * d - 1) // s + 1 for n, k, d, s in
           zip(x.shape[1:-1], window, dilations, strides)]
    cg, f = kernel.shape[-2:]
    y = 0
    for pos in itertools.product(*map(range, window)):
        sl = x[(slice(None), *[slice(p * d, p * d + (o - 1) * s + 1, s)
                               for p, d, o, s in zip(pos, dilations, out, strides)])]
        tap = kernel[tuple(k - 1 - p for k, p in zip(window, pos))] if flip else kernel[pos]
        part = jnp.einsum("...gc,cgf->...gf", sl.reshape(*sl.shape[:-1], groups, cg),
                          tap.reshape(cg, groups, f // groups), precision=lax.Precision.HIGHEST)
        y = y + part.reshape(*part.shape[:-2], f)
    return y


if __name__ == "__main__":
    report = verify(40, candidate=lambda op: shift_add_conv, ops=("conv",), seed=1)
    print("shift-and-add convolution vs lax:")
    print(format_report(report))

    flipped = lambda x, k, **kw: shift_add_conv(x, k, flip=True, **kw)  # noqa: E731
    bad = verify(10, candidate=lambda op: flipped, ops=("conv",), dims=(2,), seed=2)
    print(f"\nthe same with a flipped kernel (a bug): {len(bad.failures)} of {bad.cases} "
          f"configurations mismatch (worst relative error {bad.worst_value:.2e})")
    sys.exit(0 if report.ok and not bad.ok else 1)
