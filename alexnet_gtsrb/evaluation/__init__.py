"""Evaluation building blocks, each a function of (model, images, settings) -> numbers or tables: the 10 test
views and accuracy intervals (used by ``evaluate`` and training's test); corruptions, adversarial attacks,
calibration and Grad-CAM explanations (used by ``robustness`` and ``predict``)."""
