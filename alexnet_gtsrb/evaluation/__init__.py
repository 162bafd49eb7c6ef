"""Evaluation building blocks, each a function of (model, images, settings) -> numbers or tables: test-time
augmentation and per-class reports (used by ``evaluate``); corruptions, adversarial attacks, calibration and
Grad-CAM explanations (used by ``robustness`` and ``predict``)."""
