"""The manifest: the root group's ``litcache`` attribute in ``STORE/zarr.json``, as a frozen ``Manifest``.

``Manifest.from_dict`` checks every key a reader relies on once, when a store opens, and
``to_dict`` gives back exactly the JSON that is written (``from_dict(d).to_dict() == d``). Keys
that stores made by earlier releases of format 1 lack are optional, with the meaning they had
then: no ``compute`` or identity ``precision``, fp32; no identity ``keep_bits``, exact values; no
``teacher_modules``, none stored. Writers make new versions with ``dataclasses.replace``.

The manifest is written whole and durably (tmp + fsync + rename, or one PUT), so a crash or a full
disk leaves the previous one, never a torn one. A store whose manifest is damaged all the same
(missing, not JSON, not litcache's, a key missing or of the wrong type) is still recognisable as
litcache's by its root, which holds only the names litcache makes and a ``ledger`` folder: such a
store may be replaced with ``--overwrite``, which never touches a directory of anything else.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import (
    DamagedStoreError,
    ManifestError,
    NotAStoreError,
    StoreFormatError,
    StoreNotFoundError,
    damaged_message,
)
from ..runtime.files import temp_writer_pid
from .identity import Identity
from .json_fields import (
    BOOL,
    CODEC,
    COUNT,
    POSITIVE,
    SECONDS,
    SHAPE,
    STRING,
    STRINGS,
    Expect,
    FrozenMapping,
    JsonObject,
)
from .layout import LOCK_FILE, STORE_FOLDERS
from .location import StoreLocation, is_url

__all__ = ["FORMAT", "FORMAT_VERSION", "Manifest", "Layout", "ArrayRecord", "TensorRecord", "RecipeRecord",
           "TeacherRecord", "ComputeRecord", "ShardRecord", "Timing", "Identity", "OptionsRecord", "FrozenMapping",
           "ManifestError", "read_manifest", "write_manifest", "utc_now", "foreign_names", "enclosing_store"]

FORMAT = "litcache-store"
FORMAT_VERSION = 1
#: Version 2 adds rows of tokens: per-position labels, ``lengths`` and top-k logits (``topk_values``,
#: ``topk_indices``). Only stores that hold them are written as version 2, so a release that reads
#: version 1 keeps reading every other store, and refuses these with its version message.
TOKEN_FORMAT_VERSION = 2
READ_VERSIONS = (FORMAT_VERSION, TOKEN_FORMAT_VERSION)
MANIFEST_ATTR = "litcache"
LEDGER_DIR = "ledger"
#: Manifest entries every store of format 1 has had, from the first release on.
REQUIRED_KEYS = ("complete", "identity", "layout", "boundaries", "view_param_names", "recipe", "teacher", "options",
                 "versions", "created", "arrays")
#: Every name litcache makes at a store's root (besides its temporary files).
ROOT_NAMES = STORE_FOLDERS | {"zarr.json", LOCK_FILE}


def utc_now() -> str:
    """The time stamps of a manifest (``created``, ``completed``): UTC, ISO 8601, in seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Layout:
    """How rows, chunks and shards are laid out (see ``litcache.store.layout.RowLayout``)."""

    rows: int
    samples: int
    views: int
    chunk_rows: int
    shard_rows: int
    num_shards: int
    row_order: str

    @classmethod
    def read(cls, obj: JsonObject) -> "Layout":
        layout = cls(rows=obj.get("rows", COUNT), samples=obj.get("samples", COUNT), views=obj.get("views", POSITIVE),
                     chunk_rows=obj.get("chunk_rows", POSITIVE), shard_rows=obj.get("shard_rows", POSITIVE),
                     num_shards=obj.get("num_shards", COUNT), row_order=obj.get("row_order", STRING))
        if layout.shard_rows % layout.chunk_rows:
            obj.wrong("shard_rows", f"a multiple of chunk_rows ({layout.chunk_rows})")
        if layout.rows != layout.samples * layout.views:
            obj.wrong("rows", f"samples x views = {layout.samples * layout.views}")
        if layout.num_shards != -(-layout.rows // layout.shard_rows):
            obj.wrong("num_shards", f"{-(-layout.rows // layout.shard_rows)} (one per {layout.shard_rows} rows)")
        return layout

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ArrayRecord:
    """One stored row array: ``shape`` is (rows, ...); ``dtype`` the logical one (bfloat16 is stored as uint16)."""

    shape: tuple[int, ...]
    dtype: str
    storage_dtype: str
    codec: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(self.shape))

    @property
    def row_shape(self) -> tuple[int, ...]:
        return self.shape[1:]

    def raw_bytes(self, rows: int | None = None) -> int:
        """Uncompressed bytes of ``rows`` rows (default: all)."""
        count = int(np.prod(self.shape if rows is None else (rows, *self.row_shape), dtype=np.int64))
        return count * np.dtype(self.storage_dtype).itemsize

    @classmethod
    def read(cls, obj: JsonObject) -> "ArrayRecord":
        return cls(shape=obj.get("shape", SHAPE), dtype=obj.get("dtype", STRING),
                   storage_dtype=obj.get("storage_dtype", STRING), codec=obj.get("codec", CODEC))

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "dtype": self.dtype, "storage_dtype": self.storage_dtype,
                "codec": self.codec}


