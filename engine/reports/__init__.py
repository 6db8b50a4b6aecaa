"""Evaluation reports over the whole validation split: numbers, tables and plots per task (engine/report.py)."""
