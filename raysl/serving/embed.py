"""``raysl embed`` and ``raysl neighbours``: embeddings of a whole dataset, and searches in them.

``embed`` streams any source raysl reads through a registered encoder with Ray Data (decoded,
taken to the encoder's size as evaluation and the pyfunc take images, embedded by tasks beside
the data) and writes parquet: the
row's ``index``, its ``path`` (or shard member) when it has one, its ``label`` when labeled, and
the ``embedding`` (D floats), and with ``digests`` the ``digest`` of the pixels the encoder
read (what ``raysl curate`` finds exact duplicates by). Bad files are skipped and counted, as
in training. ``neighbours``
embeds query images and finds their nearest rows in such a file, block by block.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch

from raysl.config import SourceConfig
from raysl.console import duration
from raysl.data.decode import decode_image
from raysl.data.ledger import DecodePolicy
from raysl.data.outputs import Output, manifest_files, open_output
from raysl.data.source import Reading, read_source
from raysl.data.storage import Store
from raysl.eval.extract import dataset_features
from raysl.eval.features import resized
from raysl.eval.protocols.knn import block_topk, merge_topk
from raysl.redact import redact
from raysl.serving.models import LoadedModel

PROGRESS_EVERY_S = 10.0
ROWS_PER_FILE = 1_000_000  # a folder output rolls to a new parquet file after this many rows


@dataclass
class EmbedResult:
    """What ``raysl embed`` wrote."""

    out: str
    rows: int
    dim: int
    files: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_examples: list[str] = field(default_factory=list)
    seconds: float = 0.0
    description: str = ""


def embed(model: LoadedModel, source: SourceConfig, out: str, batch_size: int = 512,
          log: Callable[[str], None] = print, overwrite: bool = False,
          digests: bool = False) -> EmbedResult:
    """Embed every image of ``source`` with ``model`` into parquet at ``out``.

    ``digests`` adds each row's :func:`pixel_digest` as a ``digest`` column.

    ``out`` ending in ``.parquet`` is one file; anything else is a folder of ``part-*.parquet``
    files (local or an object store) and its ``_manifest.json``. Written whole or not at all
    (:mod:`raysl.data.outputs`): an existing output is refused unless ``overwrite``.

    Raises:
        DataError: the source cannot be read, or too many of its images are bad; ``out``
            exists and ``overwrite`` is false.
    """
    t0 = time.perf_counter()
    store = Store.from_env(source.endpoint)
    output = open_output(out, store, overwrite, folder=not out.endswith(".parquet"))
    data = model.config.data
    policy = DecodePolicy("skip", 1.0, data.max_image_pixels, data.min_image_side)
    # Files decoded straight to the encoder's size: what resized() makes of their pixels,
    # never a detour through the training decode size (an image at the size stays as it is).
    src = read_source(source, Reading(data.channels, data.image_size, policy, "none"),
                      0, "--data")
    log(f"[raysl] embedding {src.description} with {model.description}")
    images = src.dataset.map_batches(_with_digests, batch_format="numpy") if digests else \
        src.dataset
    features = dataset_features(model.encoder, images, data.image_size, batch_size,
                                keep=("path", "digest"), materialize=False)
    result = EmbedResult(out, 0, model.encoder.num_features, description=src.description)
    last = time.perf_counter()
    with _Writer(output) as writer:
        for batch in features.iter_batches(batch_size=4096, batch_format="numpy"):
            writer.write(_table(batch))
            result.rows += len(batch["index"])
            if time.perf_counter() - last > PROGRESS_EVERY_S:
                last = time.perf_counter()
                rate = result.rows / (last - t0)
                left = (src.num_images - result.rows) / max(rate, 1e-9)
                log(f"[raysl] embedded {result.rows}/{src.num_images} images "
                    f"({rate:.0f} img/s, ETA {duration(left)})")
        result.files = writer.files
    src.tally()
    result.skipped, result.skipped_examples = src.skipped, src.skipped_examples
    result.seconds = time.perf_counter() - t0
    return result


def pixel_digest(image: np.ndarray) -> str:
    """SHA-256 (first 16 bytes, hex) of an image's pixels (H, W, C) uint8 and its shape.

    The pixels as the encoder reads them: byte-identical files share it, and so do files
    whose encodings differ but decode to the same pixels.
    """
    digest = hashlib.sha256(str(image.shape).encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()[:32]


def _with_digests(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The batch with a ``digest`` column: each ``image``'s :func:`pixel_digest`."""
    batch["digest"] = np.array([pixel_digest(image) for image in batch["image"]])
    return batch


def _table(batch: dict[str, np.ndarray]) -> pa.Table:
    features = batch["features"].astype(np.float32)
    columns: dict[str, pa.Array] = {"index": pa.array(batch["index"], pa.int64())}
    if "path" in batch:
        # As given, but a URI's credentials hidden: the output is shared, the keys are not.
        columns["path"] = pa.array([redact(p) for p in batch["path"].astype(str)], pa.string())
    if "label" in batch:
        columns["label"] = pa.array(batch["label"], pa.int64())
    if "digest" in batch:
        columns["digest"] = pa.array(batch["digest"].astype(str), pa.string())
    columns["embedding"] = pa.FixedSizeListArray.from_arrays(
        pa.array(features.reshape(-1)), features.shape[1])
    return pa.table(columns)


