"""Hyperparameter sweeps with Ray Tune: each trial is a full pretraining run."""
