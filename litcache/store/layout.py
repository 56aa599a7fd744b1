"""The names and orders a store is laid out by: which row holds which (sample, view), the names
litcache makes at a store's root, and how rows of tokens are padded. Everything here is part of the
on-disk format (README, "The store format"): change it only with a new format version.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["RowLayout", "ROW_ORDER", "STORE_FOLDERS", "LOCK_FILE", "IGNORE_INDEX", "token_mask"]

#: The row order as every manifest records it (``layout.row_order``), word for word.
ROW_ORDER = ("block-interleaved: rows [(b * views + v) * chunk_rows, +chunk_rows) hold view v of positions "
             "[b * chunk_rows, +chunk_rows); the last partial block stores its views one after another; "
             "source_index gives each row's sample")
#: The folders litcache makes at a store's root (its arrays, the teacher's modules, the ledger).
STORE_FOLDERS = frozenset({"ledger", "boundaries", "logits", "labels", "source_index", "view", "view_params", "teacher",
                           "lengths", "topk_values", "topk_indices"})
#: The store's writer lock, at its root (``litcache.store.lock``).
LOCK_FILE = ".lock"
#: Target of a padded position (torch's cross-entropy ignore_index).
IGNORE_INDEX = -100


def token_mask(lengths: torch.Tensor, tokens: int) -> torch.Tensor:
    """(N, tokens) bool: True at the first ``lengths[n]`` positions of row n (rows are right-padded)."""
    return torch.arange(tokens, device=lengths.device) < lengths.to(torch.long).unsqueeze(1)


@dataclass(frozen=True)
class RowLayout:
    """Where view v of the sample at position p lives: stripe-interleaved rows.

    Positions are cut into stripes of ``chunk_rows`` consecutive positions. The rows
    ``[(s * views + v) * chunk_rows, +chunk_rows)`` hold view v of stripe s, so every (stripe, view)
    pair is exactly one chunk and a reader that takes one view of a stripe decodes one chunk. The
    last, partial stripe (``samples % chunk_rows`` positions) stores its views one after another at
    the end. (Manifests call this order "block-interleaved": ``ROW_ORDER`` is written into every
    store and stays as it is.)
    """

    samples: int
    views: int
    chunk_rows: int

    @property
    def rows(self) -> int:
        return self.samples * self.views

    @property
    def stripes(self) -> int:
        return -(-self.samples // self.chunk_rows)

    @property
    def _full_rows(self) -> int:
        return (self.samples // self.chunk_rows) * self.views * self.chunk_rows

    def locate(self, row: int) -> tuple[int, int]:
        """(position, view) of a row."""
        if row < self._full_rows:
            segment, offset = divmod(row, self.chunk_rows)
            stripe, view = divmod(segment, self.views)
            return stripe * self.chunk_rows + offset, view
        view, offset = divmod(row - self._full_rows, self.samples % self.chunk_rows)
        return (self.samples // self.chunk_rows) * self.chunk_rows + offset, view

    def stripe_rows(self, stripe: int, view: int) -> range:
        """The rows of view ``view`` of stripe ``stripe``, in position order."""
        if (stripe + 1) * self.chunk_rows <= self.samples:
            start = (stripe * self.views + view) * self.chunk_rows
            return range(start, start + self.chunk_rows)
        tail = self.samples % self.chunk_rows
        start = self._full_rows + view * tail
        return range(start, start + tail)
