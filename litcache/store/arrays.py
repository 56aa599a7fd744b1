"""The row arrays of a store: ``Store`` (the reader), ``StoreWriter`` (whole shards, the ledger,
the final manifest), and the checksums that prove them intact. The layout is in this package's
docstring (``litcache.store``)."""

from __future__ import annotations

import contextlib
import functools
import json
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import xxhash
import zarr

from ..errors import CorruptStoreError, IncompleteStoreError
from ..runtime.files import write_atomic
from .encoding import DTYPES, codec_pipeline, from_storage
from .layout import LOCK_FILE
from .location import StoreLocation
from .manifest import (
    LEDGER_DIR,
    ArrayRecord,
    Manifest,
    ShardRecord,
    TensorRecord,
    Timing,
    read_manifest,
    utc_now,
    write_manifest,
)
from .shards import ShardFormat, encoder_pool
from .space import disk_full_error, human_bytes, is_disk_full

__all__ = ["Store", "StoreWriter", "ArraySpec", "open_store", "read_ledger", "shard_ranges", "checksum",
           "damaged_shards", "damaged_teacher_tensors", "forget_shards",
           "verify_checksums", "store_sizes"]


def checksum(array: np.ndarray) -> str:
    return xxhash.xxh3_64_hexdigest(np.ascontiguousarray(array))  # hashes the buffer in place: no copy


def _shard_format(location: StoreLocation, name: str) -> ShardFormat | None:
    """How litcache encodes and reads array ``name`` itself, from its zarr.json; None: through zarr."""
    return ShardFormat.from_metadata(json.loads(location.read_bytes(f"{name}/zarr.json")))


@dataclass(frozen=True)
class ArraySpec:
    """An array to create (the manifest then records it as an ``ArrayRecord``)."""

    name: str
    row_shape: tuple[int, ...]
    dtype: str  # logical dtype; storage dtype follows from it

    @property
    def storage_dtype(self) -> np.dtype:
        return np.dtype(DTYPES.get(self.dtype, self.dtype))


