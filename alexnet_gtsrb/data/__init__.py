"""GTSRB data: indexing, splits, transforms, the DataModule, download and synthetic data."""
