"""The store: a versioned Zarr v3 group of teacher activations, its manifest, ledger and lock.

Layout (rows are samples x views, block-interleaved so that one view of a block of samples is
exactly one chunk; see ``litcache.data.RowLayout``)::

    STORE/zarr.json            root group; attributes["litcache"] is the manifest
    STORE/boundaries/0         (rows, C, H, W) stem output
    STORE/boundaries/1..S      (rows, ...) output of each section
    STORE/logits               (rows, classes)
    STORE/labels               (rows,) int64
    STORE/source_index         (rows,) int64   index of the sample in its split
    STORE/view                 (rows,) int32   view id, 0..views-1
    STORE/view_params          (rows, P) float32, only when the split is augmented
    STORE/teacher/stem/<key>   the teacher's stem and head parameters and buffers, so students
    STORE/teacher/head/<key>   get frozen copies of them without loading the teacher
    STORE/ledger/shard-*.json  one file per committed shard, with its checksums
    STORE/.lock                present while an extraction runs (host, pid)

Every array is chunked along rows only and sharded in shards of whole chunks; writers only
ever write whole shards. The manifest is written first with ``complete: false`` and rewritten
last with ``complete: true`` and the checksum of every shard (xxh3_64 of the stored bytes of
each array's rows in that shard, in storage dtype and C order).
"""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import xxhash
import zarr
import zarr.codecs

from .errors import (
    CorruptStoreError,
    IncompleteStoreError,
    NotAStoreError,
    StoreFormatError,
    StoreLockedError,
    StoreNotFoundError,
)
from .location import StoreLocation
from .shards import ShardFormat, shard_io_pool

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "DTYPES",
    "CODECS",
    "Store",
    "StoreWriter",
    "open_store",
    "read_manifest",
    "store_lock",
    "check_unlocked",
    "to_storage",
    "from_storage",
    "checksum",
]

FORMAT = "litcache-store"
FORMAT_VERSION = 1
MANIFEST_ATTR = "litcache"
LEDGER_DIR = "ledger"
LOCK_FILE = ".lock"
#: Manifest entries every reader relies on.
REQUIRED_KEYS = ("identity", "layout", "arrays")

#: Logical dtype of stored activations -> numpy storage dtype (zarr 3.1 has no bfloat16: store its bits).
DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}
_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
CODECS = ("zstd", "lz4", "none")
#: Explicit mantissa bits of each activation dtype: ``keep_bits`` (lossy rounding) must keep fewer.
MANTISSA_BITS = {"float32": 23, "float16": 10, "bfloat16": 7}
_UINT = {"float32": np.uint32, "float16": np.uint16, "bfloat16": np.uint16}


def codec_pipeline(codec: str) -> list:
    """Compressors for ``codec``. Measured on ResNet activations in float16: plain Zstd(1) is as
    small as Blosc-zstd with byte shuffle and faster; Blosc-lz4 with byte shuffle decodes fastest."""
    if codec == "zstd":
        return [zarr.codecs.ZstdCodec(level=1)]
    if codec == "lz4":
        return [zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")]
    if codec == "none":
        return []
    raise ValueError(f"Expected a codec in {CODECS}, got {codec!r} instead.")


def to_storage(tensor: torch.Tensor, dtype: str, keep_bits: int | None = None) -> np.ndarray:
    """Cast activations to the storage representation (casting in torch is faster than numpy),
    rounding the mantissa to ``keep_bits`` bits when given (lossy; see ``round_mantissa``)."""
    t = tensor.detach().to("cpu", _TORCH_DTYPES[dtype]).contiguous()
    if keep_bits is not None and t.data_ptr() == tensor.data_ptr():
        t = t.clone()  # rounding works in place: never on the caller's tensor
    array = t.view(torch.int16).numpy().view(np.uint16) if dtype == "bfloat16" else t.numpy()
    if keep_bits is not None:
        round_mantissa(array, dtype, keep_bits)
    return array


def round_mantissa(array: np.ndarray, dtype: str, keep_bits: int) -> np.ndarray:
    """Round floats of ``dtype`` (bfloat16 as its uint16 bits) to ``keep_bits`` mantissa bits, in
    place, to nearest with ties to even: numcodecs' BitRound. The dropped bits become zeros, which
    zstd then compresses; the relative error of a normal (not subnormal) value is at most 2**-(keep_bits + 1)."""
    drop = MANTISSA_BITS[dtype] - keep_bits
    if drop <= 0:
        return array
    bits = array.view(_UINT[dtype])
    kind = bits.dtype.type
    lowest_kept = (bits >> kind(drop)) & kind(1)
    bits += kind((1 << (drop - 1)) - 1)
    bits += lowest_kept  # ties go to the even neighbour
    bits &= kind(~((1 << drop) - 1) & np.iinfo(kind).max)
    return array


def from_storage(array: np.ndarray, dtype: str) -> torch.Tensor:
    """Inverse of ``to_storage``: a tensor of the logical dtype."""
    if dtype == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(array).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(array))


