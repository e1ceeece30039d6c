"""Pure array functions: convolution, pooling and resizing (channels-last)."""

from jaxconv.ops.conv import conv, conv_transpose
from jaxconv.ops.patches import extract_patches
from jaxconv.ops.pool import (
    adaptive_avg_pool,
    adaptive_max_pool,
    avg_pool,
    global_avg_pool,
    global_max_pool,
    max_pool,
    max_unpool,
    min_pool,
)
from jaxconv.ops.sampling import pixel_shuffle, pixel_unshuffle, resize
from jaxconv.ops.spec import conv_output_shape, conv_transpose_output_shape, padding_pairs

__all__ = ["conv", "conv_transpose", "extract_patches", "conv_output_shape",
           "conv_transpose_output_shape", "padding_pairs", "max_pool", "avg_pool", "min_pool", "max_unpool",
           "global_avg_pool", "global_max_pool", "adaptive_avg_pool", "adaptive_max_pool", "resize",
           "pixel_shuffle", "pixel_unshuffle"]
