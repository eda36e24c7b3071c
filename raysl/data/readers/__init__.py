"""Readers of image sources, one module per format; importing this package registers them all.

Ray-free: a reader lists and describes what to read (:mod:`raysl.data.readers.base`);
:mod:`raysl.data.source` reads it with Ray Data. Each format's module holds its reader and its
parsing (IDX's in ``idx.py``, CIFAR's in ``cifar.py`` with its unpickler in
``cifar_pickle.py``); what several share is :mod:`~raysl.data.readers.arrays` (the array
formats: sizes, slices, header checks) and :mod:`~raysl.data.readers.encoded` (the
encoded-image formats: an image's byte bound, a shard label's meaning).
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