@dataclass(frozen=True)
class TensorRecord:
    """One tensor of the teacher's stored stem or head, with the checksum of its bytes."""

    shape: tuple[int, ...]
    dtype: str
    xxh3_64: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(self.shape))

    @classmethod
    def read(cls, obj: JsonObject) -> "TensorRecord":
        return cls(shape=obj.get("shape", SHAPE), dtype=obj.get("dtype", STRING), xxh3_64=obj.get("xxh3_64", STRING))

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "dtype": self.dtype, "xxh3_64": self.xxh3_64}


@dataclass(frozen=True)
class RecipeRecord:
    name: str
    source: str  # the file or module:attr it was loaded from
    hash: str
    num_classes: int

    @classmethod
    def read(cls, obj: JsonObject) -> "RecipeRecord":
        return cls(name=obj.get("name", STRING), source=obj.get("source", STRING), hash=obj.get("hash", STRING),
                   num_classes=obj.get("num_classes", COUNT))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TeacherRecord:
    checkpoint: str  # the path it was read from (the identity holds its weights hash)
    weights_hash: str

    @classmethod
    def read(cls, obj: JsonObject) -> "TeacherRecord":
        return cls(checkpoint=obj.get("checkpoint", STRING), weights_hash=obj.get("weights_hash", STRING))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ComputeRecord:
    """What the teacher's forward ran in. Stores made before --precision have none: fp32, contiguous."""

    precision: str
    channels_last: bool
    device: str

    @classmethod
    def read(cls, obj: JsonObject) -> "ComputeRecord":
        return cls(precision=obj.get("precision", STRING), channels_last=obj.get("channels_last", BOOL),
                   device=obj.get("device", STRING))

    def to_dict(self) -> dict:
        return asdict(self)


_ROW_RANGE = Expect(lambda v: SHAPE.test(v) and len(v) == 2 and v[0] <= v[1], "[start, stop] with start <= stop")


@dataclass(frozen=True)
class ShardRecord:
    """One committed shard: its rows [start, stop) and the xxh3_64 of each array's stored bytes there."""

    index: int
    rows: tuple[int, int]
    xxh3_64: Mapping[str, str]

    def __post_init__(self) -> None:
        object.__setattr__(self, "rows", tuple(self.rows))
        object.__setattr__(self, "xxh3_64", FrozenMapping(self.xxh3_64))

    @classmethod
    def read(cls, obj: JsonObject) -> "ShardRecord":
        rows = obj.get("rows", _ROW_RANGE)
        return cls(index=obj.get("index", COUNT), rows=rows, xxh3_64=obj.object("xxh3_64").values_of(STRING))

    def to_dict(self) -> dict:
        return {"index": self.index, "rows": list(self.rows), "xxh3_64": self.xxh3_64.to_dict()}


