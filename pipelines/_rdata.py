"""Read data frames out of an R package's lazy-load database (``data/Rdata.rdb`` + ``Rdata.rdx``), no R needed.

Debian's ``r-cran-*`` packages ship their datasets this way. The ``.rdx`` index is a gzip'd R serialisation of
a list whose ``variables`` element maps each object's name to its (offset, length) in the ``.rdb``; each blob
there is a 4-byte big-endian uncompressed length, one byte naming the compression (``Z``: a raw LZMA2 stream,
``2``: bzip2, ``1``: zlib, ``0``: none), and a serialised object (R's XDR format, versions 2 and 3).

Only what data frames of text, numbers and factors need is read: vectors, lists, pairlists, symbols,
attributes, references and the compact integer sequences R 3.5+ writes for row names. Anything else (closures,
environments, other ALTREP classes such as wrappers) is refused with :class:`RDataError`, naming the type, as
are damaged bytes (negative lengths, references to nothing, a stream that ends early).
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import zlib

__all__ = ["RDataError", "read_rdx", "read_object", "data_frame_columns"]


class RDataError(ValueError):
    """The bytes are not an R serialisation this reader understands."""


# SEXP types (R Internals, "Serialization Formats").
NILSXP, SYMSXP, LISTSXP, CHARSXP, LGLSXP, INTSXP, REALSXP, STRSXP, VECSXP = 0, 1, 2, 9, 10, 13, 14, 16, 19
ALTREP_SXP, EMPTYENV_SXP, BASEENV_SXP, GLOBALENV_SXP, NILVALUE_SXP, REFSXP = 238, 242, 241, 253, 254, 255
NA_INTEGER = -(2**31)


class Symbol(str):
    """An R symbol (a name), kept apart from character data."""


class RVector(list):
    """An R vector or list with its attributes (``names``, ``class``, ``levels``, ...)."""

    def __init__(self, values, attributes: dict | None = None) -> None:
        super().__init__(values)
        self.attributes = attributes or {}


class _Reader:
    def __init__(self, data: bytes) -> None:
        if data[:2] != b"X\n":
            raise RDataError(f"expected an R XDR serialisation (b'X\\n'), found {data[:2]!r}")
        self.data, self.pos, self.refs = data, 2, []
        version = self.int()
        self.int(), self.int()  # the writer's R version, the oldest reader's
        if version == 3:
            self.take(self.int())  # the native encoding's name
        elif version != 2:
            raise RDataError(f"expected serialisation version 2 or 3, found {version}")

    def take(self, n: int) -> bytes:
        if n < 0:
            raise RDataError(f"a negative length ({n}) in the serialisation")
        if self.pos + n > len(self.data):
            raise RDataError("the serialisation ends early")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def int(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def length(self) -> int:
        n = self.int()
        if n == -1:  # a long vector: two more (unsigned) words
            upper, lower = struct.unpack(">II", self.take(8))
            n = (upper << 32) + lower
        elif n < 0:
            raise RDataError(f"a negative vector length ({n}) in the serialisation")
        return n

    def item(self):
        flags = self.int()
        kind, has_attr, has_tag = flags & 0xFF, bool(flags & (1 << 9)), bool(flags & (1 << 10))
        if kind in (NILVALUE_SXP, EMPTYENV_SXP, BASEENV_SXP, GLOBALENV_SXP):
            return None
        if kind == REFSXP:
            index = flags >> 8 or self.int()
            if not 1 <= index <= len(self.refs):
                raise RDataError(f"a reference to object {index}, of {len(self.refs)} read so far")
            return self.refs[index - 1]
        if kind == SYMSXP:
            symbol = Symbol(self.item())
            self.refs.append(symbol)
            return symbol
        if kind == LISTSXP:  # a pairlist: returned as a dict of tag -> value (attributes are pairlists)
            out = {}
            while kind == LISTSXP:
                if has_attr:
                    self.item()
                tag = self.item() if has_tag else str(len(out))
                out[str(tag)] = self.item()
                flags = self.int()
                kind, has_attr, has_tag = flags & 0xFF, bool(flags & (1 << 9)), bool(flags & (1 << 10))
            if kind != NILVALUE_SXP:
                raise RDataError(f"expected a pairlist to end in NULL, found type {kind}")
            return out
        if kind == CHARSXP:
            n = self.int()
            return None if n == -1 else self.take(n).decode("utf-8", "replace")  # take() refuses other n < 0
        if kind in (LGLSXP, INTSXP):
            n = self.length()
            values = [None if v == NA_INTEGER else v for v in struct.unpack(f">{n}i", self.take(4 * n))]
        elif kind == REALSXP:
            n = self.length()
            values = list(struct.unpack(f">{n}d", self.take(8 * n)))
        elif kind in (STRSXP, VECSXP):
            values = [self.item() for _ in range(self.length())]
        elif kind == ALTREP_SXP:
            return self.altrep()
        else:
            raise RDataError(f"R objects of SEXP type {kind} are not data this reader reads")
        return RVector(values, self.item() if has_attr else None)

    def altrep(self) -> RVector:
        info, state, attributes = self.item(), self.item(), self.item()
        name = str(info.get("0")) if isinstance(info, dict) else "?"
        if name == "compact_intseq":  # state: (length, first, step) as doubles
            try:
                n, first, step = (int(v) for v in state)
            except (TypeError, ValueError, OverflowError):
                raise RDataError(f"a compact integer sequence whose state is {state!r}") from None
            return RVector(range(first, first + n * step, step), attributes)
        raise RDataError(f"the ALTREP class {name!r} is not one this reader reads")


def _decompress(blob: bytes) -> bytes:
    if len(blob) < 5:
        raise RDataError("a lazy-load blob shorter than its 5-byte header")
    size, method, body = struct.unpack(">i", blob[:4])[0], blob[4:5], blob[5:]
    if method == b"Z":
        out = lzma.decompress(body, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2}])
    elif method == b"2":
        out = bz2.decompress(body)
    elif method == b"1":
        out = zlib.decompress(body)
    elif method == b"0":
        out = body
    else:  # R's plain compress = zlib with no method byte: the length is followed by the stream itself
        out = zlib.decompress(blob[4:])
    if len(out) != size:
        raise RDataError(f"a lazy-load blob decompressed to {len(out)} bytes; its header says {size}")
    return out


def read_rdx(rdx: bytes) -> dict[str, tuple[int, int]]:
    """The ``.rdx`` index: object name -> (offset, length) in the ``.rdb``."""
    try:
        index = _Reader(gzip.decompress(rdx)).item()
        names = index.attributes["names"]
        variables = index[names.index("variables")]
        return {name: (int(v[0]), int(v[1])) for name, v in zip(variables.attributes["names"], variables)}
    except (OSError, EOFError, KeyError, ValueError, IndexError, AttributeError, TypeError, struct.error,
            RecursionError) as e:
        raise RDataError(f"not an R lazy-load index ({e})") from None


def read_object(rdb: bytes, index: dict[str, tuple[int, int]], name: str):
    """The object ``name`` from the ``.rdb`` bytes, given :func:`read_rdx`'s index."""
    if name not in index:
        raise RDataError(f"expected an object named {name!r}; the index holds {sorted(index)}")
    offset, length = index[name]
    try:
        return _Reader(_decompress(rdb[offset:offset + length])).item()
    except (lzma.LZMAError, OSError, zlib.error, struct.error, IndexError, KeyError, TypeError, ValueError,
            RecursionError) as e:
        raise RDataError(f"object {name!r} is damaged ({e})") from None


def data_frame_columns(frame) -> dict[str, list]:
    """A data frame's columns by name; factors come back as their level strings."""
    if not isinstance(frame, RVector) or "data.frame" not in (frame.attributes.get("class") or []):
        raise RDataError("expected an R data.frame")
    columns = {}
    try:
        for name, column in zip(frame.attributes["names"], frame):
            levels = column.attributes.get("levels")
            columns[name] = [None if v is None else levels[v - 1] for v in column] if levels else list(column)
    except (KeyError, AttributeError, TypeError, IndexError) as e:
        raise RDataError(f"a data.frame whose columns are not named vectors ({e!r})") from None
    return columns
