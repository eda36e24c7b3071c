"""Evaluation protocols, one module each; importing this package registers them all."""

from raysl.eval.protocols import finetune, knn, linear  # noqa: F401