@dataclass(frozen=True)
class Timing:
    seconds: float  # the extraction's wall time
    teacher_seconds: float  # of which in the teacher's forward

    @classmethod
    def read(cls, obj: JsonObject) -> "Timing":
        return cls(seconds=obj.get("seconds", SECONDS), teacher_seconds=obj.get("teacher_seconds", SECONDS))

    def to_dict(self) -> dict:
        return asdict(self)


class OptionsRecord(FrozenMapping):
    """The extraction's options as given (``ExtractOptions``; their fields grew with releases), read-only."""

    __slots__ = ()

    @classmethod
    def read(cls, obj: JsonObject) -> "OptionsRecord":
        if "batch_size" in obj.value:
            obj.get("batch_size", POSITIVE)
        return cls(obj.value)

    @property
    def batch_size(self) -> int | None:
        """The teacher's batch size: a resume keeps it, so every shard is computed alike."""
        return self.get("batch_size")


@dataclass(frozen=True)
class Manifest:
    """A store's manifest. Optional parts are None where the key is absent (written as absent)."""

    identity: Identity
    layout: Layout
    boundaries: tuple[str, ...]
    view_param_names: tuple[str, ...]
    recipe: RecipeRecord
    teacher: TeacherRecord
    options: OptionsRecord
    versions: Mapping[str, str]
    created: str
    arrays: Mapping[str, ArrayRecord] = field(default_factory=FrozenMapping)  # none yet while the store is created
    complete: bool = False
    compute: ComputeRecord | None = None
    teacher_modules: Mapping[str, Mapping[str, TensorRecord]] | None = None  # part ("stem", "head") -> key -> tensor
    completed: str | None = None
    timing: Timing | None = None
    shards: tuple[ShardRecord, ...] | None = None  # written when the store completes
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        # Plain dicts and lists given to the constructor or to replace() become read-only.
        freeze = {"identity": Identity, "options": OptionsRecord, "versions": FrozenMapping, "arrays": FrozenMapping,
                  "boundaries": tuple, "view_param_names": tuple}
        for name, kind in freeze.items():
            if not isinstance(getattr(self, name), kind):
                object.__setattr__(self, name, kind(getattr(self, name)))
        if self.teacher_modules is not None:
            parts = {part: FrozenMapping(tensors) for part, tensors in self.teacher_modules.items()}
            object.__setattr__(self, "teacher_modules", FrozenMapping(parts))
        if self.shards is not None:
            object.__setattr__(self, "shards", tuple(self.shards))

    @property
    def precision(self) -> str:
        """The teacher's compute precision (fp32 for stores made before --precision)."""
        return self.identity.precision

    @classmethod
    def from_dict(cls, data: Any, where: str | None = None) -> "Manifest":
        """The manifest of the JSON object ``data`` (of the store at ``where``), every key checked;
        refuses with a ``ManifestError`` (or, for another format version, a ``StoreFormatError``)."""
        root = JsonObject(data, "", where)
        root.get("format", Expect(lambda v: v == FORMAT, repr(FORMAT)))
        version = data.get("format_version")
        if type(version) is not int or version not in READ_VERSIONS:  # true == 1 in Python, but is no version
            store = f"Store {where!r}" if where else "A litcache store manifest"
            raise StoreFormatError(
                f"{store} has format version {version!r}; this litcache reads versions "
                f"{', '.join(map(str, READ_VERSIONS))} only. "
                "Use the litcache release that wrote it, or extract the store again."
            )
        missing = [key for key in REQUIRED_KEYS if key not in data]
        if missing:
            raise ManifestError.at(where, f"lacks {', '.join(missing)}")
        layout = Layout.read(root.object("layout"))
        arrays = root.object("arrays").records(ArrayRecord.read)
        for name, array in arrays.items():
            if array.shape[:1] != (layout.rows,):
                root.object("arrays").object(name).wrong("shape", f"[{layout.rows}, ...] (layout.rows rows)")
        boundaries = root.get("boundaries", STRINGS)
        for name in boundaries if arrays else ():  # a store being created has no arrays yet
            if name not in arrays:
                root.wrong("boundaries", f"names of arrays (arrays has no {name!r})")
        modules = None
        if "teacher_modules" in data:
            modules = root.object("teacher_modules").records(
                lambda part: FrozenMapping(part.records(TensorRecord.read)))
        shards = None
        if "shards" in data:
            shards = tuple(ShardRecord.read(item) for item in root.items("shards"))
            if [s.index for s in shards] != list(range(len(shards))):
                root.wrong("shards", "one entry per shard, in index order")
        complete = root.get("complete", BOOL)
        if complete and (shards is None or len(shards) != layout.num_shards):
            root.wrong("shards", f"the {layout.num_shards} shards of a complete store")
        return cls(
            identity=Identity.read(root.object("identity")), layout=layout, boundaries=boundaries,
            view_param_names=root.get("view_param_names", STRINGS), recipe=RecipeRecord.read(root.object("recipe")),
            teacher=TeacherRecord.read(root.object("teacher")), options=OptionsRecord.read(root.object("options")),
            versions=root.object("versions").values_of(STRING), created=root.get("created", STRING), arrays=arrays,
            complete=complete, format_version=version,
            compute=ComputeRecord.read(root.object("compute")) if "compute" in data else None,
            teacher_modules=modules,
            completed=root.get("completed", STRING) if "completed" in data else None,
            timing=Timing.read(root.object("timing")) if "timing" in data else None,
            shards=shards,
        )

    def to_dict(self) -> dict:
        """The JSON object written into zarr.json (keys in the order litcache has always written them)."""
        out = {"format": self.format, "format_version": self.format_version, "complete": self.complete,
               "identity": self.identity.to_dict(), "layout": self.layout.to_dict(),
               "boundaries": list(self.boundaries),
               "view_param_names": list(self.view_param_names), "recipe": self.recipe.to_dict(),
               "teacher": self.teacher.to_dict(), "options": self.options.to_dict()}
        if self.compute is not None:
            out["compute"] = self.compute.to_dict()
        out.update(versions=self.versions.to_dict(), created=self.created, arrays=self.arrays.to_dict())
        if self.teacher_modules is not None:
            out["teacher_modules"] = self.teacher_modules.to_dict()
        if self.completed is not None:
            out["completed"] = self.completed
        if self.timing is not None:
            out["timing"] = self.timing.to_dict()
        if self.shards is not None:
            out["shards"] = [shard.to_dict() for shard in self.shards]
        return out