def checksum(array: np.ndarray) -> str:
    return xxhash.xxh3_64_hexdigest(np.ascontiguousarray(array))  # hashes the buffer in place: no copy


def _write_atomic(path: Path, data: bytes) -> None:
    """Write a local file whole or not at all (tmp + fsync + rename + fsync of the directory)."""
    StoreLocation(Path(path).parent).write_bytes(Path(path).name, data)


def read_manifest(path: str | Path | StoreLocation) -> dict:
    """The manifest of the store at ``path``; refuses non-stores and unknown format versions."""
    loc = StoreLocation(path)
    path = loc.path
    if not loc.exists():
        raise StoreNotFoundError(f"Expected a litcache store at {str(path)!r}, but nothing is there. Create one with `litcache extract`.")
    meta = loc / "zarr.json"
    if not loc.is_dir() or not loc.is_file("zarr.json"):
        raise NotAStoreError(f"Expected a litcache store at {str(path)!r}, found a {'directory' if loc.is_dir() else 'file'} with no Zarr group in it.")
    try:
        meta_json = json.loads(loc.read_bytes("zarr.json").decode())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NotAStoreError(f"Expected {str(meta)!r} to be Zarr group metadata, but it does not parse: {exc}.") from None
    attrs = meta_json.get("attributes") if isinstance(meta_json, dict) else None
    manifest = attrs.get(MANIFEST_ATTR) if isinstance(attrs, dict) else None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise NotAStoreError(f"Expected a litcache store at {str(path)!r}, found a Zarr group without a litcache manifest.")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise StoreFormatError(
            f"Store {str(path)!r} has format version {version!r}; this litcache reads version {FORMAT_VERSION} only. "
            "Use the litcache release that wrote it, or extract the store again."
        )
    missing = [key for key in REQUIRED_KEYS if not isinstance(manifest.get(key), dict)]
    if missing:
        raise NotAStoreError(f"The litcache manifest of {str(path)!r} lacks {', '.join(missing)}: the store is damaged. "
                             "Extract it again with --overwrite.")
    return manifest


def _shard_format(location: StoreLocation, name: str) -> ShardFormat | None:
    """How litcache encodes and reads array ``name`` itself, from its zarr.json; None: through zarr."""
    return ShardFormat.from_metadata(json.loads(location.read_bytes(f"{name}/zarr.json")))


@dataclass(frozen=True)
class ArraySpec:
    name: str
    row_shape: tuple[int, ...]
    dtype: str  # logical dtype; storage dtype follows from it

    @property
    def storage_dtype(self) -> np.dtype:
        return np.dtype(DTYPES.get(self.dtype, self.dtype))