class Store:
    """Read access to a complete (or, for inspection, incomplete) store."""

    def __init__(self, path: str | Path | StoreLocation, manifest: Manifest) -> None:
        self.location = StoreLocation(path)
        self.path = self.location.path  # a Path, or the URL string of a remote store
        self.manifest = manifest  # checked when read (read_manifest): no reader checks it again
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
        return self.manifest.complete

    @property
    def rows(self) -> int:
        return self.manifest.layout.rows

    @property
    def boundary_names(self) -> list[str]:
        return list(self.manifest.boundaries)

    @property
    def shards(self) -> list[tuple[int, int]]:
        return shard_ranges(self.manifest.layout.rows, self.manifest.layout.shard_rows)

    def array(self, name: str) -> zarr.Array:
        return self.group[name]

    def read(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of array ``name`` as a tensor of its logical dtype."""
        data = self.array(name)[start:stop]
        return from_storage(data, self.manifest.arrays[name].dtype)

    def shard_format(self, name: str) -> ShardFormat | None:
        """How litcache reads array ``name`` itself; None where zarr reads it."""
        if name not in self._formats:
            self._formats[name] = _shard_format(self.location, name)
        return self._formats[name]

    def read_chunk(self, name: str, chunk: int) -> np.ndarray:
        """The rows of chunk ``chunk`` of array ``name`` in their storage dtype (the last one may be short)."""
        chunk_rows = self.manifest.layout.chunk_rows
        start = chunk * chunk_rows
        stop = min(start + chunk_rows, self.rows)
        fmt = self.shard_format(name)
        if fmt is None:
            return self.array(name)[start:stop]
        shard, within = divmod(chunk, fmt.chunks_per_shard)
        key = ShardFormat.shard_key(name, shard, 1 + len(fmt.row_shape))
        try:
            rows, index = fmt.read_chunk(lambda a, b: self.location.read_range(key, a, b), within,
                                         self._shard_indexes.get(key))
        except (CorruptStoreError, FileNotFoundError) as exc:
            reason = "it is missing" if isinstance(exc, FileNotFoundError) else str(exc).rstrip(".")
            raise CorruptStoreError(f"Cannot read shard {shard} of {name!r} in store {str(self.path)!r}: {reason}. "
                                    "`litcache verify` checks every shard; the extract command that made the "
                                    "store, run again with --repair, extracts the damaged ones again.") from None
        self._shard_indexes[key] = index
        return rows[: stop - start]

    def committed(self) -> dict[int, dict]:
        """Ledger entries by shard index."""
        return read_ledger(self.location)

    def module_state(self, part: str) -> dict[str, torch.Tensor]:
        """The teacher's stored ``stem``, ``head`` or ``sectionI`` state dict (empty if not stored)."""
        keys = (self.manifest.teacher_modules or {}).get(part, {})
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


def damaged_shards(location: str | Path | StoreLocation, checksums: bool = False) -> dict[int, str]:
    """Committed shards (ledger entries) that the disk no longer backs, with what is wrong: a shard file
    missing, or of another size than its entry records; with ``checksums``, also stored bytes whose
    xxh3 differs from the entry's (every committed row is read). A resume re-extracts these."""
    loc = StoreLocation(location)
    manifest = read_manifest(loc)
    ledger = read_ledger(loc)
    damaged: dict[int, str] = {}
    for index, entry in sorted(ledger.items()):
        recorded = entry.get("bytes", {})
        for name, array in manifest.arrays.items():
            key = ShardFormat.shard_key(name, index, 1 + len(array.row_shape))
            size = loc.size(key)
            if size is None and (recorded.get(name) or _shard_format(loc, name) is not None):
                damaged[index] = f"the shard file of {name!r} ({key}) is missing"
                break
            if size is not None and recorded.get(name) not in (None, size):
                damaged[index] = f"the shard file of {name!r} ({key}) is {size} bytes, not the {recorded[name]} written"
                break
    if checksums:
        store = Store(loc, manifest)
        for index, entry in sorted(ledger.items()):
            found = None if index in damaged else _shard_problem(store, entry["rows"], entry["xxh3_64"])
            if found:
                damaged[index] = f"{found[0]!r}: {found[1]}"
    return damaged


def damaged_teacher_tensors(location: str | Path | StoreLocation) -> list[str]:
    """The teacher tensors a store keeps (``teacher/...``) whose stored bytes no longer match the
    manifest's checksums; ``StoreWriter.rewrite_teacher_tensors`` writes them again."""
    loc = StoreLocation(location)
    return list(_teacher_tensor_problems(Store(loc, read_manifest(loc))))


def forget_shards(location: str | Path | StoreLocation, shards: Sequence[int]) -> None:
    """Uncommit ``shards`` so that a resume extracts them again: the store is marked incomplete first (a
    reader must not use it meanwhile), then their ledger entries go. Hold the store's lock."""
    loc = StoreLocation(location)
    manifest = read_manifest(loc)
    if manifest.complete:
        write_manifest(loc, replace(manifest, complete=False))
    for index in shards:
        loc.delete(f"{LEDGER_DIR}/shard-{index:06d}.json")


def open_store(path: str | Path, require_complete: bool = True) -> Store:
    """Open a store for reading; an incomplete store is refused with how to resume it."""
    manifest = read_manifest(path)
    store = Store(path, manifest)
    if require_complete and not store.complete:
        done = len(store.committed())
        raise IncompleteStoreError(
            f"Store {str(path)!r} is incomplete ({done} of {len(store.shards)} shards committed): its extraction did "
            f"not finish. Finish it with `litcache extract RECIPE --out {path} --resume` and the same options."
        )
    return store


def _raw_bytes(manifest: Manifest, rows: int | None = None) -> int:
    """Uncompressed bytes of ``rows`` rows (default: all) of the store's arrays."""
    return sum(array.raw_bytes(rows) for array in manifest.arrays.values())


class StoreWriter:
    """Creates a store's arrays, commits whole shards with ledger entries, then the manifest.

    A full disk (``DiskFullError``) at any step leaves a store that ``--resume`` finishes, or,
    during creation, none: the manifest is only ever replaced whole, never torn."""

    def __init__(self, path: str | Path | StoreLocation, manifest: Manifest) -> None:
        self.location = StoreLocation(path)
        self.path = self.location.path
        self.manifest = manifest  # replaced, never changed: each version is a new frozen Manifest
        self.group = self.location.open_group(mode="r+")
        self._arrays = {name: self.group[name] for name in manifest.arrays}
        # Row arrays litcache encodes itself (see shards.py); any other layout goes through zarr.
        self._formats = {name: _shard_format(self.location, name) for name in manifest.arrays}

    @classmethod
    def create(cls, path: str | Path, manifest: Manifest, specs: list[ArraySpec], codec: str,
               modules: dict[str, dict[str, torch.Tensor]] | None = None) -> "StoreWriter":
        loc = StoreLocation(path)
        try:
            return cls._create(loc, manifest, specs, codec, modules or {})
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            with contextlib.suppress(OSError):
                _clear_store_dir(loc)  # nothing is committed yet: give the space back
            rows = manifest.layout.rows
            raw = rows * sum(int(np.prod(s.row_shape, dtype=np.int64)) * s.storage_dtype.itemsize for s in specs)
            raise disk_full_error(loc, "creating store",
                                  f"up to {human_bytes(raw)} uncompressed (less once compressed)",
                                  "Nothing was committed, and the half-made store was removed; free some space "
                                  "(or choose another --out) and run the same command again.") from exc

    @classmethod
    def _create(cls, loc: StoreLocation, manifest: Manifest, specs: list[ArraySpec], codec: str,
                modules: dict[str, dict[str, torch.Tensor]]) -> "StoreWriter":
        rows, chunk_rows, shard_rows = manifest.layout.rows, manifest.layout.chunk_rows, manifest.layout.shard_rows
        _clear_store_dir(loc)
        # The group is born with its (incomplete) manifest, so a crash from here on leaves a store
        # that readers refuse as incomplete and `--resume` recognises, never an anonymous group.
        write_manifest(loc, replace(manifest, arrays={}, complete=False), new=True)
        group = loc.open_group(mode="r+")
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
            arrays[spec.name] = ArrayRecord((rows, *spec.row_shape), spec.dtype, spec.storage_dtype.name, codec)
        teacher_modules = {}
        for part, state in modules.items():
            teacher_modules[part] = {}
            for key, tensor in state.items():
                value = tensor.detach().cpu().contiguous().numpy()
                group.create_array(f"teacher/{part}/{key}", shape=value.shape, dtype=value.dtype,
                                   fill_value=0)[...] = value
                teacher_modules[part][key] = TensorRecord(value.shape, value.dtype.name, checksum(value))
        manifest = replace(manifest, arrays=arrays, teacher_modules=teacher_modules, complete=False)
        loc.makedirs(LEDGER_DIR)
        write_manifest(loc, manifest)
        return cls(loc, manifest)

    @classmethod
    def reopen(cls, path: str | Path | StoreLocation) -> "StoreWriter":
        loc = StoreLocation(path)
        return cls(loc, read_manifest(loc))

    def committed(self) -> dict[int, dict]:
        return read_ledger(self.location)

    def rewrite_teacher_tensors(self, modules: dict[str, dict[str, torch.Tensor]], names: Sequence[str]) -> None:
        """Write the teacher tensors ``names`` (``teacher/PART/KEY``) again from ``modules``; each must
        give back the checksum the manifest recorded (the same teacher, as the identity guarantees)."""
        group = self.location.open_group(mode="r+")
        for name in names:
            _, part, key = name.split("/", 2)
            value = modules[part][key].detach().cpu().contiguous().numpy()
            recorded = self.manifest.teacher_modules[part][key].xxh3_64
            if checksum(value) != recorded:
                raise CorruptStoreError(f"Cannot repair {name!r} of store {str(self.path)!r}: the teacher's tensor has "
                                        f"checksum {checksum(value)}, not the recorded {recorded}.")
            group.create_array(name, shape=value.shape, dtype=value.dtype, fill_value=0, overwrite=True)[...] = value

    def write_shard(self, index: int, start: int, data: dict[str, np.ndarray],
                    encoder: ThreadPoolExecutor | None = None, before_commit: Callable[[], None] | None = None,
                    fill: dict[str, Callable[[int, int], None]] | None = None) -> dict:
        """Write rows ``start:start+n`` of every array (one whole shard), then its ledger entry.

        The chunks are encoded on ``encoder`` (default: one thread per core); the thread that encodes an
        array's last chunk writes and fsyncs its shard file. This thread hashes the arrays meanwhile (an
        array of ``fill`` is hashed by its file's thread, once whole), waits, calls ``before_commit``
        (an extraction's writer pool waits there for the shards before this one), then commits.
        ``fill[name](a, b)`` puts rows ``a:b`` of ``data[name]`` in place before they are encoded (see
        ``ShardFormat.submit_file``)."""
        try:
            return self._write_shard(index, start, data, encoder or encoder_pool(), before_commit, fill or {})
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            raise self.disk_full_error(index) from exc

    def disk_full_error(self, index: int) -> OSError:
        """The error for a full disk while writing shard ``index``, from the ledger as it is now."""
        layout, ledger = self.manifest.layout, self.committed()
        left = [(a, b) for i, (a, b) in enumerate(shard_ranges(layout.rows, layout.shard_rows)) if i not in ledger]
        return disk_full_error(
            self.location, f"writing shard {index} of store",
            f"up to {human_bytes(_raw_bytes(self.manifest, sum(b - a for a, b in left)))} uncompressed "
            f"for the {len(left)} shards not committed yet",
            f"The {len(ledger)} shards committed so far are kept; free some space and run the same "
            "command with --resume.",
        )

    def _write_shard(self, index: int, start: int, data: dict[str, np.ndarray], encoder: ThreadPoolExecutor,
                     before_commit: Callable[[], None] | None, fill: dict[str, Callable[[int, int], None]]) -> dict:
        rows = next(iter(data.values())).shape[0]
        for name, fmt in self._formats.items():
            if fmt is not None and start != index * fmt.chunk_rows * fmt.chunks_per_shard:
                raise ValueError(f"Shard {index} of {name!r} must start at row "
                                 f"{index * fmt.chunk_rows * fmt.chunks_per_shard}, not {start}.")
        # Every chunk of every array is queued for encoding at once, so all encoder threads work; the
        # thread that finishes an array's last chunk writes (and fsyncs) that array's shard file.
        # No folder fsync per shard file (each lies in a folder of its own): the ledger entry's commit
        # below syncs its own folder, and a resume checks every committed shard file's size, so a rename
        # a power cut undid is found and the shard extracted again.
        checksums: dict[str, str] = {}

        def hash_and_write(name: str, key: str, parts: list) -> None:  # on the thread that encoded the last chunk
            if name in fill:  # its rows were put in place chunk by chunk: whole only now
                checksums[name] = checksum(data[name])
            self.location.write_bytes(key, parts, sync_folder=False)

        files = {name: fmt.submit_file(data[name], encoder, functools.partial(
                     hash_and_write, name, ShardFormat.shard_key(name, index, 1 + len(fmt.row_shape))),
                     fill=fill.get(name))
                 for name, fmt in self._formats.items() if fmt is not None}
        through_zarr = {}
        try:
            for name in self._arrays:  # meanwhile, in this thread, those already in place
                if name not in fill and self._formats[name] is not None:
                    checksums[name] = checksum(data[name])
            for name, array in self._arrays.items():
                if self._formats[name] is None:  # a layout litcache does not encode itself: through zarr
                    if name in fill:
                        fill[name](0, rows)
                    checksums[name] = checksum(data[name])
                    key = ShardFormat.shard_key(name, index, array.ndim)
                    array[start : start + rows] = data[name]
                    self.location.fsync(key)  # durable before its ledger entry claims it (power loss too)
                    through_zarr[name] = self.location.size(key)
        finally:
            wait(list(files.values()))  # on a failure too: no shard file is still being written when it leaves
        sizes = {name: files[name].result() if name in files else through_zarr[name] for name in self._arrays}
        if before_commit is not None:
            before_commit()
        entry = {
            "index": index,
            "rows": [start, start + rows],
            "xxh3_64": {name: checksums[name] for name in self._arrays},
            # What a resume checks before it trusts the entry (entries written before 0.2 lack it).
            "bytes": sizes,
            "committed": time.time(),
        }
        key, raw = f"{LEDGER_DIR}/shard-{index:06d}.json", json.dumps(entry).encode()
        if self.location.remote:
            self.location.write_bytes(key, raw)  # one PUT: the entry is whole or absent
        else:
            write_atomic(self.path / key, raw)
        return entry

    def finalize(self, timing: Timing | None = None, completed: str | None = None) -> Manifest:
        """Record every shard's checksums and mark the store complete (the last write); ``completed``
        defaults to now."""
        ledger = self.committed()
        expected = shard_ranges(self.manifest.layout.rows, self.manifest.layout.shard_rows)
        missing = [i for i in range(len(expected)) if i not in ledger]
        if missing:
            raise IncompleteStoreError(f"Cannot finalize store {str(self.path)!r}: shards {missing[:10]} "
                                       "are not committed.")
        shards = [ShardRecord(i, ledger[i]["rows"], ledger[i]["xxh3_64"]) for i in range(len(expected))]
        manifest = replace(self.manifest, completed=completed or utc_now(), timing=timing or self.manifest.timing,
                           shards=shards, complete=True)
        try:
            write_manifest(self.location, manifest)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            raise disk_full_error(
                self.location, "committing the manifest of store",
                f"{human_bytes(len(json.dumps(manifest.to_dict())))} for the manifest",
                f"All {len(expected)} shards are committed and the store is as it was, incomplete; free some space "
                "and run the same command with --resume to finish it.",
            ) from exc
        self.manifest = manifest
        return manifest


def _clear_store_dir(path: str | Path | StoreLocation) -> None:
    """Empty a store directory except its lock (zarr's mode "w" would delete the lock too)."""
    StoreLocation(path).clear(keep=LOCK_FILE)


def _checksum_problem(read: Callable[[], np.ndarray], expected: str) -> str | None:
    """What is wrong with stored bytes that should hash to ``expected``, or None when they do."""
    try:
        got = checksum(read())
    except Exception as exc:  # a corrupt chunk can fail to decode at all
        return f"unreadable ({type(exc).__name__}: {exc})"
    return None if got == expected else f"checksum {got} != recorded {expected}"


def _teacher_tensor_problems(store: Store) -> dict[str, str]:
    """``teacher/PART/KEY`` -> what is wrong, for every stored teacher tensor that fails its checksum."""
    problems = {}
    for part, params in (store.manifest.teacher_modules or {}).items():
        for key, meta in params.items():
            name = f"teacher/{part}/{key}"
            problem = _checksum_problem(lambda: np.asarray(store.array(name)[...]), meta.xxh3_64)
            if problem:
                problems[name] = problem
    return problems


def _shard_problem(store: Store, rows: Sequence[int], checksums: Mapping[str, str]) -> tuple[str, str] | None:
    """(array, what is wrong) for the first array of a shard (rows ``[start, stop)``) that fails its checksum."""
    start, stop = rows
    for name, expected in checksums.items():
        problem = _checksum_problem(lambda: store.array(name)[start:stop], expected)
        if problem:
            return name, problem
    return None


def verify_checksums(store: Store) -> list[str]:
    """Recompute every shard's checksum; one message per array and shard that differs."""
    problems = [f"array {name!r}: {problem}" for name, problem in _teacher_tensor_problems(store).items()]
    for shard in store.manifest.shards or ():
        start, stop = shard.rows
        for name, expected in shard.xxh3_64.items():
            problem = _checksum_problem(lambda: store.array(name)[start:stop], expected)
            if problem:
                problems.append(f"array {name!r} shard {shard.index} (rows {start}-{stop}): {problem}")
    return problems


def store_sizes(store: Store) -> dict[str, int]:
    """Bytes on disk per array."""
    sizes = {}
    for name in store.manifest.arrays:
        sizes[name] = store.location.tree_size(name)
    return sizes
