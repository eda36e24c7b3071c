"""The arrays-only unpickler that reads a CIFAR python batch without trusting it.

A CIFAR batch is a Python pickle, and a pickle is a program. :func:`unpickle_batch` reads one
(256 MiB at most) after walking it (:func:`_walk_pickle`: every length inside the file, memo
slots in order, a bounded number of opcodes), and lets it build only plain numeric arrays over
the bytes it holds, lists and dicts, through checked stand-ins for the NumPy names it may use:
a tampered file cannot run code, and a small hostile file cannot make raysl allocate gigabytes.
"""

from __future__ import annotations

import io
import math
import operator
import pickle
import pickletools
from typing import Any

import numpy as np

from raysl.data.readers.arrays import open_file
from raysl.data.storage import Store
from raysl.errors import DataError

# What a CIFAR batch pickle may name (NumPy 1 and 2 module names); find_class hands out a
# checked stand-in for each NumPy name and for the codec, never the real callable.
_PICKLE_ALLOWED = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"), ("builtins", "object"),
    ("_codecs", "encode"),  # how Python 3 pickles bytes at protocol 2 (re-saved batches)
})
# CIFAR-100's train batch, the largest, has 200,000 opcodes (500,000 re-saved at protocol 2 by
# Python 3); each builds at most ~100 bytes of objects (not a set: 216 for one byte, refused).
_MAX_PICKLE_OPS = 2**20
_MAX_CIFAR_BYTES = 2**28  # a batch file is read whole: at most this
_UNUSED_OPS = ("EMPTY_SET", "ADDITEMS", "FROZENSET")
_PUTS = ("PUT", "BINPUT", "LONG_BINPUT")


def _opcode_table() -> list[tuple[str, int, int] | None]:
    """Per opcode byte: (name, how its argument is sized, n), for :func:`_walk_pickle`.

    0: n bytes; 1: an n-byte little-endian length, then that many bytes; 2: n lines.
    """
    table: list[tuple[str, int, int] | None] = [None] * 256
    widths = {pickletools.TAKEN_FROM_ARGUMENT1: 1, pickletools.TAKEN_FROM_ARGUMENT4: 4,
              pickletools.TAKEN_FROM_ARGUMENT4U: 4, pickletools.TAKEN_FROM_ARGUMENT8U: 8}
    for op in pickletools.opcodes:
        arg = op.arg
        if op.name in _UNUSED_OPS:
            continue
        if arg is None or arg.n >= 0:
            spec = (0, arg.n if arg is not None else 0)
        elif arg.n == pickletools.UP_TO_NEWLINE:  # GLOBAL and INST take two lines
            spec = (2, 2 if arg.name == "stringnl_noescape_pair" else 1)
        else:  # a signed length read unsigned: a negative one is too large for the file
            spec = (1, widths[arg.n])
        table[ord(op.code)] = (op.name, *spec)
    return table


_OPCODES = _opcode_table()


def _walk_pickle(data: bytes) -> None:
    """Check a pickle's opcodes before the C unpickler runs them.

    The unpickler allocates a ``BINBYTES`` object at the size its prefix gives before reading
    it, and grows its memo table to any index a ``LONG_BINPUT`` names (zero-filled): a
    10-byte pickle can cost gigabytes. Here every length must lie inside the file, memo slots
    are numbered in order as picklers number them, and the opcodes are at most
    :data:`_MAX_PICKLE_OPS` and no set's (so the objects they build, beyond the bytes and
    text the file holds, take at most about 100 MB).

    Raises:
        pickle.UnpicklingError: naming the opcode and its byte offset.
    """
    pos, puts, end = 0, 0, len(data)
    for _ in range(_MAX_PICKLE_OPS):
        spec = _OPCODES[data[pos]] if pos < end else None
        if spec is None:
            raise pickle.UnpicklingError(
                f"opcode {data[pos]:#04x} at byte {pos} is not one a CIFAR batch uses"
                if pos < end else "the pickle ends without a STOP opcode")
        name, kind, n = spec
        at, pos = pos, pos + 1
        if kind == 0:
            size = n
        elif kind == 1:
            size = int.from_bytes(data[pos: pos + n], "little")
            pos += n
        else:
            line = pos
            for _ in range(n):
                line = data.find(b"\n", line) + 1 or end + 1
            size = line - pos
        if pos + size > end:
            raise pickle.UnpicklingError(f"{name} at byte {at} claims {size} bytes, the file "
                                         f"has {end - pos} after it")
        if name in _PUTS:
            raw = data[pos: pos + size]
            slot = int(raw) if name == "PUT" else int.from_bytes(raw, "little")
            if slot > puts:
                raise pickle.UnpicklingError(f"{name} at byte {at} stores memo slot {slot} "
                                             f"after {puts} slots")
            puts += 1
        elif name == "MEMOIZE":
            puts += 1
        elif name == "STOP":
            return
        pos += size
    raise pickle.UnpicklingError(f"more than {_MAX_PICKLE_OPS} opcodes, no CIFAR batch has "
                                 "that many")


