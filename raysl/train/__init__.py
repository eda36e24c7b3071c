"""Training: the optimizer step (plain torch), checkpoints, and the Ray Train worker loop."""
