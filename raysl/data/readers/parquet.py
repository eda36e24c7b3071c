"""Parquet files of encoded images: one file, or a directory of shards, each read as a unit.

The image column holds bytes, or Hugging Face's ``{bytes, path}`` struct.

A shard is read a row group at a time, bounded before it is inflated: the footer gives each
column chunk's uncompressed size, and a row group whose image column takes more than its rows
times :data:`~raysl.data.readers.encoded.MAX_ENCODED_BYTES` (or its label column more than
:data:`LABEL_BYTES_PER_ROW` a row) is skipped, each row counted as ``too_large``, without
reading it; opening the source, which gathers the labels into classes, reads no such group.
The rest is read a few rows at a time, as many as fit that bound at the column's size, and a
cell above it (a footer that understated it) is skipped too. A label must name one of the
source's classes (a null or a negative integer never becomes one), else its row is skipped
and counted (``no_label``, ``bad_label``); a shard pyarrow cannot read on is cut there
(``corrupt``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raysl.catalog import register
from raysl.config import SourceConfig
from raysl.data.readers.base import Encoded, Item, Reader, Target, Unit, labels_of, shard_units
from raysl.data.readers.encoded import (
    BAD_LABEL_TEXT,
    MAX_ENCODED_BYTES,
    MAX_LABEL_BYTES,
    sample_label,
)
from raysl.data.storage import LISTING_THREADS, Store
from raysl.errors import DataError

PARQUET_EXTENSIONS = (".parquet", ".pq")
IMAGE_COLUMNS = ("image", "img", "image_bytes", "bytes", "jpeg", "png", "content", "data")
_BATCH_ROWS = 64  # rows read at a time from a shard, at most
LABEL_BYTES_PER_ROW = 256  # a label column's size a row, at most: class names or integers


@register("reader", "parquet")
class Parquet(Reader):
    """Encoded images in a parquet column; labels (ints or class names) in another."""

    name = "parquet"
    summary = "parquet files (one, or a directory of shards) with an encoded-image column"
    detect_order = 30
    image_col = ""  # chosen by open(), read by read_unit()
    label_col = ""
    max_encoded_bytes: int = MAX_ENCODED_BYTES  # a cell above it: too_large

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
            labels = (list(pool.map(lambda s: _classes(_column(store, s, label_col)), shards))
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
        """The shard's rows in order (``take`` of them if set), bad ones as the reason.

        A row group above the bound is not read (each row "too_large"); with ``class_names`` a
        row whose label names none of them is "no_label" or "bad_label"; a shard pyarrow
        cannot read on ends with one "corrupt" item ("missing" if it is gone).
        """
        index = {c: i for i, c in enumerate(class_names)}
        row = 0
        try:
            for name, payload, label in self._rows(unit, store, index):
                if unit.take and row >= unit.take:
                    return
                yield name, payload, label
                row += 1
        except FileNotFoundError:
            yield unit.shard, "missing", None
        except (OSError, pa.ArrowException):
            yield f"{unit.shard}#{row}", "corrupt", None

    def _rows(self, unit: Unit, store: Store, index: dict[str, int]) -> Iterator[Item]:
        """Every row of the shard, a bounded row group at a time."""
        image_col, label_col, bound = self.image_col, self.label_col, self.max_encoded_bytes
        columns = [image_col, *([label_col] if label_col else [])]
        fs, inner = store.resolve(unit.shard)
        with fs.open_input_file(inner) as f:
            reader = pq.ParquetFile(f)
            row = 0
            for group in range(reader.num_row_groups):
                meta = reader.metadata.row_group(group)
                if not _fits(meta, image_col, label_col, bound):
                    for _ in range(meta.num_rows):
                        yield f"{unit.shard}#{row}", "too_large", None
                        row += 1
                    continue
                # A cell is at most its column's size in the row group: a batch of this many
                # rows holds at most `bound` (beside the page pyarrow is inflating).
                cell = min(_inflated(meta, image_col) + _inflated(meta, label_col), bound)
                rows = max(1, min(_BATCH_ROWS, bound // max(1, cell)))
                for batch in reader.iter_batches(batch_size=rows, row_groups=[group],
                                                 columns=columns, use_threads=False):
                    images = batch.column(image_col)
                    labels = _label_texts(batch.column(label_col)) if label_col \
                        else [None] * len(images)
                    for i, text in enumerate(labels):
                        image = _as_bytes(images[i].as_py())
                        label = sample_label(text, index) if index else None
                        if len(image) > bound:
                            yield f"{unit.shard}#{row}", "too_large", None
                        elif isinstance(label, str):
                            yield f"{unit.shard}#{row}", label, None
                        else:
                            yield f"{unit.shard}#{row}", image, label
                        row += 1


def _classes(values: pa.ChunkedArray) -> pa.Array:
    """A shard's distinct labels that can name a class: not null, not a negative integer.

    The others are bad samples when read ("no_label", "bad_label"), not a failed run.
    """
    values = pc.drop_null(pc.unique(values))
    if pa.types.is_integer(values.type):
        return values.filter(pc.greater_equal(values, 0))
    try:
        text = pc.utf8_trim_whitespace(values.cast(pa.large_string()))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return values
    return values.filter(pc.invert(pc.match_substring_regex(text, r"^-[0-9]+$")))


def _fits(meta: pq.RowGroupMetaData, image_col: str, label_col: str, bound: int) -> bool:
    """Whether a row group's columns inflate, by its footer, to at most what its rows may hold.

    The image column at most ``bound`` a row; the label column at most
    :data:`LABEL_BYTES_PER_ROW` a row, and one label of :data:`MAX_LABEL_BYTES` beside.
    """
    rows: int = meta.num_rows
    image, label = _inflated(meta, image_col), _inflated(meta, label_col)
    return 0 <= image <= rows * bound and 0 <= label <= rows * LABEL_BYTES_PER_ROW + MAX_LABEL_BYTES


def _inflated(meta: pq.RowGroupMetaData, column: str) -> int:
    """Uncompressed bytes of ``column`` (all its leaves) in a row group, as its footer says."""
    if not column:
        return 0
    chunks = (meta.column(j) for j in range(meta.num_columns))
    return sum(int(c.total_uncompressed_size) for c in chunks
               if c.path_in_schema == column or c.path_in_schema.startswith(f"{column}."))


def _label_texts(column: pa.Array) -> list[str | None]:
    """A batch's labels as text, as ``labels_of`` reads them (Arrow's cast); None if null.

    A label that cannot be text, or is longer than any label, is :data:`BAD_LABEL_TEXT`.
    """
    try:
        texts: list[str | None] = column.cast(pa.large_string()).to_pylist()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return [BAD_LABEL_TEXT] * len(column)
    return [t if t is None or len(t) <= MAX_LABEL_BYTES else BAD_LABEL_TEXT for t in texts]


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
    """The label ``column`` of a shard, from the row groups whose footer says it fits.

    The others are not read here (read_unit skips their rows as "too_large").
    """
    fs, inner = store.resolve(path)
    with fs.open_input_file(inner) as f:
        reader = pq.ParquetFile(f)
        meta = reader.metadata
        groups = [g for g in range(meta.num_row_groups)
                  if _fits(meta.row_group(g), "", column, 0)]
        if not groups:
            return pa.chunked_array([], reader.schema_arrow.field(column).type)
        return reader.read_row_groups(groups, columns=[column], use_threads=False).column(0)


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
