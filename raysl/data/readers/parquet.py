"""Parquet files of encoded images: one file, or a directory of shards, each read as a unit.

The image column holds bytes, or Hugging Face's ``{bytes, path}`` struct.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raysl.config import SourceConfig
from raysl.data.formats import DataError
from raysl.data.readers.base import Encoded, Item, Reader, Target, Unit, labels_of, shard_units
from raysl.data.storage import LISTING_THREADS, Store
from raysl.registry import register

PARQUET_EXTENSIONS = (".parquet", ".pq")
IMAGE_COLUMNS = ("image", "img", "image_bytes", "bytes", "jpeg", "png", "content", "data")
_BATCH_ROWS = 64  # rows read at a time from a shard


@register("reader", "parquet")
class Parquet(Reader):
    """Encoded images in a parquet column; labels (ints or class names) in another."""

    name = "parquet"
    summary = "parquet files (one, or a directory of shards) with an encoded-image column"
    detect_order = 30
    image_col = ""  # chosen by open(), read by read_unit()
    label_col = ""

    @classmethod
    def detect(cls, target: Target, store: Store) -> bool:
        """A parquet file with an image column, or a directory (or pattern) of parquet files."""
        if target.kind == "file":
            return (target.suffix in PARQUET_EXTENSIONS
                    and has_image_column(parquet_schema(store, target.path)))
        names = target.top_names if target.kind == "dir" else target.files.to_pylist()
        return bool(names) and all(n.lower().endswith(PARQUET_EXTENSIONS) for n in names)

    def open(self, cfg: SourceConfig, target: Target, store: Store, seed: int,
             field_name: str) -> Encoded:
        """Shards with their row counts (from the footers) and the class names of all labels."""
        where = f"{field_name}.path={cfg.path!r}"
        shards = target.files_ending(PARQUET_EXTENSIONS).to_pylist()
        if not shards:
            raise DataError(f"{where}: no .parquet files there")
        schema = parquet_schema(store, shards[0])
        image_col = cfg.image_column or next(
            (c for c in IMAGE_COLUMNS if c in schema.names and _is_image(schema.field(c))),
            next((f.name for f in schema if _is_image(f)), ""))
        if not image_col or image_col not in schema.names:
            raise DataError(f"{field_name}.image_column={cfg.image_column!r}: {cfg.path} has no "
                            f"encoded-image column (binary, or a struct with 'bytes'); columns: "
                            f"{schema.names}")
        label_col = cfg.label_column or ("label" if "label" in schema.names else "")
        if label_col and label_col not in schema.names:
            raise DataError(f"{field_name}.label_column={label_col!r}: not a column of "
                            f"{cfg.path} (columns: {schema.names})")
        with ThreadPoolExecutor(LISTING_THREADS) as pool:
            counts = list(pool.map(lambda s: _metadata(store, s).num_rows, shards))
            # Each shard's distinct labels only: a 100M-row set is a few values per shard here.
            labels = (list(pool.map(lambda s: pc.unique(_column(store, s, label_col)), shards))
                      if label_col else [])
        if sum(counts) == 0:
            raise DataError(f"{where}: the parquet data has no rows")
        classes = (labels_of(pa.chunked_array(labels), f"{where}[{label_col!r}]")[1]
                   if label_col else [])
        self.image_col, self.label_col = image_col, label_col  # what read_unit reads
        n_classes = f", {len(classes)} classes" if classes else ""
        return Encoded(shard_units(shards, counts, seed, cfg.limit), classes,
                       f"{target.name} ({{n}} images{n_classes})", self)

    def read_unit(self, unit: Unit, store: Store, class_names: Sequence[str]) -> Iterator[Item]:
        """The shard's rows in order, ``take`` of them if set."""
        image_col, label_col = self.image_col, self.label_col
        index = {c: i for i, c in enumerate(class_names)}
        fs, inner = store.resolve(unit.shard)
        with fs.open_input_file(inner) as f:
            reader = pq.ParquetFile(f)
            row = 0
            columns = [image_col, *([label_col] if label_col else [])]
            for batch in reader.iter_batches(batch_size=_BATCH_ROWS, columns=columns):
                images = batch.column(image_col).to_pylist()
                labels = batch.column(label_col).to_pylist() if label_col else [None] * len(images)
                for image, label in zip(images, labels, strict=True):
                    if unit.take and row >= unit.take:
                        return
                    yield (f"{unit.shard}#{row}", _as_bytes(image),
                           None if label is None else _index(label, index))
                    row += 1


def _index(value: object, index: dict[str, int]) -> int:
    if isinstance(value, int):
        return value
    text = str(value).strip()
    return int(text) if text.lstrip("-").isdigit() else index[text]


def _as_bytes(item: object) -> bytes:
    """A parquet image cell: bytes, or a ``{"bytes": ..., "path": ...}`` struct (HF datasets)."""
    if isinstance(item, dict):
        item = item.get("bytes")
    return bytes(item) if isinstance(item, bytes | bytearray | memoryview) else b""


def _metadata(store: Store, path: str) -> pq.FileMetaData:
    fs, inner = store.resolve(path)
    with fs.open_input_file(inner) as f:
        return pq.ParquetFile(f).metadata


def _column(store: Store, path: str, column: str) -> pa.ChunkedArray:
    fs, inner = store.resolve(path)
    return pq.read_table(inner, filesystem=fs, columns=[column]).column(0)


def parquet_schema(store: Store, path: str) -> pa.Schema:
    """The schema of one parquet file."""
    fs, inner = store.resolve(path)
    return pq.read_schema(inner, filesystem=fs)


def has_image_column(schema: pa.Schema) -> bool:
    """Whether any column holds encoded images."""
    return any(_is_image(f) for f in schema)


def _is_image(f: pa.Field) -> bool:
    t = f.type
    if pa.types.is_struct(t):
        return any(t.field(i).name == "bytes" and _is_binary(t.field(i).type)
                   for i in range(t.num_fields))
    return _is_binary(t)


def _is_binary(t: pa.DataType) -> bool:
    return bool(pa.types.is_binary(t) or pa.types.is_large_binary(t))
