"""`litcache info` and the store half of `litcache verify`: describe a store, and prove it intact
(checksums, debris). Replaying rows through the teacher is stage 1's (``litcache.extraction.replay``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CorruptStoreError
from .arrays import Store, open_store, store_sizes, verify_checksums
from .debris import Debris, find_debris
from .space import human_bytes

__all__ = ["store_info", "format_store_info", "VerifyReport", "check_store", "require_intact"]

def store_info(path: str | Path) -> dict:
    """The manifest (a ``Manifest``: its ``to_dict()`` is the JSON in zarr.json) plus, per array, stored
    bytes, raw bytes and compression ratio."""
    store = open_store(path, require_complete=False)
    sizes = store_sizes(store)
    arrays = {}
    for name, meta in store.manifest.arrays.items():
        raw = meta.raw_bytes()
        arrays[name] = {**meta.to_dict(), "raw_bytes": raw, "stored_bytes": sizes[name],
                        "ratio": round(raw / sizes[name], 3) if sizes[name] else None}
    committed = len(store.committed())
    return {"path": str(store.path), "complete": store.complete, "committed_shards": committed,
            "manifest": store.manifest, "arrays": arrays,
            "raw_bytes": sum(a["raw_bytes"] for a in arrays.values()),
            "stored_bytes": sum(a["stored_bytes"] for a in arrays.values())}


@dataclass
class VerifyReport:
    path: str
    shards_checked: int = 0
    checksum_failures: list[str] = field(default_factory=list)
    replayed_rows: int = 0
    replay_failures: list[str] = field(default_factory=list)
    replay_max_error: dict[str, float] = field(default_factory=dict)
    #: Temporary files of killed writers: not part of the store, so not a failure. verify writes
    #: nothing (it runs beside readers, on read-only copies too); taking the lock removes them.
    debris: list[str] = field(default_factory=list)
    debris_bytes: int = 0

    @property
    def ok(self) -> bool:
        return not self.checksum_failures and not self.replay_failures

    @property
    def debris_note(self) -> str | None:
        """What the debris is and how to remove it; None when there is none."""
        if not self.debris:
            return None
        more = f" and {len(self.debris) - 1} more" if len(self.debris) > 1 else ""
        return (f"{Debris(tuple(self.debris), self.debris_bytes).describe()}, not part of the store "
                f"({self.debris[0]}{more}): delete them, or run the extract command again, which removes them")


def require_intact(store: Store) -> None:
    """Refuse a store whose stored data no longer matches its checksums."""
    problems = verify_checksums(store)
    if problems:
        raise CorruptStoreError(f"Store {str(store.path)!r} is corrupt: {problems[0]}"
                                + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
                                + ". Run the extract command that made it with --repair (it extracts the damaged "
                                "shards again), or restore it from a copy.")


def check_store(path: str | Path) -> VerifyReport:
    """Recompute every shard checksum and report debris (no teacher runs)."""
    store = open_store(path)
    report = VerifyReport(str(store.path), shards_checked=len(store.manifest.shards))
    report.checksum_failures = verify_checksums(store)
    debris = find_debris(store.location)
    report.debris, report.debris_bytes = list(debris.files), debris.bytes
    return report


def format_store_info(info: dict) -> str:
    """The text `litcache info` prints for a :func:`store_info` result."""
    m = info["manifest"]
    ident, layout = m.identity, m.layout
    state = ("complete" if info["complete"]
             else f"INCOMPLETE ({info['committed_shards']}/{layout.num_shards} shards; resume with --resume)")
    lines = [
        f"store        {info['path']}  (format {m.format} v{m.format_version}, {state})",
        f"recipe       {ident.recipe}  (hash {ident.recipe_hash}, {m.recipe.source})",
        f"teacher      {m.teacher.checkpoint}  (weights hash {ident.teacher_hash})",
        f"data         split {ident.split}, {ident.samples} samples x {ident.views} views = {layout.rows} rows "
        f"(fingerprint {ident.data_fingerprint}, seed {ident.seed})",
        f"transforms   {json.dumps(ident.transforms)}",
        f"values       {ident.dtype}, " + (f"rounded to {ident.keep_bits} mantissa bits (lossy)" if ident.keep_bits
                                          else "exact in that dtype"),
        f"computed     teacher forward in {ident.precision}"
        + (f", {'channels_last' if m.compute.channels_last else 'contiguous'} on {m.compute.device}"
           if m.compute else ""),
        f"layout       {layout.chunk_rows} rows/chunk, {layout.shard_rows} rows/shard, {layout.num_shards} "
        f"shards, {layout.row_order}",
        f"created      {m.created}   completed {m.completed or '-'}",
        "versions     " + ", ".join(f"{k} {v}" for k, v in m.versions.items()),
        "arrays:",
    ]
    for name, a in info["arrays"].items():
        ratio = f"{a['ratio']:.2f}x" if a["ratio"] else "-"
        lines.append(f"  {name:<16} {str(tuple(a['shape'])):<22} {a['dtype']:<9} {a['codec']:<5} "
                     f"{human_bytes(a['stored_bytes']):>10} of {human_bytes(a['raw_bytes']):>10}  {ratio}")
    total_ratio = info["raw_bytes"] / info["stored_bytes"] if info["stored_bytes"] else 0
    lines.append(f"total        {human_bytes(info['stored_bytes'])} stored, {human_bytes(info['raw_bytes'])} raw, "
                 f"{total_ratio:.2f}x; {info['raw_bytes'] / max(layout.rows, 1):.0f} raw bytes/row")
    return "\n".join(lines)
