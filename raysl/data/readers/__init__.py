"""Readers of image sources, one module each; importing this package registers them all.

Ray-free: a reader lists and describes what to read (:mod:`raysl.data.readers.base`);
:mod:`raysl.data.source` reads it with Ray Data.
"""

from raysl.data.readers import (  # noqa: F401
    cifar,
    colour_shapes,
    files,
    folder,
    generated,
    idx,
    npy,
    npz,
    parquet,
    tar,
)
