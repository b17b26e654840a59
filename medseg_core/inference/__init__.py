"""Inference: sliding-window prediction and the predictor that runs a model package on images."""
