"""Where a store lives: a local directory or an fsspec URL (``s3://``, ``gs://``, ``memory://``).

Local stores keep their durability guarantees (atomic, fsynced ledger writes; an ``O_EXCL``
lock; fsynced shard files; a free-disk check). A local write goes through a temporary file named
``.{name}.{pid}.tmp`` beside its target (``temp_name``); one left behind by a killed writer is
debris that ``litcache.store.debris`` finds by that name. URL stores go through fsspec with the storage
options in ``LITCACHE_STORAGE_OPTIONS`` (a JSON object, passed to the filesystem and to zarr).
One object PUT is atomic on object stores, so a ledger entry is either whole or absent there too.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Callable, Sequence

from ..errors import OptionError
from ..runtime.files import write_atomic

__all__ = ["StoreLocation", "is_url", "storage_options", "access_error"]

STORAGE_OPTIONS_ENV = "LITCACHE_STORAGE_OPTIONS"


def is_url(path) -> bool:
    return isinstance(path, str) and "://" in path


def access_error(exc: BaseException) -> OptionError | None:
    """The error to report for a remote filesystem that refused us for want of credentials (botocore's
    NoCredentialsError, google-auth's DefaultCredentialsError), or None for any other exception:
    one line instead of the cloud SDK's long traceback."""
    name = type(exc).__name__
    if "Credential" not in name:
        return None
    first = (str(exc).strip().splitlines() or [""])[0]
    return OptionError(f"Expected credentials for the remote store, but its filesystem found none: {name}: {first}. "
                       "Give them the filesystem's own way (for s3://: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
                       f"~/.aws), or as \"key\" and \"secret\" in {STORAGE_OPTIONS_ENV}.")


def storage_options() -> dict:
    """fsspec/zarr storage options for URL stores, from ``LITCACHE_STORAGE_OPTIONS``."""
    raw = os.environ.get(STORAGE_OPTIONS_ENV, "").strip()
    if not raw:
        return {}
    try:
        options = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise OptionError(f"Expected {STORAGE_OPTIONS_ENV} to be a JSON object, but it does "
                          f"not parse: {exc}.") from None
    if not isinstance(options, dict):
        raise OptionError(f"Expected {STORAGE_OPTIONS_ENV} to be a JSON object, got {type(options).__name__} instead.")
    return options


class StoreLocation:
    """A store root; every method takes a key relative to it ("" is the root, "/" separates parts)."""

    def __init__(self, path: "str | Path | StoreLocation") -> None:
        if isinstance(path, StoreLocation):  # share the resolved filesystem rather than resolve again
            self.__dict__.update(path.__dict__)
            return
        self.remote = is_url(path)
        if self.remote:
            from fsspec.core import url_to_fs

            self.url = path.rstrip("/")
            self.options = storage_options()
            try:
                self.fs, root = url_to_fs(self.url, **self.options)
            except (ValueError, ImportError) as exc:  # an unknown protocol, or its package is not installed
                protocol = self.url.split("://", 1)[0]
                raise OptionError(f"Expected a local path or a URL whose protocol fsspec knows (s3://, gs://, "
                                  f"memory://, ...), got {self.url!r}: {str(exc).splitlines()[0]}. Check the URL, or "
                                  f"install the package of the {protocol!r} filesystem.") from None
            self.root = root.rstrip("/")
            self.path: str | Path = self.url
        else:
            self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    def __truediv__(self, key: str) -> str:
        """The full path or URL of ``key`` (for messages)."""
        return f"{self.url}/{key}" if self.remote else str(self.path / key)

    def _full(self, key: str) -> str:
        return f"{self.root}/{key}" if key else self.root

    def _local(self, key: str) -> Path:
        return self.path / key if key else self.path

    def _fresh(self) -> None:
        # zarr writes through its own (async) filesystem instance, so listings cached by ours
        # (s3fs, gcsfs) can be stale: drop them before every query.
        self.fs.invalidate_cache()

    # -- queries ---------------------------------------------------------------------------
    def exists(self, key: str = "") -> bool:
        if self.remote:
            self._fresh()
            return self.fs.exists(self._full(key))
        return self._local(key).exists()

    def is_dir(self, key: str = "") -> bool:
        if self.remote:
            self._fresh()
            return self.fs.isdir(self._full(key))
        return self._local(key).is_dir()

    def is_file(self, key: str) -> bool:
        if self.remote:
            self._fresh()
            return self.fs.isfile(self._full(key))
        return self._local(key).is_file()

    def listdir(self, key: str = "") -> list[str]:
        """Names directly under ``key`` (empty when it is not a directory)."""
        if self.remote:
            self._fresh()
            if not self.fs.isdir(self._full(key)):
                return []
            return sorted(entry.rstrip("/").rsplit("/", 1)[-1] for entry in self.fs.ls(self._full(key), detail=False))
        directory = self._local(key)
        return sorted(child.name for child in directory.iterdir()) if directory.is_dir() else []

    def read_bytes(self, key: str) -> bytes:
        if self.remote:
            return self.fs.cat_file(self._full(key))
        return self._local(key).read_bytes()

    def read_range(self, key: str, start: int, stop: int | None) -> bytes:
        """Bytes ``start:stop`` of file ``key``; a negative ``start`` counts from the end."""
        if self.remote:
            if start < 0:  # not every object store takes a suffix range: ask for the size
                start = max(0, self.fs.size(self._full(key)) + start)
            return self.fs.cat_file(self._full(key), start=start, end=stop)
        with open(self._local(key), "rb") as f:
            f.seek(start, os.SEEK_END if start < 0 else os.SEEK_SET)
            return f.read(-1 if stop is None else stop - f.tell())

    def size(self, key: str) -> int | None:
        """Bytes of file ``key``; None when there is no such file."""
        try:
            if self.remote:
                self._fresh()
                return int(self.fs.size(self._full(key)))
            return self._local(key).stat().st_size
        except (FileNotFoundError, NotADirectoryError):
            return None

    def tree_size(self, key: str) -> int:
        """Bytes stored under ``key`` (leftover ``.partial`` and ``.tmp`` files of killed writers excluded)."""
        if self.remote:
            self._fresh()
            sizes = self.fs.du(self._full(key), total=False) if self.fs.exists(self._full(key)) else {}
            return sum(size for name, size in sizes.items() if not name.endswith((".partial", ".tmp")))
        directory = self._local(key)
        return sum(f.stat().st_size for f in directory.rglob("*")
                   if f.is_file() and not f.name.endswith((".partial", ".tmp")))

    def free_bytes(self) -> int | None:
        """Free disk space where the store would go; None when unknown (object stores)."""
        if self.remote:
            return None
        probe = self.path
        while not probe.exists():
            probe = probe.parent
        return shutil.disk_usage(probe).free

    # -- changes ---------------------------------------------------------------------------
    def makedirs(self, key: str = "") -> None:
        if self.remote:
            return  # object stores have no directories; keys imply them
        self._local(key).mkdir(parents=True, exist_ok=True)

    def write_bytes(self, key: str, data: "bytes | Sequence[bytes | memoryview]", *, sync_folder: bool = True) -> None:
        """Write ``key`` (bytes, or parts one after another) whole or not at all: tmp + fsync + rename
        locally, one PUT remotely. ``sync_folder`` False skips the fsync of the folder that makes the
        rename itself survive a power cut: for files whose loss a later check finds (shard files, whose
        sizes a resume checks against the ledger)."""
        if self.remote:
            self.fs.pipe_file(self._full(key), data if isinstance(data, bytes) else b"".join(data))
            return
        write_atomic(self._local(key), data, sync_folder=sync_folder)

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Create ``key`` only if it does not exist; False if it does.

        Atomic locally (O_EXCL). On object stores it is check-then-put: best effort, since two
        writers starting at the same moment can both succeed where the store has no conditional writes.
        """
        if self.remote:
            if self.fs.exists(self._full(key)):
                return False
            self.fs.pipe_file(self._full(key), data)
            return True
        try:
            fd = os.open(self._local(key), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        except BaseException:
            self._local(key).unlink(missing_ok=True)  # an empty lock would read as held forever
            raise
        return True

    def delete_if(self, key: str, condition: Callable[[bytes], bool]) -> bool:
        """Delete file ``key`` if ``condition(its bytes)`` holds; True if this call deleted it.

        Locally, callers are serialised by ``flock`` on the file itself, and the file is deleted
        only if ``key`` still names the file that was judged: of two callers that judge the same
        file, one deletes it and the other sees that ``key`` now names another file (or none), so
        it can never delete a file created after the judgement. On object stores it is check, then
        delete: best effort (there is no lock to hold across the two).
        """
        if self.remote:
            try:
                data = self.read_bytes(key)
            except FileNotFoundError:
                return False
            if not condition(data):
                return False
            self.delete(key)
            return True
        path = self._local(key)
        try:
            try:
                fd = os.open(path, os.O_RDWR)  # NFS emulates flock with POSIX locks, which need write access
            except PermissionError:  # another user's file: a local flock needs reading only
                fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        with os.fdopen(fd, "rb") as f:  # closing it releases the flock
            fcntl.flock(f, fcntl.LOCK_EX)
            if not condition(f.read()):
                return False
            try:
                if not os.path.samestat(os.fstat(f.fileno()), os.stat(path)):
                    return False  # another caller deleted it first; ``key`` is a newer file
            except FileNotFoundError:
                return False
            path.unlink()
            return True

    def delete(self, key: str) -> None:
        """Remove file ``key`` if present."""
        if self.remote:
            try:
                self.fs.rm_file(self._full(key))
            except FileNotFoundError:
                pass
            return
        self._local(key).unlink(missing_ok=True)

    def clear(self, keep: str) -> None:
        """Create the root if needed and empty it, except the entry named ``keep``."""
        self.makedirs()
        for name in self.listdir():
            if name == keep:
                continue
            if self.remote:
                self.fs.rm(self._full(name), recursive=True)
                continue
            child = self.path / name
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    def fsync(self, key: str) -> None:
        """Make a written file durable (local only: an object PUT is durable once it returns)."""
        if self.remote:
            return
        path = self._local(key)
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    # -- zarr ------------------------------------------------------------------------------
    def open_group(self, mode: str, **kwargs):
        import zarr

        if self.remote:
            return zarr.open_group(self.url, mode=mode, storage_options=self.options or None, **kwargs)
        return zarr.open_group(str(self.path), mode=mode, **kwargs)