class Store:
    """Read access to a complete (or, for inspection, incomplete) store."""

    def __init__(self, path: str | Path | StoreLocation, manifest: dict) -> None:
        self.location = StoreLocation(path)
        self.path = self.location.path  # a Path, or the URL string of a remote store
        self.manifest = manifest
        self._group: zarr.Group | None = None  # opened lazily: DataLoader workers open their own
        self._formats: dict[str, ShardFormat | None] = {}
        self._shard_indexes: dict[str, bytes] = {}  # a complete store's shards never change

    @property
    def group(self) -> zarr.Group:
        if self._group is None:
            self._group = self.location.open_group(mode="r")
        return self._group

    def __getstate__(self) -> dict:
        return {"location": self.location, "path": self.path, "manifest": self.manifest, "_group": None,
                "_formats": {}, "_shard_indexes": {}}

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    @property
    def rows(self) -> int:
        return self.manifest["layout"]["rows"]

    @property
    def boundary_names(self) -> list[str]:
        return list(self.manifest["boundaries"])

    @property
    def shards(self) -> list[tuple[int, int]]:
        layout = self.manifest["layout"]
        return shard_ranges(layout["rows"], layout["shard_rows"])

    def array(self, name: str) -> zarr.Array:
        return self.group[name]

    def read(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of array ``name`` as a tensor of its logical dtype."""
        data = self.array(name)[start:stop]
        return from_storage(data, self.manifest["arrays"][name]["dtype"])

    def shard_format(self, name: str) -> ShardFormat | None:
        """How litcache reads array ``name`` itself; None where zarr reads it."""
        if name not in self._formats:
            self._formats[name] = _shard_format(self.location, name)
        return self._formats[name]

    def read_chunk(self, name: str, chunk: int) -> np.ndarray:
        """The rows of chunk ``chunk`` of array ``name`` in their storage dtype (the last one may be short)."""
        chunk_rows = self.manifest["layout"]["chunk_rows"]
        start = chunk * chunk_rows
        stop = min(start + chunk_rows, self.rows)
        fmt = self.shard_format(name)
        if fmt is None:
            return self.array(name)[start:stop]
        shard, within = divmod(chunk, fmt.chunks_per_shard)
        key = ShardFormat.shard_key(name, shard, 1 + len(fmt.row_shape))
        try:
            rows, index = fmt.read_chunk(lambda a, b: self.location.read_range(key, a, b), within, self._shard_indexes.get(key))
        except (CorruptStoreError, FileNotFoundError) as exc:
            reason = "it is missing" if isinstance(exc, FileNotFoundError) else exc
            raise CorruptStoreError(f"Cannot read shard {shard} of {name!r} in store {str(self.path)!r}: {reason}. "
                                    "`litcache verify` checks every shard; extract the store again to repair it.") from None
        self._shard_indexes[key] = index
        return rows[: stop - start]

    def committed(self) -> dict[int, dict]:
        """Ledger entries by shard index."""
        return read_ledger(self.location)

    def module_state(self, part: str) -> dict[str, torch.Tensor]:
        """The teacher's stored ``stem`` or ``head`` state dict."""
        keys = self.manifest.get("teacher_modules", {}).get(part, {})
        return {key: torch.from_numpy(np.array(self.group[f"teacher/{part}/{key}"][...])) for key in keys}


def shard_ranges(rows: int, shard_rows: int) -> list[tuple[int, int]]:
    return [(start, min(start + shard_rows, rows)) for start in range(0, rows, shard_rows)]


def read_ledger(path: str | Path | StoreLocation) -> dict[int, dict]:
    loc = StoreLocation(path)
    entries = {}
    for name in loc.listdir(LEDGER_DIR):
        if name.startswith("shard-") and name.endswith(".json"):
            entry = json.loads(loc.read_bytes(f"{LEDGER_DIR}/{name}"))
            entries[entry["index"]] = entry
    return entries


def open_store(path: str | Path, require_complete: bool = True) -> Store:
    """Open a store for reading; an incomplete store is refused with how to resume it."""
    manifest = read_manifest(path)
    store = Store(path, manifest)
    if require_complete and not store.complete:
        done = len(store.committed())
        raise IncompleteStoreError(
            f"Store {str(path)!r} is incomplete ({done} of {len(store.shards)} shards committed): its extraction did not finish. "
            f"Finish it with `litcache extract RECIPE --out {path} --resume` and the same options."
        )
    return store


class StoreWriter:
    """Creates a store's arrays, commits whole shards with ledger entries, then the manifest."""

    def __init__(self, path: str | Path | StoreLocation, manifest: dict) -> None:
        self.location = StoreLocation(path)
        self.path = self.location.path
        self.manifest = manifest
        self.group = self.location.open_group(mode="r+")
        self._arrays = {name: self.group[name] for name in manifest["arrays"]}
        # Row arrays litcache encodes itself (see shards.py); any other layout goes through zarr.
        self._formats = {name: _shard_format(self.location, name) for name in manifest["arrays"]}

    @classmethod
    def create(cls, path: str | Path, manifest: dict, specs: list[ArraySpec], codec: str,
               modules: dict[str, dict[str, torch.Tensor]] | None = None) -> "StoreWriter":
        loc = StoreLocation(path)
        layout = manifest["layout"]
        rows, chunk_rows, shard_rows = layout["rows"], layout["chunk_rows"], layout["shard_rows"]
        _clear_store_dir(loc)
        # The group is born with its (incomplete) manifest, so a crash from here on leaves a store
        # that readers refuse as incomplete and `--resume` recognises, never an anonymous group.
        group = loc.open_group(mode="a", attributes={MANIFEST_ATTR: {**manifest, "arrays": {}, "complete": False}})
        arrays = {}
        for spec in specs:
            group.create_array(
                spec.name,
                shape=(rows, *spec.row_shape),
                chunks=(chunk_rows, *spec.row_shape),
                shards=(shard_rows, *spec.row_shape),
                dtype=spec.storage_dtype,
                compressors=codec_pipeline(codec),
                fill_value=0,
            )
            arrays[spec.name] = {
                "shape": [rows, *spec.row_shape],
                "dtype": spec.dtype,
                "storage_dtype": spec.storage_dtype.name,
                "codec": codec,
            }
        teacher_modules = {}
        for part, state in (modules or {}).items():
            teacher_modules[part] = {}
            for key, tensor in state.items():
                value = tensor.detach().cpu().contiguous().numpy()
                group.create_array(f"teacher/{part}/{key}", shape=value.shape, dtype=value.dtype, fill_value=0)[...] = value
                teacher_modules[part][key] = {"shape": list(value.shape), "dtype": value.dtype.name, "xxh3_64": checksum(value)}
        manifest = {**manifest, "arrays": arrays, "teacher_modules": teacher_modules, "complete": False}
        loc.makedirs(LEDGER_DIR)
        group.attrs[MANIFEST_ATTR] = manifest
        return cls(loc, manifest)

    @classmethod
    def reopen(cls, path: str | Path | StoreLocation) -> "StoreWriter":
        loc = StoreLocation(path)
        return cls(loc, read_manifest(loc))

    def committed(self) -> dict[int, dict]:
        return read_ledger(self.location)

    def write_shard(self, index: int, start: int, data: dict[str, np.ndarray]) -> dict:
        """Write rows ``start:start+n`` of every array (one whole shard), then its ledger entry."""
        rows = next(iter(data.values())).shape[0]
        # Every chunk of every array is queued for encoding at once, so all cores compress, and
        # each array's shard file is written (and fsynced) as soon as its chunks are done.
        writes = [shard_io_pool().submit(self._put_shard, name, index, start, fmt, fmt.submit(data[name]))
                  for name, fmt in self._formats.items() if fmt is not None]
        for name, array in self._arrays.items():
            if self._formats[name] is None:
                array[start : start + rows] = data[name]
                self._fsync_shard(name, index, array.ndim)
        for write in writes:
            write.result()
        entry = {
            "index": index,
            "rows": [start, start + rows],
            "xxh3_64": {name: checksum(data[name]) for name in self._arrays},
            "committed": time.time(),
        }
        key, data = f"{LEDGER_DIR}/shard-{index:06d}.json", json.dumps(entry).encode()
        if self.location.remote:
            self.location.write_bytes(key, data)  # one PUT: the entry is whole or absent
        else:
            _write_atomic(self.path / key, data)
        return entry

    def _put_shard(self, name: str, index: int, start: int, fmt: ShardFormat, chunks: list) -> None:
        if start != index * fmt.chunk_rows * fmt.chunks_per_shard:
            raise ValueError(f"Shard {index} of {name!r} must start at row {index * fmt.chunk_rows * fmt.chunks_per_shard}, not {start}.")
        # Whole or absent: tmp + fsync + rename locally, one PUT remotely.
        self.location.write_bytes(ShardFormat.shard_key(name, index, 1 + len(fmt.row_shape)), fmt.assemble(chunks))

    def _fsync_shard(self, name: str, index: int, ndim: int) -> None:
        """Make the shard durable before its ledger entry claims it (power loss, not just SIGKILL)."""
        self.location.fsync(ShardFormat.shard_key(name, index, ndim))

    def finalize(self, extra: dict | None = None) -> dict:
        """Record every shard's checksums and mark the store complete (the last write)."""
        ledger = self.committed()
        expected = shard_ranges(self.manifest["layout"]["rows"], self.manifest["layout"]["shard_rows"])
        missing = [i for i in range(len(expected)) if i not in ledger]
        if missing:
            raise IncompleteStoreError(f"Cannot finalize store {str(self.path)!r}: shards {missing[:10]} are not committed.")
        shards = [{"index": i, "rows": ledger[i]["rows"], "xxh3_64": ledger[i]["xxh3_64"]} for i in range(len(expected))]
        manifest = {**self.manifest, **(extra or {}), "shards": shards, "complete": True}
        self.group.attrs[MANIFEST_ATTR] = manifest
        self.manifest = manifest
        return manifest


def _clear_store_dir(path: str | Path | StoreLocation) -> None:
    """Empty a store directory except its lock (zarr's mode "w" would delete the lock too)."""
    StoreLocation(path).clear(keep=LOCK_FILE)


def verify_checksums(store: Store) -> list[str]:
    """Recompute every shard's checksum; one message per array and shard that differs."""
    problems = []
    for part, params in store.manifest.get("teacher_modules", {}).items():
        for key, meta in params.items():
            name = f"teacher/{part}/{key}"
            try:
                got = checksum(np.asarray(store.array(name)[...]))
            except Exception as exc:
                problems.append(f"array {name!r}: unreadable ({type(exc).__name__}: {exc})")
                continue
            if got != meta["xxh3_64"]:
                problems.append(f"array {name!r}: checksum {got} != recorded {meta['xxh3_64']}")
    for shard in store.manifest.get("shards", []):
        start, stop = shard["rows"]
        for name, expected in shard["xxh3_64"].items():
            try:
                got = checksum(store.array(name)[start:stop])
            except Exception as exc:  # a corrupt chunk can fail to decode at all
                problems.append(f"array {name!r} shard {shard['index']} (rows {start}-{stop}): unreadable ({type(exc).__name__}: {exc})")
                continue
            if got != expected:
                problems.append(f"array {name!r} shard {shard['index']} (rows {start}-{stop}): checksum {got} != recorded {expected}")
    return problems


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _locked_error(path: StoreLocation, owner: dict) -> StoreLockedError:
    return StoreLockedError(
        f"Store {str(path)!r} is locked by process {owner.get('pid', '?')} on host {owner.get('host', '?')}: "
        f"another extraction is writing it. Wait for it to finish; if that process is gone, delete {str(path / LOCK_FILE)!r}."
    )


def _live_lock_owner(path: str | Path | StoreLocation) -> dict | None:
    """The owner of the store's lock, or None when there is no lock or its process (on this host) is gone."""
    loc = StoreLocation(path)
    if not loc.exists(LOCK_FILE):
        return None
    try:
        owner = json.loads(loc.read_bytes(LOCK_FILE))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        owner = {}
    if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int) and not _pid_alive(owner["pid"]):
        return None
    return owner


def check_unlocked(path: str | Path) -> None:
    """Refuse a store that a live extraction holds."""
    loc = StoreLocation(path)
    owner = _live_lock_owner(loc)
    if owner is not None:
        raise _locked_error(loc, owner)


@contextmanager
def store_lock(path: str | Path) -> Iterator[None]:
    """Exclusive lock on a store directory; a lock whose process is gone (same host) is taken over.

    Atomic on local disks; on object stores best effort (see ``StoreLocation.create_exclusive``)."""
    loc = StoreLocation(path)
    loc.makedirs()
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
    for _ in range(2):
        if loc.create_exclusive(LOCK_FILE, json.dumps(me).encode()):
            break
        owner = _live_lock_owner(loc)
        if owner is None:
            loc.delete(LOCK_FILE)  # its owner died without cleaning up
            continue
        raise _locked_error(loc, owner)
    else:
        raise _locked_error(loc, _live_lock_owner(loc) or {})
    try:
        yield
    finally:
        loc.delete(LOCK_FILE)


def store_sizes(store: Store) -> dict[str, int]:
    """Bytes on disk per array."""
    sizes = {}
    for name in store.manifest["arrays"]:
        sizes[name] = store.location.tree_size(name)
    return sizes
