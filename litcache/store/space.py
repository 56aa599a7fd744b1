"""Disk space: byte counts for people, and the one error for a disk that fills up while a store is written."""

from __future__ import annotations

import errno

from ..errors import DiskFullError
from .location import StoreLocation

__all__ = ["human_bytes", "is_disk_full", "disk_full_error"]


def human_bytes(n: float) -> str:
    """Bytes in decimal units: 512 B, 50.1 MB."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


def is_disk_full(exc: BaseException) -> bool:
    """No space left, or the user's quota is spent: the same remedy."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full_error(location: StoreLocation, doing: str, needs: str, kept: str) -> DiskFullError:
    """``Disk full while DOING 'STORE': F free, and it needs N. KEPT`` (KEPT: what is safe, and what to do)."""
    free = StoreLocation(location).free_bytes()
    return DiskFullError(f"Disk full while {doing} {str(location)!r}: "
                         f"{'free space unknown' if free is None else human_bytes(free) + ' free'}, and it needs "
                         f"{needs}. {kept}")
