"""Whole shards of a store's row arrays, encoded and decoded by litcache instead of zarr's pipeline.

Why: zarr 3.1 encodes a shard through its async codec pipeline at about 250-340 MB/s on the
2-core development box, while the very same codec (numcodecs Zstd level 1) on a thread pool
encodes about 1.1 GB/s there (the codecs release the GIL); reading a chunk is likewise cheaper
without the pipeline. The store's row arrays have one simple shape (chunks of whole rows, shards
of whole chunks, `sharding_indexed` with the index at the end), so litcache writes and reads those
shard files itself, byte for byte as the Zarr v3 sharding specification lays them out:

    chunk 0 | chunk 1 | ... | index: (offset, nbytes) uint64 little-endian per chunk | crc32c

Every store stays a plain Zarr v3 store: zarr reads these shards (the tests check it, and
`litcache verify` reads them through zarr), and an array whose metadata is anything else is
written and read through zarr as before (``ShardFormat.from_metadata`` returns None for it).
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import google_crc32c
import numcodecs
import numpy as np

from ..errors import CorruptStoreError

__all__ = ["ShardFormat", "encoder_pool", "decoder_pool"]

#: Marks a chunk that is absent from its shard (reads as the fill value).
EMPTY = np.uint64(2**64 - 1)
_BLOSC_SHUFFLE = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}

_pools: dict[str, tuple[int, ThreadPoolExecutor]] = {}


def _pool(name: str, threads: int) -> ThreadPoolExecutor:
    """A process-wide pool, made again in a forked child (a parent's threads do not survive a fork)."""
    pid, pool = _pools.get(name, (None, None))
    if pool is None or pid != os.getpid():
        pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"litcache-{name}")
        _pools[name] = (os.getpid(), pool)
    return pool


def encoder_pool() -> ThreadPoolExecutor:
    """Compression: one thread per core (the codecs release the GIL)."""
    return _pool("encode", os.cpu_count() or 1)


def decoder_pool() -> ThreadPoolExecutor:
    """Decompression for readers: one thread per core (the codecs release the GIL)."""
    return _pool("decode", os.cpu_count() or 1)


def _compressor(codecs: list[dict]) -> "numcodecs.abc.Codec | None | bool":
    """The numcodecs object behind an inner codec chain; None for no compression, False if unsupported."""
    if not codecs or codecs[0].get("name") != "bytes":
        return False
    if codecs[0].get("configuration", {}).get("endian", "little") != "little":
        return False
    rest = codecs[1:]
    if not rest:
        return None
    if len(rest) > 1:
        return False
    name, config = rest[0].get("name"), rest[0].get("configuration", {})
    if name == "zstd":
        return numcodecs.Zstd(level=config.get("level", 0), checksum=config.get("checksum", False))
    if name == "blosc":
        return numcodecs.Blosc(cname=config["cname"], clevel=config["clevel"],
                               shuffle=_BLOSC_SHUFFLE[config["shuffle"]],
                               blocksize=config.get("blocksize", 0), typesize=config.get("typesize"))
    return False


