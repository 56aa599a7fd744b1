"""Where a training command writes (train-teacher, train-blocks, sweep, assemble): checked before any
work starts, and held by one run at a time.

- Never inside a store: a store holds only what extraction writes, and ``extract --overwrite`` would
  delete a run kept inside it.
- Writable: a run must not train for an hour and then fail to save.
- Locked while the run writes: a second run into the same output is refused, as a second extraction
  into a store is, instead of both reporting success while one overwrites the other. A folder is
  locked by ``FOLDER/.lock``, a file by ``.NAME.lock`` beside it; a lock whose process is gone is
  taken over (``litcache.store.lock.exclusive_lock``).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import OptionError, OutputLockedError
from ..runtime.files import unwritable_reason
from ..store.lock import exclusive_lock
from ..store.manifest import enclosing_store

__all__ = ["claim_output", "check_output"]


def check_output(path: str | Path, folder: bool) -> None:
    """Refuse an output inside a store, or one that cannot be written here."""
    store = enclosing_store(path)
    if store is not None:
        where = "is the store" if Path(os.path.abspath(path)) == store else "lies inside the store"
        raise OptionError(f"Expected --out outside any litcache store, got {str(path)!r}, which {where} "
                          f"{str(store)!r}: a store holds only what extraction writes, and `extract --overwrite` "
                          "would delete a run kept in it. Choose an --out outside the store.")
    reason = unwritable_reason(path, folder)
    if reason is not None:
        raise OptionError(f"Expected --out {str(path)!r} to be writable, but {reason}. Choose another --out, or make "
                          "it writable; nothing was done.")


@contextmanager
def claim_output(path: str | Path, folder: bool = True) -> Iterator[Path]:
    """Check ``path`` (``check_output``), then hold its lock for the block."""
    path = Path(path)
    check_output(path, folder)
    directory, name = (path, ".lock") if folder else (path.parent, f".{path.name}.lock")

    def refuse(owner: dict) -> OutputLockedError:
        return OutputLockedError(
            f"{str(path)!r} is being written by another litcache run (process {owner.get('pid', '?')} on host "
            f"{owner.get('host', '?')}): two runs into one output would overwrite each other. Wait for it to finish, "
            f"or choose another --out; if that process is gone, delete {str(directory / name)!r}.")

    made = _missing_folders(directory)
    try:
        with exclusive_lock(directory, name, refuse):
            yield path
    finally:
        for folder in made:  # a run refused before it wrote anything leaves nothing behind, not even a folder
            try:
                folder.rmdir()
            except OSError:  # not empty: the run wrote into it
                break


def _missing_folders(directory: Path) -> list[Path]:
    """The folders of ``directory`` (itself included) that do not exist yet, deepest first."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    return missing
