"""Network definitions: AlexNet variants and a fast LRN (see also `.summary` and `.bench_utils`)."""

from alexnet_gtsrb.models.alexnet import (
    INITS,
    LRN_IMPLS,
    VARIANT_REQUIRED,
    VARIANTS,
    AlexNet,
    conv1_kernel_grid,
)
from alexnet_gtsrb.models.lrn import LRN, local_response_norm

__all__ = [
    "INITS",
    "LRN_IMPLS",
    "VARIANTS",
    "VARIANT_REQUIRED",
    "AlexNet",
    "conv1_kernel_grid",
    "LRN",
    "local_response_norm",
]
