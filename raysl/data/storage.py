"""Where image data lives: local paths and object-store URIs, through pyarrow filesystems.

One :class:`Store` resolves every path a source names, ``/data/imgs``, ``s3://bucket/imgs``,
``gs://...`` or ``abfs://...``, to a pyarrow filesystem. It is small and picklable, so the Ray
tasks that read the bytes rebuild the same filesystems on whichever node they run.

S3-compatible stores (MinIO, Ceph, moto) take an endpoint (``data.source.endpoint`` or the
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` variables, as boto3). Credentials present in the
driver's environment travel with the store, so workers on nodes without them can still read;
without any, each node uses the AWS SDK's default chain (instance roles, profiles).
"""

from __future__ import annotations

import functools
import itertools
import os
import posixpath
import re
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

_CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
LISTING_THREADS = 32  # object stores: prefixes listed at once (each listing is paged requests)
_LISTING_CHUNK = 65536  # a local walk turns this many names at a time into Arrow
_BRACES = re.compile(r"\{([^{}]*)\}")


class FileTooLarge(OSError):
    """A file larger than a reader will hold (:meth:`Store.read`'s ``limit``)."""


def is_uri(path: str) -> bool:
    """Whether ``path`` names an object store (``scheme://...``) rather than a local path."""
    return "://" in path and not path.startswith("file://")


@dataclass(frozen=True)
class Store:
    """Resolves local paths and URIs to (pyarrow filesystem, path inside it).

    Attributes:
        endpoint: S3-compatible endpoint URL, e.g. ``http://127.0.0.1:9000``; empty = AWS.
        credentials: ``(access key, secret key, session token)`` from the driver, or empty.
        region: S3 region; empty = ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` or the SDK's.
    """

    endpoint: str = ""
    # Never shown: a Store appears in Ray's task descriptions and in error reports.
    credentials: tuple[str, str, str] | tuple[()] = field(default=(), repr=False)
    region: str = ""

    @classmethod
    def from_env(cls, endpoint: str = "") -> Store:
        """A store with the endpoint given (or ``AWS_ENDPOINT_URL[_S3]``) and the driver's keys."""
        endpoint = (endpoint or os.environ.get("AWS_ENDPOINT_URL_S3", "")
                    or os.environ.get("AWS_ENDPOINT_URL", ""))
        key, secret, token = (os.environ.get(v, "") for v in _CREDENTIAL_VARS)
        region = os.environ.get("AWS_REGION", "") or os.environ.get("AWS_DEFAULT_REGION", "")
        return cls(endpoint, (key, secret, token) if key and secret else (), region)

    def resolve(self, path: str) -> tuple[pafs.FileSystem, str]:
        """``path`` -> (filesystem, path in it). Local paths are made absolute."""
        if not is_uri(path):
            local = path.removeprefix("file://")
            return _local(), os.path.abspath(os.path.expanduser(local))
        parsed = urlparse(path)
        inner = (parsed.netloc + parsed.path).rstrip("/")
        if parsed.scheme == "s3":
            return _s3(self.endpoint, self.credentials, self.region), inner
        fs, inner = pafs.FileSystem.from_uri(path)
        return fs, inner

    def read(self, path: str, limit: int = 0) -> bytes:
        """All bytes of the file at ``path`` (local path or URI).

        Args:
            path: a local path or URI.
            limit: refuse a file larger than this many bytes (0: no limit), from its size,
                before reading any of it.

        Raises:
            FileNotFoundError: it does not exist (any more).
            FileTooLarge: it is larger than ``limit``.
            OSError: it cannot be read.
        """
        fs, inner = self.resolve(path)
        with fs.open_input_file(inner) as f:
            if limit and f.size() > limit:
                raise FileTooLarge(f"{path}: {f.size()} bytes, more than {limit}")
            data: bytes = f.read()
        return data

    def kind(self, path: str) -> str:
        """``"file"``, ``"dir"`` or ``"missing"`` (anything else, e.g. a FIFO, is ``"other"``)."""
        fs, inner = self.resolve(path)
        info = fs.get_file_info(inner)
        return {pafs.FileType.File: "file", pafs.FileType.Directory: "dir",
                pafs.FileType.NotFound: "missing"}.get(info.type, "other")

    def list_top(self, root: str) -> list[str]:
        """Files and folders directly in the directory ``root`` (not hidden), sorted."""
        fs, inner = self.resolve(root)
        infos = fs.get_file_info(pafs.FileSelector(inner, recursive=False))
        names = (posixpath.basename(i.path.rstrip("/")) for i in infos)
        return sorted(f"{root.rstrip('/')}/{n}" for n in names if not n.startswith("."))

    def list_files(self, root: str) -> pa.Array:
        """Every regular file below the directory ``root``, recursively, as paths/URIs like it.

        Returns a sorted Arrow ``large_string`` array: a million paths take ~60 MB in one
        buffer, not the ~110 MB of a million Python strings (nor their per-object overhead).
        Hidden files and folders (``.name``) are left out; so are FIFOs, sockets and devices,
        which would block or fail a reader. The first-level folders are listed in parallel
        (:data:`LISTING_THREADS` at once): a million object-store keys under a thousand class
        prefixes take seconds, not the minutes of one paged listing, and a local tree is
        walked with ``os.scandir``, whose system calls release the GIL.
        """
        fs, inner = self.resolve(root)
        prefix = root.rstrip("/")
        if not is_uri(root):
            parts = _walk_local(inner, prefix)
        else:
            top = fs.get_file_info(pafs.FileSelector(inner, recursive=False))
            files = [i for i in top if i.type == pafs.FileType.File]
            dirs = [i.path for i in top if i.type == pafs.FileType.Directory
                    and not posixpath.basename(i.path.rstrip("/")).startswith(".")]
            parts = [paths_array(_files_below(fs, inner, prefix, files))]
            with ThreadPoolExecutor(LISTING_THREADS) as pool:
                parts += pool.map(lambda d: paths_array(
                    _files_below(fs, d, prefix, base=inner)), dirs)
        return sorted_paths(pa.concat_arrays(list(parts)) if parts else paths_array([]))

    def size(self, path: str) -> int:
        """Bytes of the file at ``path``."""
        fs, inner = self.resolve(path)
        size: int = fs.get_file_info(inner).size
        return size

    def open_input(self, path: str) -> pafs.NativeFile:
        """A readable stream of the file at ``path`` (sequential: fine for object stores)."""
        fs, inner = self.resolve(path)
        return fs.open_input_stream(inner)

    def open_output(self, path: str) -> pafs.NativeFile:
        """A writable stream to ``path``; local parent directories are created."""
        fs, inner = self.resolve(path)
        if not is_uri(path):
            os.makedirs(os.path.dirname(inner), exist_ok=True)
        return fs.open_output_stream(inner)

    def join(self, base: str, rel: str) -> str:
        """``rel`` relative to the directory ``base`` (URIs and absolute paths kept as they are)."""
        if is_uri(rel) or os.path.isabs(rel):
            return rel
        return f"{base.rstrip('/')}/{rel}" if is_uri(base) else os.path.join(base, rel)


