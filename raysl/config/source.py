"""Where images come from: ``data.source``, ``eval.bank`` and ``eval.query``."""

from __future__ import annotations

from dataclasses import dataclass

from raysl import catalog
from raysl.errors import check

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist

# Readers that make their images instead of reading a path (raysl/data/readers: reads="none").
MADE_FORMATS = ("generated", "colour_shapes")


@dataclass(frozen=True)
class SourceConfig:
    """Where images (and optional labels) come from: a local path or an object-store URI.

    ``path`` may be ``s3://``, ``gs://`` or ``abfs://`` (pyarrow filesystems), and for shards a
    brace pattern such as ``s3://bucket/train-{000000..000999}.tar``. Formats (the registered
    readers, ``raysl readers``):

    - ``folder``: a directory tree of image files (JPEG, PNG, WebP, BMP, TIFF, GIF); class
      sub-folders become labels when every file sits in one.
    - ``files``: a list of image paths or URIs, one per line (``.txt``), or a ``path`` column
      with an optional ``label`` column (``.csv``, ``.parquet``); relative paths are relative
      to the list.
    - ``parquet``: a ``.parquet`` file or a directory of them with an encoded-image column
      (bytes, or a struct with ``bytes`` as Hugging Face datasets write).
    - ``tar``: WebDataset-style tar shards (a directory, a brace pattern or one ``.tar``); each
      sample is an image and an optional ``.cls``/``.json`` label (``raysl shards`` writes them).
    - ``idx`` (MNIST, Fashion-MNIST), ``npz``, ``npy``, ``cifar`` (torchvision's
      ``cifar-10-batches-py`` / ``cifar-100-python`` folders, read from disk, never downloaded):
      read whole, up to ``max_array_bytes``.
    - ``generated``: a small labeled shapes dataset (no files).

    ``auto`` picks the format from the path: its extension, IDX or CIFAR files in a directory,
    parquet or tar files in a directory, otherwise a folder of images.
    """

    format: str = "auto"  # or a registered reader
    path: str = FASHION_MNIST_DIR
    split: str = "train"  # IDX: "train" or "t10k"/"test"; CIFAR: "train" or "test"
    limit: int = 0  # use at most this many images (a seeded random subset); 0 = all
    endpoint: str = ""  # S3-compatible endpoint, e.g. http://minio:9000; empty = AWS_ENDPOINT_URL
    image_column: str = ""  # parquet: the encoded-image column; empty = image/img/bytes/...
    label_column: str = ""  # parquet and file lists: the label column; empty = "label" if any
    # false = use the images as if they had no labels (label-free sweeps and monitors, or a
    # check of what happens on unlabeled data); evaluation then needs an eval.bank with labels.
    labels: bool = True
    # IDX, npz and npy sources larger than this (images and labels, as their headers give
    # them) are not read whole: training refuses them and names the `raysl shards` command
    # that converts them, reading them a slice at a time. Read whole, the driver peaks near 3
    # copies (measured: 1.2 GB for a 0.41 GB .npy: the file's bytes, the array, its seeded
    # permutation) and the object store holds a 4th: 2 GiB needs ~8 GB, half a 16 GB machine,
    # whose object store (30% of it) still fits the copy; gray made colour needs 3x that.
    # CIFAR is exempt: its format bounds a split at 150 MB.
    max_array_bytes: int = 2 * 2**30

    def __post_init__(self) -> None:
        readers = catalog.names("reader")
        check(self.format == "auto" or self.format in readers, "format", self.format,
              f"must be 'auto' or one of {readers}")
        check(self.limit >= 0, "limit", self.limit, "must be >= 0 (0 = all images)")
        check(self.max_array_bytes >= 1, "max_array_bytes", self.max_array_bytes,
              "must be >= 1 (bytes; a larger array source is converted with raysl shards)")
        check(not self.endpoint or "://" in self.endpoint, "endpoint", self.endpoint,
              "a URL with its scheme, e.g. http://127.0.0.1:9000")

    @property
    def is_made(self) -> bool:
        """Whether the images are made in memory (generated shapes), not read from a path."""
        return self.format in MADE_FORMATS

    @property
    def is_set(self) -> bool:
        """Whether this names any data (eval.query may be left empty to hold out from the bank)."""
        return self.is_made or bool(self.path)


