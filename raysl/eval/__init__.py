"""Evaluation of frozen encoders on labeled data."""