@functools.cache
def _local() -> pafs.FileSystem:
    return pafs.LocalFileSystem()


@functools.cache
def _s3(endpoint: str, credentials: tuple[str, ...], region: str) -> pafs.FileSystem:
    kwargs: dict[str, object] = {}
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs.update(endpoint_override=parsed.netloc, scheme=parsed.scheme)
        region = region or "us-east-1"  # an endpoint needs no region lookup; AWS's default
    if region:
        kwargs["region"] = region
    if credentials:
        kwargs.update(access_key=credentials[0], secret_key=credentials[1],
                      session_token=credentials[2] or None)
    return pafs.S3FileSystem(**kwargs)


def expand_braces(pattern: str) -> list[str]:
    """WebDataset's shard patterns: ``s-{000..002}.tar`` -> ``s-000.tar``, ``s-001.tar``, ...

    ``{a..b}`` is an inclusive integer range, zero-padded to the width of ``a``; ``{x,y}`` is a
    list. Several groups multiply out, in order.

    Raises:
        ValueError: a range whose end is before its start.
    """
    parts = _BRACES.split(pattern)  # text, group, text, group, ..., text
    choices: list[list[str]] = []
    for i, part in enumerate(parts):
        if i % 2 == 0:
            choices.append([part])
            continue
        lo, dots, hi = part.partition("..")
        if dots and lo.isdigit() and hi.isdigit():
            if int(hi) < int(lo):
                raise ValueError(f"{pattern}: range {{{part}}} ends before it starts")
            choices.append([str(n).zfill(len(lo)) for n in range(int(lo), int(hi) + 1)])
        else:
            choices.append(part.split(","))
    return ["".join(c) for c in itertools.product(*choices)]


def has_braces(path: str) -> bool:
    """Whether ``path`` is a brace pattern of several files."""
    return bool(_BRACES.search(path))


def _files_below(fs: pafs.FileSystem, inner: str, prefix: str,
                 infos: list[pafs.FileInfo] | None = None, base: str = "") -> list[str]:
    """Visible regular files of ``infos`` (default: all below ``inner``) as ``prefix/rel``."""
    if infos is None:
        infos = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
    base = base or inner
    out = []
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        rel = info.path[len(base):].lstrip("/")
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        out.append(f"{prefix}/{rel}")
    return out


def paths_array(paths: Iterable[str]) -> pa.Array:
    """Paths as one Arrow ``large_string`` array (no 2 GB limit on all paths together)."""
    return pa.array(paths if isinstance(paths, list | tuple) else list(paths), pa.large_string())


def sorted_paths(paths: pa.Array) -> pa.Array:
    """``paths`` in byte order (Python's ``sorted`` order for the same strings)."""
    return paths.take(pc.sort_indices(paths)) if len(paths) > 1 else paths


def _walk_local(root: str, prefix: str) -> list[pa.Array]:
    """Visible regular files below the local directory ``root``, as ``prefix/rel`` paths.

    Each first-level folder is walked by its own thread; names are turned into Arrow
    :data:`_LISTING_CHUNK` at a time, so the Python strings alive at once stay bounded.
    Symbolic links are followed to files but not into folders (a link cycle cannot loop).
    """
    files: list[str] = []
    dirs: list[str] = []
    with os.scandir(root) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                dirs.append(entry.name)
            elif entry.is_file():
                files.append(f"{prefix}/{entry.name}")
    parts = [paths_array(files)]
    with ThreadPoolExecutor(min(LISTING_THREADS, max(1, len(dirs)))) as pool:
        for chunks in pool.map(lambda d: list(_walk_folder(os.path.join(root, d),
                                                           f"{prefix}/{d}")), dirs):
            parts += chunks
    return parts


def _walk_folder(folder: str, prefix: str) -> Iterator[pa.Array]:
    """Visible regular files below ``folder`` in chunks of Arrow paths (depth first)."""
    names: list[str] = []
    stack = [(folder, prefix)]
    while stack:
        here, rel = stack.pop()
        try:
            entries = os.scandir(here)
        except OSError:  # unreadable folder: as pyarrow's listing, nothing below it is seen
            continue
        with entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    stack.append((entry.path, f"{rel}/{entry.name}"))
                elif entry.is_file():
                    names.append(f"{rel}/{entry.name}")
                    if len(names) == _LISTING_CHUNK:
                        yield paths_array(names)
                        names = []
    if names:
        yield paths_array(names)