#: What a ledger folder holds: one entry per committed shard (and temporary files of killed writers).
_LEDGER_ENTRY = re.compile(r"shard-\d{6}\.json")


def _is_litcache_root(loc: StoreLocation, manifest_says_so: bool) -> bool:
    """Whether ``loc`` holds litcache's files only, with its ledger (or a manifest naming litcache's
    format). ``--overwrite`` deletes what passes, so a single name litcache does not make, at the root
    or in the ledger, fails it."""
    if any(name not in ROOT_NAMES and temp_writer_pid(name) is None for name in loc.listdir()):
        return False
    ledger = loc.listdir(LEDGER_DIR)
    if any(not _LEDGER_ENTRY.fullmatch(name) and temp_writer_pid(name) is None for name in ledger):
        return False
    return manifest_says_so or loc.is_dir(LEDGER_DIR)


def foreign_names(location: str | Path | StoreLocation) -> list[str]:
    """What a store directory holds that litcache does not make: names at its root (a user's
    ``NOTES.txt``, a training run's folder) and in its ledger. ``--overwrite`` refuses a store with any."""
    loc = StoreLocation(location)
    names = [name for name in loc.listdir() if name not in ROOT_NAMES and temp_writer_pid(name) is None]
    names += [f"{LEDGER_DIR}/{name}" for name in loc.listdir(LEDGER_DIR)
              if not _LEDGER_ENTRY.fullmatch(name) and temp_writer_pid(name) is None]
    return names


