"""The engine: strategies, precision, XLA, the train/eval loop, checkpoints and summaries."""
