"""Debris: the temporary files of writers that were killed mid-write.

A local write goes through ``.{name}.{pid}.tmp`` beside its target and is renamed into place
(``StoreLocation.write_bytes``), so a writer killed mid-write leaves that file behind. The ledger
and the manifest name final keys only, so such a file is never part of the store; it only holds
disk space (a shard's worth each). Writers write only while holding the store's lock, so whoever
takes the lock may remove them (``store_lock`` does); ``litcache verify``, which holds no lock and
writes nothing, reports them. Only files named exactly so, in the folders litcache makes, are
touched, and never one whose process is still alive on this host (a dask worker of an extraction
whose lock was taken over, a checkpoint being written).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..runtime.files import process_alive, temp_writer_pid
from .layout import STORE_FOLDERS
from .location import StoreLocation
from .space import human_bytes

__all__ = ["Debris", "find_debris", "remove_debris"]


@dataclass(frozen=True)
class Debris:
    files: tuple[str, ...] = ()  # keys under the store root
    bytes: int = 0

    def __len__(self) -> int:
        return len(self.files)

    def describe(self) -> str:
        return (f"{len(self.files)} temporary file{'s' if len(self.files) != 1 else ''} ({human_bytes(self.bytes)}) "
                "of killed writers")

def find_debris(location: StoreLocation) -> Debris:
    """Every temporary file of a writer that is gone, at the store root and in the folders litcache makes."""
    loc = StoreLocation(location)
    if loc.remote or not loc.is_dir():
        return Debris()  # an object store is written one whole PUT per key: it has no temporary files
    files, size = [], 0
    for directory, folders, names in os.walk(loc.path):  # symlinked directories are not followed
        if directory == str(loc.path):
            folders[:] = [f for f in folders if f in STORE_FOLDERS]  # e.g. never a train-blocks --out inside it
        for name in sorted(names):
            path = os.path.join(directory, name)
            pid = temp_writer_pid(name)
            if pid is None or os.path.islink(path) or process_alive(pid):
                continue
            try:
                size += os.stat(path).st_size
            except FileNotFoundError:
                continue
            files.append(os.path.relpath(path, loc.path).replace(os.sep, "/"))
    return Debris(tuple(sorted(files)), size)


def remove_debris(location: StoreLocation) -> Debris:
    """Remove every temporary file under the store root (call it holding the store's lock);
    returns what was removed. A file that cannot be removed stays for next time."""
    loc = StoreLocation(location)
    found = find_debris(loc)
    removed, size = [], 0
    for key in found.files:
        path = loc.path / key
        try:
            nbytes = path.stat().st_size
            path.unlink()
        except OSError:
            continue
        removed.append(key)
        size += nbytes
    return Debris(tuple(removed), size)