@dataclass(frozen=True)
class ShardFormat:
    """How one sharded row array lays out its shards; built from the array's zarr.json."""

    dtype: np.dtype
    row_shape: tuple[int, ...]
    chunk_rows: int
    chunks_per_shard: int
    compressor: "numcodecs.abc.Codec | None"

    @classmethod
    def from_metadata(cls, meta: dict) -> "ShardFormat | None":
        """The format of a row array, or None when its metadata is not the simple sharded kind."""
        try:
            (sharding,) = meta["codecs"]
            config = sharding["configuration"]
            shard_shape = meta["chunk_grid"]["configuration"]["chunk_shape"]
            chunk_shape = config["chunk_shape"]
            key_encoding = meta.get("chunk_key_encoding", {"name": "default"})
        except (KeyError, TypeError, ValueError):
            return None
        if (sharding.get("name") != "sharding_indexed" or config.get("index_location", "end") != "end"
                or [c.get("name") for c in config.get("index_codecs", [])] != ["bytes", "crc32c"]
                or config["index_codecs"][0].get("configuration", {}).get("endian", "little") != "little"
                or key_encoding.get("name") != "default"
                or key_encoding.get("configuration", {}).get("separator", "/") != "/"
                or list(chunk_shape[1:]) != list(shard_shape[1:]) or shard_shape[0] % chunk_shape[0]
                or meta.get("fill_value") not in (0, 0.0)):
            return None
        compressor = _compressor(config.get("codecs", []))
        if compressor is False:
            return None
        try:
            dtype = np.dtype(meta["data_type"]).newbyteorder("<")
        except TypeError:
            return None
        return cls(dtype, tuple(chunk_shape[1:]), chunk_shape[0], shard_shape[0] // chunk_shape[0], compressor)

    @staticmethod
    def shard_key(array: str, shard: int, ndim: int) -> str:
        """The shard's key under the store root (default chunk key encoding, "/" separator)."""
        return "/".join([array, "c", str(shard), *(["0"] * (ndim - 1))])

    @property
    def index_bytes(self) -> int:
        return self.chunks_per_shard * 16 + 4

    def _encode_chunk(self, rows: np.ndarray) -> "bytes | memoryview":
        if len(rows) < self.chunk_rows:  # a chunk is always whole: the rows past the end hold the fill value
            padded = np.zeros((self.chunk_rows, *self.row_shape), dtype=self.dtype)
            padded[: len(rows)] = rows
            rows = padded
        raw = np.ascontiguousarray(rows, dtype=self.dtype)
        if self.compressor is None:  # the rows' own bytes, not a copy (the shard buffer outlives the write)
            return raw.reshape(-1).view(np.uint8).data
        encoded = self.compressor.encode(raw)
        return encoded if isinstance(encoded, bytes) else bytes(encoded)

    def submit(self, data: np.ndarray, pool: ThreadPoolExecutor | None = None) -> list[Future]:
        """Queue the chunks of one whole shard holding ``data`` (from the shard's first row) for encoding."""
        self._check_rows(data)
        pool = pool or encoder_pool()
        return [pool.submit(self._encode_chunk, data[i : i + self.chunk_rows])
                for i in range(0, len(data), self.chunk_rows)]

    def submit_file(self, data: np.ndarray, pool: ThreadPoolExecutor, write: Callable[[list], None],
                    fill: Callable[[int, int], None] | None = None) -> Future:
        """Encode the chunks of one whole shard holding ``data`` on ``pool``; the thread that finishes the
        last chunk calls ``write(parts)`` with the shard file's parts. The future gives the file's size.
        ``fill(start, stop)``, if given, first puts rows ``start:stop`` of ``data`` in place (an
        extraction casts its teacher's outputs there, chunk by chunk, on the same threads).

        So every byte of work (casting, encoding, writing, fsync) runs on the pool's threads: n threads
        are n workers, and the caller only waits."""
        self._check_rows(data)
        count = -(-len(data) // self.chunk_rows)
        if count == 0:  # no rows: a shard of absent chunks, written here
            result: Future = Future()
            parts = self._parts([])
            write(parts)
            result.set_result(sum(len(p) for p in parts))
            return result
        encoded: list = [None] * count
        left, failures, lock, result = [count], [], threading.Lock(), Future()

        def encode(i: int) -> None:
            try:
                if not failures:  # after a failure, encode nothing more of this file
                    start, stop = i * self.chunk_rows, min((i + 1) * self.chunk_rows, len(data))
                    if fill is not None:
                        fill(start, stop)
                    encoded[i] = self._encode_chunk(data[start:stop])
            except BaseException as exc:  # handed to the caller through the future
                failures.append(exc)
            with lock:
                left[0] -= 1
                last = left[0] == 0
            if not last:
                return
            if failures:
                result.set_exception(failures[0])
                return
            try:
                parts = self._parts(encoded)
                write(parts)
                result.set_result(sum(len(p) for p in parts))
            except BaseException as exc:
                result.set_exception(exc)

        for i in range(count):
            pool.submit(encode, i)
        return result

    def _check_rows(self, data: np.ndarray) -> None:
        if data.shape[1:] != self.row_shape or len(data) > self.chunk_rows * self.chunks_per_shard:
            raise ValueError(f"Expected at most {self.chunk_rows * self.chunks_per_shard} rows of shape "
                             f"{self.row_shape}, got {data.shape}.")

    def _parts(self, encoded: list) -> list:
        """The encoded chunks, then their index and its crc32c."""
        index = np.full((self.chunks_per_shard, 2), EMPTY, dtype="<u8")
        offset = 0
        for i, chunk in enumerate(encoded):
            index[i] = (offset, len(chunk))
            offset += len(chunk)
        index_raw = index.tobytes()
        crc = np.uint32(google_crc32c.value(index_raw)).astype("<u4").tobytes()
        return [*encoded, index_raw + crc]

    def assemble(self, chunks: list[Future]) -> bytes:
        """The shard file: the encoded chunks, then their index and its crc32c."""
        return b"".join(self._parts([future.result() for future in chunks]))

    def encode(self, data: np.ndarray, pool: ThreadPoolExecutor | None = None) -> bytes:
        """One whole shard holding ``data`` (at most chunk_rows x chunks_per_shard rows) from its first row."""
        return self.assemble(self.submit(data, pool))

    def chunk_range(self, index_tail: bytes, within: int) -> tuple[int, int] | None:
        """(offset, nbytes) of chunk ``within`` from the shard's index bytes; None if absent."""
        if len(index_tail) != self.index_bytes:
            raise CorruptStoreError(f"Expected a {self.index_bytes}-byte shard index, got {len(index_tail)} bytes.")
        raw, crc = index_tail[:-4], index_tail[-4:]
        if np.uint32(google_crc32c.value(raw)).astype("<u4").tobytes() != crc:
            raise CorruptStoreError("The shard index fails its crc32c check: the shard file is damaged.")
        offset, nbytes = np.frombuffer(raw, dtype="<u8").reshape(self.chunks_per_shard, 2)[within]
        return None if offset == EMPTY else (int(offset), int(nbytes))

    def decode_chunk(self, payload: bytes | None) -> np.ndarray:
        """The chunk's rows (chunk_rows of them; an absent chunk is all fill value)."""
        shape = (self.chunk_rows, *self.row_shape)
        if payload is None:
            return np.zeros(shape, dtype=self.dtype)
        try:
            raw = payload if self.compressor is None else self.compressor.decode(payload)
        except Exception as exc:  # the codec's own error types vary
            raise CorruptStoreError(f"A chunk does not decode ({exc}): the shard file is damaged.") from None
        expected = math.prod(shape) * self.dtype.itemsize
        if len(raw) != expected:
            raise CorruptStoreError(f"A decoded chunk holds {len(raw)} bytes, expected {expected}: the shard "
                                    "file is damaged.")
        return np.frombuffer(raw, dtype=self.dtype).reshape(shape)

    def read_chunk(self, read_range: Callable[[int, int | None], bytes], chunk_in_shard: int,
                   index_tail: bytes | None = None) -> tuple[np.ndarray, bytes]:
        """Read one chunk with ``read_range(start, stop)`` (negative start: from the end of the shard).
        Returns the chunk and the shard's index bytes, which the caller may cache and pass back."""
        if index_tail is None:
            index_tail = read_range(-self.index_bytes, None)
        where = self.chunk_range(index_tail, chunk_in_shard)
        payload = None if where is None else read_range(where[0], where[0] + where[1])
        return self.decode_chunk(payload), index_tail
