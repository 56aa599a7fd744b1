"""The store's lock: at most one extraction writes a store at a time.

``STORE/.lock`` holds the owner's host and pid; it is created only if absent (``O_EXCL``). A lock
whose process is gone (on this host) is stale and is taken over. Two processes that find the same
stale lock must not both win, so a taker removes it with ``StoreLocation.delete_if``: under
``flock`` on that very file, and only if the path still names it. The rename-it-away alternative
was rejected: the path can be re-created by the winner between reading and renaming, so the loser
would move the winner's fresh lock away and need to put it back, with a window of its own. The
file and its JSON are as before, and an owner holds no flock, so locks of older litcache releases
are read the same way. On object stores (no flock) takeover is check-then-delete: best effort.

Whoever holds the lock owns every file of the store, so taking it also sweeps the temporary
files that killed writers left behind (``litcache.store.debris``).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from ..errors import StoreLockedError
from ..runtime.files import process_alive
from .debris import Debris, remove_debris
from .layout import LOCK_FILE
from .location import StoreLocation
from .space import disk_full_error, is_disk_full

__all__ = ["store_lock", "check_unlocked", "exclusive_lock"]

#: Each failed attempt means another process created or removed the lock meanwhile: a handful is plenty.
_ATTEMPTS = 10


def _pid_alive(pid: int) -> bool:
    # A wrapper of its own: the seam test_store_lock.py slows down to widen the takeover race.
    return process_alive(pid)


def _owner(data: bytes) -> dict:
    """The lock's owner; {} for a lock being written right now (or damaged), which counts as held."""
    try:
        owner = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _is_stale(owner: dict) -> bool:
    """A lock of this host whose process is gone. Another host's pid cannot be checked from here."""
    pid = owner.get("pid")
    return owner.get("host") == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid)


def _read_owner(loc: StoreLocation, name: str = LOCK_FILE) -> dict | None:
    """The owner of lock ``name``, or None when there is no lock."""
    try:
        return _owner(loc.read_bytes(name))
    except FileNotFoundError:
        return None
    except OSError:  # there, but unreadable here: held by someone
        return {}


def _locked_error(path: StoreLocation, owner: dict) -> StoreLockedError:
    return StoreLockedError(
        f"Store {str(path)!r} is locked by process {owner.get('pid', '?')} on host {owner.get('host', '?')}: "
        "another extraction is writing it. Wait for it to finish; if that process is gone, delete "
        f"{str(path / LOCK_FILE)!r}."
    )


def _live_lock_owner(path: str | Path | StoreLocation) -> dict | None:
    """The owner of the store's lock, or None when there is no lock or its process (on this host) is gone."""
    owner = _read_owner(StoreLocation(path))
    return None if owner is None or _is_stale(owner) else owner


def check_unlocked(path: str | Path | StoreLocation) -> None:
    """Refuse a store that a live extraction holds."""
    loc = StoreLocation(path)
    owner = _live_lock_owner(loc)
    if owner is not None:
        raise _locked_error(loc, owner)


def _acquire(loc: StoreLocation, name: str, mine: bytes, refuse: Callable[[dict], Exception]) -> None:
    for _ in range(_ATTEMPTS):
        if loc.create_exclusive(name, mine):
            return
        if loc.delete_if(name, lambda data: _is_stale(_owner(data))):
            continue  # its owner died without cleaning up: ours to take
        owner = _read_owner(loc, name)
        if owner is not None and not _is_stale(owner):
            raise refuse(owner)
        # Gone, or stale and being taken over by another process right now: try again.
    raise refuse(_read_owner(loc, name) or {})


@contextmanager
def exclusive_lock(path: str | Path | StoreLocation, name: str, refuse: Callable[[dict], Exception]) -> Iterator[None]:
    """Hold lock file ``name`` in directory ``path`` (made if missing) as the store's lock is held:
    created only if absent, taken over when its process is gone, removed when done. ``refuse(owner)``
    is the error for a lock another live process holds. Training runs lock their outputs with it."""
    loc = StoreLocation(path)
    mine = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}).encode()
    loc.makedirs()
    _acquire(loc, name, mine, refuse)
    try:
        yield
    finally:
        loc.delete_if(name, lambda data: data == mine)  # never a lock that is not ours


@contextmanager
def store_lock(path: str | Path | StoreLocation) -> Iterator[Debris]:
    """Exclusive lock on a store directory; a lock whose process is gone (same host) is taken over.

    Yields the debris of killed writers it removed. Atomic on local disks; on object stores best
    effort (see ``StoreLocation.create_exclusive`` and ``delete_if``)."""
    loc = StoreLocation(path)
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(exclusive_lock(loc, LOCK_FILE, lambda owner: _locked_error(loc, owner)))
        except OSError as exc:
            if is_disk_full(exc):
                raise disk_full_error(loc, "creating the lock of store", "a few bytes",
                                      "Nothing was written; free some space and run the same command again.") from exc
            raise
        yield remove_debris(loc)
