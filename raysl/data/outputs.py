"""Outputs written whole or not at all (``raysl shards``, ``raysl embed``).

A run's output never mixes with an earlier one's, and an interrupted run never leaves a file
that reads as complete:

- An existing output is refused unless the command is told ``--overwrite``.
- Local outputs are written under a temporary name beside the destination
  (``.NAME.partial-TOKEN``) and renamed into place when complete (a rename is atomic on one
  filesystem); an output being replaced is moved aside first and deleted after.
- Object stores have no rename: an output being replaced is deleted first, the new files are
  written in place, and the manifest last.
- A folder output holds a manifest, ``_manifest.json``, naming the files that belong to it
  (and their rows); readers of raysl's outputs read only those (:func:`manifest_files`).
"""

from __future__ import annotations

import json
import posixpath
import secrets
from dataclasses import dataclass

import pyarrow.fs as pafs

from raysl.data.storage import Store, is_uri
from raysl.errors import DataError

MANIFEST = "_manifest.json"
MANIFEST_FORMAT = "raysl-output/1"


@dataclass(frozen=True)
class Output:
    """Where a command writes (``staging``) and where its output ends up (``final``).

    Attributes:
        final: the destination as the user named it.
        staging: where files are written until :meth:`commit` (``final`` in an object store).
        store: resolves both.
        folder: a folder of files (else one file).
    """

    final: str
    staging: str
    store: Store
    folder: bool

    def path(self, name: str) -> str:
        """Where to write the file ``name`` of a folder output."""
        return f"{self.staging.rstrip('/')}/{name}"

    def commit(self, files: dict[str, int], kind: str) -> None:
        """Write the manifest (folders) and move the output into place.

        Args:
            files: file name (inside the folder) -> rows or samples, in order.
            kind: what the files are, e.g. ``"tar shards"``, for the manifest.
        """
        if self.folder:
            manifest = {"format": MANIFEST_FORMAT, "kind": kind, "files": files}
            with self.store.open_output(self.path(MANIFEST)) as f:
                f.write(json.dumps(manifest, indent=1).encode())
        if self.staging == self.final:
            return
        fs, final = self.store.resolve(self.final)
        _, staging = self.store.resolve(self.staging)
        aside = ""
        if fs.get_file_info(final).type != pafs.FileType.NotFound:  # --overwrite
            aside = f"{staging}.replaced"
            fs.move(final, aside)
        fs.move(staging, final)
        if aside:
            _delete(fs, aside)

    def abandon(self) -> None:
        """Delete what an interrupted or failed run staged (never the destination)."""
        if self.staging != self.final:
            fs, staging = self.store.resolve(self.staging)
            _delete(fs, staging)


def open_output(out: str, store: Store, overwrite: bool, folder: bool,
                flag: str = "--overwrite") -> Output:
    """Check ``out`` and choose where to stage it.

    Raises:
        DataError: ``out`` exists (a file, or a folder with anything in it) and ``overwrite``
            is false, naming ``flag``; or it exists as the other kind (file vs folder).
    """
    fs, inner = store.resolve(out)
    info = fs.get_file_info(inner)
    exists = info.type == pafs.FileType.File or (
        info.type == pafs.FileType.Directory
        and bool(fs.get_file_info(pafs.FileSelector(inner, recursive=False))))
    if exists and not overwrite:
        what = "folder" if info.type == pafs.FileType.Directory else "file"
        raise DataError(f"OUT={out!r}: the {what} exists; pass {flag} to replace it (its "
                        "files are then deleted once the new output is complete)")
    if exists and (info.type == pafs.FileType.Directory) != folder:
        raise DataError(f"OUT={out!r}: exists as a {'file' if folder else 'folder'}; "
                        f"expected a {'folder' if folder else 'file'}")
    if is_uri(out):  # no rename: the old output goes first, the manifest is written last
        if exists:
            _delete(fs, inner)
        return Output(out, out, store, folder)
    parent, name = posixpath.split(out.rstrip("/"))
    staging = posixpath.join(parent, f".{name}.partial-{secrets.token_hex(4)}")
    return Output(out, staging, store, folder)


def manifest_files(store: Store, folder: str) -> list[str] | None:
    """The paths of the files ``folder``'s manifest names, or None if it has none."""
    path = f"{folder.rstrip('/')}/{MANIFEST}"
    try:
        manifest = json.loads(store.read(path))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        return None
    return [f"{folder.rstrip('/')}/{name}" for name in manifest.get("files", {})]


def check_apart(source: str, out: str, store: Store) -> None:
    """Refuse an output inside its own source, or a source inside the output.

    Raises:
        DataError: naming both (re-sharding into the source folder would overwrite shards not
            yet read, and the next listing would read the output as source).
    """
    if not source or is_uri(source) != is_uri(out):
        return
    a, b = (store.resolve(p)[1].rstrip("/") + "/" for p in (source, out))
    if a.startswith(b) or b.startswith(a):
        raise DataError(f"OUT={out!r}: overlaps the source {source!r}; write the output to a "
                        "folder of its own")


def _delete(fs: pafs.FileSystem, path: str) -> None:
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)
