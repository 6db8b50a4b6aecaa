"""Models for classification (and later segmentation and detection)."""
