"""Data sources: one module per format (`spec.py` maps `--dataset=KIND:PATH` to them), on the shared types
and helpers of `base.py`."""
