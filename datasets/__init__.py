"""Data sources, decoding, augmentation and the streaming tf.data pipeline."""
