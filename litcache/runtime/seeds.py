"""Seeds: one range for every command. numpy's generators refuse negative seeds, torch's take at most
64 bits, and an epoch's seed is ``seed * 100003 + epoch``: 0 .. 2^32 - 1 holds for all of them."""

from __future__ import annotations

from ..errors import OptionError

__all__ = ["SEED_MAX", "check_seed"]

SEED_MAX = 2**32 - 1


def check_seed(seed: int, option: str = "--seed") -> int:
    """``seed``, or an OptionError when it is not a whole number in 0 .. SEED_MAX."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise OptionError(f"Expected {option} to be a whole number from 0 to {SEED_MAX} (2^32 - 1), got {seed!r} "
                          "instead.")
    return seed
