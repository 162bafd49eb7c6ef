"""AlexNet on GTSRB: a PyTorch Lightning + Hydra research codebase."""

__version__ = "0.1.0"
