"""A list of image paths or URIs: one per line (.txt), or a path column (.csv, .tsv, .parquet)."""

from __future__ import annotations

import csv
import io
import posixpath
from collections.abc import Iterator, Sequence

import pyarrow.parquet as pq

from raysl.config import SourceConfig
from raysl.data.formats import DataError
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
from raysl.data.readers.parquet import has_image_column, parquet_schema
from raysl.data.storage import Store
from raysl.registry import register

LIST_EXTENSIONS = (".txt", ".lst", ".csv", ".tsv")
PATH_COLUMNS = ("path", "file", "filename", "filepath", "uri", "url", "image_path")


@register("reader", "files")
class FileList(Reader):
    """Image paths relative to the list (or absolute, or URIs), with an optional label column."""

    name = "files"
    summary = "a list of image paths (.txt), or a path column with labels (.csv, .parquet)"
    reads = "file"
    detect_order = 20

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
        base = posixpath.dirname(cfg.path.rstrip("/"))
        paths = [store.join(base, str(p)) for p in columns[path_col] if p not in (None, "")]
        if not paths:
            raise DataError(f"{where}: lists no image paths")
        label_col = cfg.label_column or ("label" if "label" in columns else "")
        if label_col and label_col not in columns:
            raise DataError(f"{field_name}.label_column={label_col!r}: not a column of "
                            f"{cfg.path} (columns: {sorted(columns)})")
        labels, classes = (labels_of(columns[label_col], f"{where}[{label_col!r}]") if label_col
                           else (None, []))
        if labels is not None and len(labels) != len(paths):
            raise DataError(f"{where}: {len(paths)} paths but {len(labels)} labels (empty "
                            "paths?)")
        n_classes = f", {len(classes)} classes" if classes else ""
        return file_units(paths, labels, classes, f"{target.name} ({{n}} images{n_classes})",
                          self, seed, cfg.limit)

    def read_unit(self, unit: Unit, store: Store, class_names: Sequence[str]) -> Iterator[Item]:
        """Each listed file's bytes."""
        return read_paths(unit, store)


def _columns(store: Store, path: str, suffix: str) -> dict[str, list[object]]:
    """The list's columns by name; a .txt list is one ``path`` column (# comments skipped)."""
    if suffix in (".parquet", ".pq"):
        fs, inner = store.resolve(path)
        table = pq.read_table(inner, filesystem=fs)
        return {n: table.column(n).to_pylist() for n in table.column_names}
    text = store.read(path).decode("utf-8-sig")
    if suffix in (".csv", ".tsv"):
        rows = list(csv.DictReader(io.StringIO(text), delimiter="\t" if suffix == ".tsv" else ","))
        return {k: [r[k] for r in rows] for k in (rows[0].keys() if rows else [])}
    lines = [ln.strip() for ln in text.splitlines()]
    return {"path": [ln for ln in lines if ln and not ln.startswith("#")]}
