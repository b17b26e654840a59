"""Data: datasets in nnU-Net v2 raw layout, preprocessing, patch sampling, augmentation, phantoms."""
