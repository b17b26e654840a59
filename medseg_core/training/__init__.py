"""Training: configuration, the trainer loop, distributed helpers."""
