"""A list of image paths or URIs: one per line (.txt), or a path column (.csv, .tsv, .parquet)."""

from __future__ import annotations

import csv
import posixpath
from collections.abc import Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from raysl.catalog import register
from raysl.config import SourceConfig
from raysl.data.readers.base import (
    Encoded,
    Item,
    Reader,
    Target,
    Unit,
    file_units,
    labels_of,
    read_paths,
)
from raysl.data.readers.encoded import MAX_ENCODED_BYTES
from raysl.data.readers.parquet import has_image_column, parquet_schema
from raysl.data.storage import Store
from raysl.errors import DataError

LIST_EXTENSIONS = (".txt", ".lst", ".csv", ".tsv")
PATH_COLUMNS = ("path", "file", "filename", "filepath", "uri", "url", "image_path")


@register("reader", "files")
class FileList(Reader):
    """Image paths relative to the list (or absolute, or URIs), with an optional label column."""

    name = "files"
    summary = "a list of image paths (.txt), or a path column with labels (.csv, .parquet)"
    reads = "file"
    detect_order = 20
    max_encoded_bytes: int = MAX_ENCODED_BYTES  # a file above it: too_large, unread

    @classmethod
    def detect(cls, target: Target, store: Store) -> bool:
        """A .txt/.csv/.tsv file, or a parquet file of paths without an image column."""
        if target.kind != "file":
            return False
        if target.suffix in LIST_EXTENSIONS:
            return True
        if target.suffix in (".parquet", ".pq"):
            schema = parquet_schema(store, target.path)
            return not has_image_column(schema) and any(c in schema.names for c in PATH_COLUMNS)
        return False

    def open(self, cfg: SourceConfig, target: Target, store: Store, seed: int,
             field_name: str) -> Encoded:
        """Paths (relative to the list's folder) and optional labels (ints or class names)."""
        where = f"{field_name}.path={cfg.path!r}"
        columns = _columns(store, cfg.path, target.suffix)
        path_col = next((c for c in PATH_COLUMNS if c in columns), None)
        if path_col is None:
            raise DataError(f"{where}: no column of paths; expected one of {list(PATH_COLUMNS)}, "
                            f"found {sorted(columns)}")
        paths = _joined(posixpath.dirname(cfg.path.rstrip("/")), columns[path_col])
        if not len(paths):
            raise DataError(f"{where}: lists no image paths")
        label_col = cfg.label_column or ("label" if "label" in columns else "")
        if label_col and label_col not in columns:
            raise DataError(f"{field_name}.label_column={label_col!r}: not a column of "
                            f"{cfg.path} (columns: {sorted(columns)})")
        labels, classes = (labels_of(_listed(columns[path_col], columns[label_col]),
                                     f"{where}[{label_col!r}]") if label_col else (None, []))
        n_classes = f", {len(classes)} classes" if classes else ""
        return file_units(paths, labels, classes, f"{target.name} ({{n}} images{n_classes})",
                          self, seed, cfg.limit)

    def read_unit(self, unit: Unit, store: Store, class_names: Sequence[str]) -> Iterator[Item]:
        """Each listed file's bytes."""
        return read_paths(unit, store, self.max_encoded_bytes)


def _columns(store: Store, path: str, suffix: str) -> dict[str, pa.Array]:
    """The list's columns by name, as Arrow arrays; a .txt list is one ``path`` column.

    Parsed by Arrow, not a Python loop: a list of a million paths is read in about a second
    and held as one buffer per column. A .txt list skips blank lines and ``#`` comments.
    """
    if suffix in (".parquet", ".pq"):
        fs, inner = store.resolve(path)
        table = pq.read_table(inner, filesystem=fs)
    elif suffix in (".csv", ".tsv"):
        data = store.read(path)
        delimiter = "\t" if suffix == ".tsv" else ","
        header = next(csv.reader([data.decode("utf-8-sig").split("\n", 1)[0]],
                                 delimiter=delimiter), [])
        table = pacsv.read_csv(pa.BufferReader(data.removeprefix(b"\xef\xbb\xbf")),
                               parse_options=pacsv.ParseOptions(delimiter=delimiter),
                               convert_options=pacsv.ConvertOptions(
                                   column_types={n: pa.large_string() for n in header},
                                   strings_can_be_null=False))
    else:
        text = store.read(path).decode("utf-8-sig")
        lines = pc.utf8_trim_whitespace(
            pc.split_pattern(pa.array([text], pa.large_string()), "\n").flatten())
        keep = pc.and_(pc.not_equal(lines, ""), pc.invert(pc.starts_with(lines, "#")))
        return {"path": lines.filter(keep)}
    return {n: table.column(n).combine_chunks() for n in table.column_names}


def _present(paths: pa.Array) -> pa.Array:
    """Which rows name a path (not null, not empty)."""
    text = paths.cast(pa.large_string())
    return pc.and_(pc.is_valid(text), pc.not_equal(pc.fill_null(text, ""), ""))


def _listed(paths: pa.Array, values: pa.Array) -> pa.Array:
    """``values`` of the rows that name a path (rows with an empty path are skipped)."""
    return values.filter(_present(paths))


def _joined(base: str, paths: pa.Array) -> pa.Array:
    """Listed paths relative to ``base`` (the list's folder); absolute ones and URIs kept.

    As :meth:`~raysl.data.storage.Store.join`, over the whole column at once.
    """
    text = paths.cast(pa.large_string()).filter(_present(paths))
    if not base:
        return text
    kept = pc.or_(pc.starts_with(text, "/"), pc.match_substring(text, "://"))
    prefix = base.rstrip("/") + "/"
    joined = pc.binary_join_element_wise(pa.scalar(prefix, pa.large_string()), text,
                                         pa.scalar("", pa.large_string()))
    return pc.if_else(kept, text, joined)
