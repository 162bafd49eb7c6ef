"""Network definitions: AlexNet variants and a fast LRN (see also `.summary`; throughput: `alexnet_gtsrb.bench`)."""

from alexnet_gtsrb.models.alexnet import INITS, LRN_IMPLS, VARIANT_REQUIRED, VARIANTS, AlexNet
from alexnet_gtsrb.models.lrn import LRN, local_response_norm

__all__ = ["INITS", "LRN_IMPLS", "VARIANTS", "VARIANT_REQUIRED", "AlexNet", "LRN", "local_response_norm"]
