"""Files written whole or not at all, and the temporary files that make it so.

A local write goes through a temporary file named ``.{name}.{pid}.tmp`` beside its target
(``temp_name``), fsynced, then renamed over the target, and the directory is fsynced so the rename
itself survives a power cut. Stores (``litcache.store.location``) and checkpoints
(``litcache.runtime.checkpoint``) both write so; a temporary file left by a killed writer is debris
that ``litcache.store.debris`` finds by its name.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

__all__ = ["temp_name", "temp_writer_pid", "process_alive", "write_atomic", "unwritable_reason"]

_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>[0-9]+)\.tmp$")


def temp_name(name: str) -> str:
    """The temporary file a local write of ``name`` goes through (hidden, and named by its writer)."""
    return f".{name}.{os.getpid()}.tmp"


def temp_writer_pid(name: str) -> int | None:
    """The pid of the writer whose temporary file ``name`` is; None when it is no litcache temp file."""
    match = _TEMP_NAME.match(name)
    return int(match["pid"]) if match else None


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host (one we may not signal counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_atomic(path: Path, data: "bytes | Sequence[bytes | memoryview]", sync_folder: bool = True) -> None:
    """Write ``data`` (bytes, or parts written one after another) to ``path`` whole or not at all:
    tmp + fsync + rename, then (``sync_folder``) fsync the directory, so the rename survives a power cut."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(temp_name(path.name))
    try:
        with open(tmp, "wb") as f:
            for part in [data] if isinstance(data, (bytes, bytearray, memoryview)) else data:
                f.write(part)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not also keep the half-written file
        raise
    if not sync_folder:
        return
    directory = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def unwritable_reason(path: str | Path, folder: bool) -> str | None:
    """Why ``path`` (a ``folder`` to create or write into, else a file to create or replace atomically)
    cannot be written here, or None when it can. Asked before any work starts, so a run never learns it
    only when it saves. ``os.access`` also sees read-only mounts, for root too."""
    path = Path(os.path.abspath(path))
    if path.exists():
        if folder and not path.is_dir():
            return f"{str(path)!r} is a file, not a folder"
        if not folder and path.is_dir():
            return f"{str(path)!r} is a folder, not a file"
        if folder:
            return None if os.access(path, os.W_OK | os.X_OK) else f"folder {str(path)!r} is not writable here"
        path = path.parent  # a file is replaced by a rename in its folder: the folder must be writable
    else:
        path = path.parent if not folder else path
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{str(existing)!r} is a file, so nothing can be created under it"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"folder {str(existing)!r} is not writable here"
    return None
