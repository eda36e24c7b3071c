"""SSL methods, one module each; importing this package registers them all."""

from raysl.methods import simclr  # noqa: F401