def enclosing_store(path: str | Path) -> Path | None:
    """The litcache store that a local ``path`` is or lies inside (its manifest names litcache's
    format, or it holds litcache's names alone with a ledger), or None; always None for a URL."""
    if is_url(path):
        return None
    here = Path(os.path.abspath(path))
    for candidate in (here, *here.parents):
        if not candidate.is_dir():
            continue
        try:
            meta = json.loads((candidate / "zarr.json").read_bytes())
            if meta.get("attributes", {}).get(MANIFEST_ATTR, {}).get("format") == FORMAT:
                return candidate
        except (OSError, ValueError, AttributeError):
            pass
        if (candidate / LEDGER_DIR).is_dir() and _is_litcache_root(StoreLocation(candidate), manifest_says_so=False):
            return candidate
    return None


def _refuse_if_damaged(loc: StoreLocation, problem: str, manifest_says_so: bool = False) -> None:
    if _is_litcache_root(loc, manifest_says_so):
        raise DamagedStoreError(damaged_message(str(loc), problem))


def read_manifest(path: str | Path | StoreLocation) -> Manifest:
    """The manifest of the store at ``path``; refuses non-stores, damaged stores and unknown format versions."""
    loc = StoreLocation(path)
    path = loc.path
    if not loc.exists():
        raise StoreNotFoundError(f"Expected a litcache store at {str(path)!r}, but nothing is there. Create one with "
                                 "`litcache extract`.")
    if not loc.is_dir():
        raise NotAStoreError(f"Expected a litcache store at {str(path)!r}, found a file with no Zarr group in it.")
    if not loc.is_file("zarr.json"):
        _refuse_if_damaged(loc, "is missing")
        raise NotAStoreError(f"Expected a litcache store at {str(path)!r}, found a directory with no Zarr group in it.")
    try:
        meta_json = json.loads(loc.read_bytes("zarr.json").decode())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        _refuse_if_damaged(loc, f"does not parse ({exc})")
        raise NotAStoreError(f"Expected {loc / 'zarr.json'!r} to be Zarr group metadata, but it does not "
                             f"parse: {exc}.") from None
    attrs = meta_json.get("attributes") if isinstance(meta_json, dict) else None
    manifest = attrs.get(MANIFEST_ATTR) if isinstance(attrs, dict) else None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        _refuse_if_damaged(loc, "holds no litcache manifest")
        raise NotAStoreError(f"Expected a litcache store at {str(path)!r}, found a Zarr group without a "
                             "litcache manifest.")
    try:
        return Manifest.from_dict(manifest, where=str(loc))
    except ManifestError as exc:  # (a subclass of StoreFormatError: caught before the clause below)
        if _is_litcache_root(loc, manifest_says_so=True):
            raise
        raise NotAStoreError(f"The litcache manifest of {str(path)!r} {exc.problem}: the store is damaged, and its "
                             "directory also holds files litcache does not make, so --overwrite will not replace it. "
                             "Move what is yours out of it, or delete it yourself.") from None
    except StoreFormatError:
        # Another format version: --overwrite may replace it, so only when the folder holds litcache's files alone.
        if _is_litcache_root(loc, manifest_says_so=True):
            raise
        raise NotAStoreError(f"Expected a litcache store at {str(path)!r}: its zarr.json names another litcache format "
                             "version, and the directory also holds files litcache does not make, so --overwrite will "
                             "not replace it. Move what is yours out of it, or delete it yourself.") from None


def write_manifest(location: str | Path | StoreLocation, manifest: Manifest, new: bool = False) -> None:
    """Write the manifest into the root group's zarr.json whole and durably (``StoreLocation.write_bytes``);
    ``new``: make that zarr.json (an empty Zarr v3 group), else keep the rest of the one there."""
    loc = StoreLocation(location)
    meta = ({"attributes": {}, "zarr_format": 3, "node_type": "group"} if new
            else json.loads(loc.read_bytes("zarr.json")))
    meta.setdefault("attributes", {})[MANIFEST_ATTR] = manifest.to_dict()
    loc.write_bytes("zarr.json", json.dumps(meta, indent=2).encode())
