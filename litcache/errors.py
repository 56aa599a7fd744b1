"""Error types. Each subclasses the matching builtin so callers can catch either.

Messages follow one shape: what was expected, what was found, what to do next.
The CLI turns any LitcacheError into a single ``Error: ...`` line and exit code 1.
"""

from __future__ import annotations

__all__ = [
    "LitcacheError",
    "RecipeError",
    "SectionsMismatchError",
    "SplitMismatchError",
    "CheckpointError",
    "StoreNotFoundError",
    "NotAStoreError",
    "StoreFormatError",
    "IncompleteStoreError",
    "StoreMismatchError",
    "StoreLockedError",
    "OutputLockedError",
    "CorruptStoreError",
    "NonFiniteOutputError",
    "DiskSpaceError",
    "OptionError",
    "DivergedError",
    "NotAClassifierError",
    "DiskFullError",
    "ShardWriteError",
    "DamagedStoreError",
    "ManifestError",
    "damaged_message",
]


class LitcacheError(Exception):
    """Base class of every error litcache raises on purpose."""


class RecipeError(LitcacheError, ValueError):
    """A recipe does not load, or is not internally consistent."""


class SectionsMismatchError(LitcacheError, ValueError):
    """stem -> sections -> head does not reproduce the teacher's output."""


class CheckpointError(LitcacheError, ValueError):
    """A checkpoint is missing, unreadable, or does not fit the architecture."""


class StoreNotFoundError(LitcacheError, FileNotFoundError):
    """No store at the given path."""


class NotAStoreError(LitcacheError, ValueError):
    """A path exists but is not a litcache store."""


class StoreFormatError(LitcacheError, ValueError):
    """A store's format version is not one this litcache can read."""


class IncompleteStoreError(LitcacheError, RuntimeError):
    """A store's extraction has not finished."""


class StoreMismatchError(LitcacheError, ValueError):
    """A store was made from a different recipe, teacher, data or options."""


class StoreLockedError(LitcacheError, RuntimeError):
    """Another live process is extracting into the store."""


class OutputLockedError(LitcacheError, RuntimeError):
    """Another live process is writing the same training output (a run folder or checkpoint file)."""


class CorruptStoreError(LitcacheError, RuntimeError):
    """Stored data does not match its recorded checksums."""


class NonFiniteOutputError(LitcacheError, ArithmeticError):
    """The teacher produced NaN or Inf."""


class DiskSpaceError(LitcacheError, OSError):
    """Not enough free disk for the store."""


class OptionError(LitcacheError, ValueError):
    """An option is out of range or inconsistent with another."""


class DivergedError(LitcacheError, ArithmeticError):
    """Training stopped because its loss became NaN or Inf."""


class NotAClassifierError(LitcacheError, ValueError):
    """A command that needs class labels (cross-entropy, test accuracy) got a recipe of another task."""


class DiskFullError(DiskSpaceError):
    """The disk filled up while a store was being written; what was committed is kept."""


class ShardWriteError(LitcacheError, RuntimeError):
    """An extraction's shard writer failed; the shards committed before the failure are kept."""


class DamagedStoreError(StoreFormatError):
    """A litcache store whose manifest (zarr.json) is missing or damaged: readable by no one,
    but recognisably litcache's (its own files and layout), so --overwrite may replace it."""


def damaged_message(where: str | None, problem: str) -> str:
    """The error for the manifest of the store at ``where`` (None: a manifest read on its own)."""
    store = f"Store {where!r} is a litcache store whose manifest (zarr.json)" if where else "A litcache store manifest"
    return (f"{store} {problem}: the store is damaged and can be neither read nor resumed. Extract it again with "
            f"`litcache extract RECIPE --out {where or 'STORE'} --overwrite` and the same options.")


class ManifestError(DamagedStoreError):
    """A manifest of litcache's format with a key missing or of the wrong type; ``problem`` says which."""

    problem: str = ""

    @classmethod
    def at(cls, where: str | None, problem: str) -> "ManifestError":
        error = cls(damaged_message(where, problem))
        error.problem = problem  # an attribute, not an argument: the error pickles (dask workers raise it too)
        return error


#: The name of SectionsMismatchError before "split" came to mean only a dataset split.
SplitMismatchError = SectionsMismatchError