def _plain_dtype(spec: Any, order: str = "=") -> np.dtype[Any]:
    """The numeric dtype ``spec`` names; object, structured, sub-array and text are refused.

    An object array's data is pointers, which a pickle's bytes must never become; a structured
    or sub-array dtype's layout is the pickle's word.
    """
    if isinstance(spec, _DtypeToken):
        spec, order = spec.spec, spec.order
    if isinstance(spec, bytes):
        spec = spec.decode("latin-1")
    try:
        dtype = np.dtype(spec) if isinstance(spec, str) else None
    except TypeError:
        dtype = None
    if (dtype is None or dtype.kind not in "biufc" or dtype.names is not None
            or dtype.subdtype is not None or dtype.hasobject):
        raise pickle.UnpicklingError(f"dtype {spec!r}: only plain numeric arrays are read")
    if order in ("<", ">"):
        return dtype.newbyteorder("<" if order == "<" else ">")
    return dtype


def _dims(shape: Any) -> tuple[int, ...]:
    """A pickled shape as non-negative ints (a numpy scalar dimension must not wrap around)."""
    try:
        dims = (operator.index(shape),) if not isinstance(shape, tuple | list) else \
            tuple(operator.index(d) for d in shape)
    except TypeError:
        raise pickle.UnpicklingError(f"an array shape of {shape!r}") from None
    if len(dims) > 32 or any(d < 0 for d in dims):
        raise pickle.UnpicklingError(f"an array shape of {dims}")
    return dims


class _NdarrayToken:
    """What the CIFAR unpickler hands out for ``numpy.ndarray`` (calling it builds nothing)."""

    def __init__(self, *_: Any) -> None:
        raise pickle.UnpicklingError("numpy.ndarray may only be rebuilt by _reconstruct")


class _DtypeToken:
    """What the CIFAR unpickler hands out for ``numpy.dtype``: its spec and byte order, checked.

    ``numpy.dtype.__setstate__`` would take the pickle's fields, sub-array and item size;
    this takes only the byte order and refuses a state that has any of the others.
    """

    spec: Any = None
    order = "="

    def __init__(self, spec: Any = None, *_: Any) -> None:
        self.spec = spec
        _plain_dtype(spec)

    def __setstate__(self, state: Any) -> None:
        # (version, byte order, sub-array, names, fields, item size, alignment, flags[, meta]);
        # a Python 2 pickle's byte order is bytes (read with encoding="bytes")
        order = state[1] if isinstance(state, tuple) and len(state) >= 5 else None
        order = order.decode("latin-1") if isinstance(order, bytes) else order
        if order not in ("<", ">", "|", "=") or state[2:5] != (None, None, None):
            raise pickle.UnpicklingError("a structured or sub-array dtype")
        self.order = order


