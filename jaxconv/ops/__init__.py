"""Pure array functions: convolution and pooling (channels-last)."""

from jaxconv.ops.conv import conv, conv_output_shape, padding_pairs
from jaxconv.ops.pool import avg_pool, max_pool

__all__ = ["conv", "conv_output_shape", "padding_pairs", "max_pool", "avg_pool"]
