"""CSADA: cost-sensitive adversarial data augmentation, as an importable library."""
