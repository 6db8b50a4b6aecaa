"""Tensor operations of the input pipeline: decoding, geometry, colour, mixing, RandAugment."""
