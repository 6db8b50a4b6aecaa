"""Models for classification, segmentation and detection: uint8 images in, float32 outputs."""