class _PendingArray:
    """What ``_reconstruct`` returns: no array yet, until its state brings the data.

    ``__setstate__`` (the pickle's BUILD) checks the state's dtype and that its shape needs
    exactly the bytes it brings, then makes the array over those bytes: nothing is allocated
    on a shape's word, and an array can only be as large as bytes already in memory.
    """

    array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        # (version, shape, dtype, Fortran order, data), or without the version
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("an array state that is not (shape, dtype, order, data)")
        shape, spec, fortran, data = state[-4:]
        dims, dtype = _dims(shape), _plain_dtype(spec)
        if not isinstance(data, bytes):
            raise pickle.UnpicklingError(f"array data as {type(data).__name__}, not bytes")
        if math.prod(dims) * dtype.itemsize != len(data):
            raise pickle.UnpicklingError(f"an array of {dtype} {dims} needs "
                                         f"{math.prod(dims) * dtype.itemsize} bytes, its data "
                                         f"has {len(data)}")
        self.array = np.frombuffer(data, dtype).reshape(dims, order="F" if fortran else "C")


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Builds only :data:`_PICKLE_ALLOWED`, through checked stand-ins, within the file's size.

    An array is ``_reconstruct(ndarray, shape, dtype)`` (here a :class:`_PendingArray`) given
    its state by BUILD; ``_codecs.encode`` is latin-1 only (how protocol 2 stores bytes) and
    may make at most the file's size of bytes in all; ``scalar`` reads one plain value.
    """

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data), encoding="bytes")
        self.limit = len(data)
        self.encoded = 0  # bytes made by _codecs.encode so far

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        stand_ins = {"ndarray": _NdarrayToken, "dtype": _DtypeToken,
                     "_reconstruct": self._reconstruct, "scalar": _scalar,
                     "encode": self._latin1}
        return stand_ins.get(name) or super().find_class(module, name)

    def _reconstruct(self, cls: Any, shape: Any, spec: Any) -> _PendingArray:
        if cls is not _NdarrayToken:
            raise pickle.UnpicklingError(f"_reconstruct of {cls!r}, not of numpy.ndarray")
        dims, dtype = _dims(shape), _plain_dtype(spec)
        if math.prod(dims) * dtype.itemsize > self.limit:
            raise pickle.UnpicklingError(f"an array of shape {dims} is larger than the "
                                         f"{self.limit}-byte file")
        return _PendingArray()

    def _latin1(self, text: Any, encoding: Any = "utf-8", *_: Any) -> bytes:
        if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
            raise pickle.UnpicklingError(f"_codecs.encode of a {type(text).__name__} to "
                                         f"{encoding!r}: only text to 'latin1' is read")
        self.encoded += len(text)
        if self.encoded > self.limit:
            raise pickle.UnpicklingError(f"_codecs.encode made more bytes than the "
                                         f"{self.limit}-byte file")
        return text.encode("latin-1")


def _scalar(spec: Any, data: Any = None) -> Any:
    """``numpy.core.multiarray.scalar``: one plain value from exactly its bytes."""
    dtype = _plain_dtype(spec)
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise pickle.UnpicklingError(f"a {dtype} scalar from {type(data).__name__} data")
    return np.frombuffer(data, dtype)[0]


def unpickle_batch(store: Store, path: str) -> dict[bytes, Any]:
    """A CIFAR pickle's dict, its arrays built (:func:`_walk_pickle`, :class:`_PendingArray`).

    Raises:
        DataError: missing, larger than any CIFAR batch, refused, or not a dict.
    """
    try:
        with open_file(store, path) as f:
            if f.size() > _MAX_CIFAR_BYTES:
                raise DataError(f"{path}: {f.size()} bytes, larger than any CIFAR batch "
                                f"(CIFAR-100's train split, the largest, is 155 MB)")
            data = bytes(f.read())
    except FileNotFoundError:
        raise DataError(f"{path}: missing from the CIFAR folder") from None
    try:
        _walk_pickle(data)
        out = _ArraysOnlyUnpickler(data).load()
    except Exception as e:
        raise DataError(f"{path}: not a CIFAR python batch ({e})") from None
    if not isinstance(out, dict):
        raise DataError(f"{path}: not a CIFAR python batch (a {type(out).__name__})")
    values = {(k.encode() if isinstance(k, str) else k): v for k, v in out.items()}
    for k, v in values.items():
        if isinstance(v, _PendingArray):
            if v.array is None:
                raise DataError(f"{path}: not a CIFAR python batch (array {k!r} has no data)")
            values[k] = v.array
    return values
