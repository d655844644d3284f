"""Offline data sets, the paper's preprocessing and device-side augmentation (filled in by the data work)."""
