"""Evaluation building blocks used by ``python -m alexnet_gtsrb.evaluate``: test-time augmentation, per-class
reports. Each is a function of (model, images or counts, settings) -> numbers or tables."""