class _Writer:
    """Parquet output: one file, or a folder of files of up to ``ROWS_PER_FILE`` rows.

    Committed into place when the block ends without an error, abandoned otherwise.
    """

    def __init__(self, output: Output) -> None:
        self.output, self.store = output, output.store
        self.single = not output.folder
        self.files: list[str] = []
        self.rows: dict[str, int] = {}
        self._writer: pq.ParquetWriter | None = None
        self._stream: object = None
        self._rows = 0

    def __enter__(self) -> _Writer:
        return self

    def write(self, table: pa.Table) -> None:
        """Append ``table``, starting the next part file when one is full."""
        if self._writer is not None and not self.single and self._rows >= ROWS_PER_FILE:
            self._close()
        if self._writer is None:
            name = f"part-{len(self.files):05d}.parquet"
            path = self.output.staging if self.single else self.output.path(name)
            self._stream = self.store.open_output(path)
            self._writer = pq.ParquetWriter(self._stream, table.schema)
            self.files.append(self.output.final if self.single else
                              f"{self.output.final.rstrip('/')}/{name}")
            self.rows[name] = 0
            self._rows = 0
        self._writer.write_table(table)
        self._rows += table.num_rows
        self.rows[list(self.rows)[-1]] += table.num_rows

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._stream.close()  # type: ignore[attr-defined]
            self._writer = None

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        self._close()
        if kind is not None:
            self.output.abandon()
        elif self.files:
            self.output.commit(self.rows, "embeddings")
        else:  # nothing embedded: an empty output is no output
            self.output.abandon()


@dataclass(frozen=True)
class Neighbour:
    """One row of the embeddings close to a query."""

    rank: int
    similarity: float  # cosine
    index: int
    path: str
    label: int | None


def neighbours(model: LoadedModel, embeddings: str, images: list[str], k: int = 10,
               endpoint: str = "") -> list[list[Neighbour]]:
    """The ``k`` rows of the parquet ``embeddings`` most similar to each image file.

    The embeddings are read in record batches, so a file larger than memory is searched too.

    Raises:
        DataError: a query is not an image (its reason).
    """
    data = model.config.data
    store = Store.from_env(endpoint)
    queries = np.stack([decode_image(store.read(p), data.channels, data.image_size,
                                     data.max_image_pixels, data.min_image_side)
                        for p in images])
    with torch.no_grad():
        q = model.encoder.eval()(resized(queries, data.image_size)).float()
    top: tuple[torch.Tensor, torch.Tensor] | None = None
    info: dict[int, tuple[str, int | None]] = {}
    for batch in _batches(embeddings, store):
        vectors = batch.column("embedding")  # (n,) fixed-size lists of D floats
        bank = torch.from_numpy(vectors.flatten().to_numpy(zero_copy_only=False).reshape(
            len(vectors), -1).copy())
        ids = torch.from_numpy(batch.column("index").to_numpy().copy())
        block = block_topk(bank, ids, q, k)
        top = block if top is None else merge_topk(top, block, k)
        paths = batch.column("path").to_pylist() if "path" in batch.column_names else None
        labels = batch.column("label").to_pylist() if "label" in batch.column_names else None
        for i, row in enumerate(ids.tolist()):
            info[row] = (paths[i] if paths else "", labels[i] if labels else None)
        keep = set(top[1].flatten().tolist())  # only rows still in a top list are remembered
        info = {r: v for r, v in info.items() if r in keep}
    if top is None:
        return [[] for _ in images]
    return [[Neighbour(j + 1, float(s), int(r), *info[int(r)]) for j, (s, r) in
             enumerate(zip(top[0][i], top[1][i], strict=True))] for i in range(len(images))]


def _batches(path: str, store: Store) -> Iterator[pa.RecordBatch]:
    """The rows of an embedding output: its manifest's files (a folder), or the file."""
    fs, inner = store.resolve(path)
    files = manifest_files(store, path) if fs.get_file_info(inner).type == \
        pafs.FileType.Directory else None
    source = [store.resolve(f)[1] for f in files] if files is not None else inner
    yield from pads.dataset(source, filesystem=fs, format="parquet").to_batches(
        columns=None, batch_size=65536)


def write_summary(result: EmbedResult) -> str:
    """One line per fact, for the terminal."""
    lines = [f"[raysl] wrote {result.rows} embeddings of {result.dim} floats to {result.out} "
             f"in {duration(result.seconds)}"]
    if result.skipped:
        lines.append(f"[raysl] skipped {sum(result.skipped.values())} bad files "
                     f"{result.skipped}, e.g. {'; '.join(result.skipped_examples[:3])}")
    return "\n".join(lines)
