"""Reading a store for training: a batched Dataset, a chunk-aware sampler, and an in-memory twin.

Random single-row reads from a compressed, chunked store are slow (every row decodes a whole
chunk). So the unit of reading is the chunk: the sampler visits whole chunks in shuffled order,
mixes the rows of a buffer of several chunks, and routes every batch of one buffer to the same
DataLoader worker, whose small chunk cache then decodes each chunk once per epoch.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import StoreMismatchError
from ..runtime.devices import worker_context
from ..store.arrays import Store, open_store
from ..store.encoding import from_storage
from ..store.layout import RowLayout
from ..store.shards import decoder_pool

__all__ = ["StoreDataset", "MemoryDataset", "ChunkShuffleSampler", "make_loader", "collate_rows"]


def collate_rows(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``__getitems__`` already returns a batch; DataLoader must not collate it again."""
    return batch


class StoreDataset(Dataset):
    """Rows of a complete store -> {field: tensor} with the store's logical dtypes.

    ``fields`` are array names (``boundaries/0``, ``logits``, ``labels``, ...); only they are read.
    Arrays are opened lazily in each process, so the dataset can be sent to DataLoader workers.
    """

    def __init__(self, store: Store | str | Path, fields: Sequence[str], cache_chunks: int = 8) -> None:
        self.store = store if isinstance(store, Store) else open_store(store)
        arrays = self.store.manifest.arrays
        missing = [f for f in fields if f not in arrays]
        if missing:
            raise StoreMismatchError(f"Store {str(self.store.path)!r} has no arrays {missing}; it has {list(arrays)}.")
        self.fields = list(fields)
        self.chunk_rows = self.store.manifest.layout.chunk_rows
        self.cache_chunks = cache_chunks
        self._pid: int | None = None
        self._cache: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return self.store.rows

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_cache"], state["_pid"] = OrderedDict(), None
        return state

    def _own_process(self) -> None:
        if self._pid != os.getpid():  # a forked worker must not share the parent's zarr handles
            self._pid, self._cache, self.store._group = os.getpid(), OrderedDict(), None

    def _remember(self, key: tuple[str, int], data: np.ndarray) -> None:
        self._cache[key] = data
        while len(self._cache) > self.cache_chunks * len(self.fields):
            self._cache.popitem(last=False)

    def _chunk(self, name: str, chunk: int) -> np.ndarray:
        key = (name, chunk)
        data = self._cache.get(key)
        if data is None:
            data = self.store.read_chunk(name, chunk)
            self._remember(key, data)
        else:
            self._cache.move_to_end(key)
        return data

    def _prefetch(self, chunks: list[int]) -> None:
        """Decode the chunks this batch needs and the cache lacks, all at once on the decoder pool."""
        missing = [(name, c) for name in self.fields for c in chunks if (name, c) not in self._cache]
        if len(missing) > 1:
            for key, data in zip(missing, decoder_pool().map(lambda k: self.store.read_chunk(*k), missing)):
                self._remember(key, data)

    def __getitems__(self, rows: Sequence[int]) -> dict[str, torch.Tensor]:
        rows = np.asarray(rows, dtype=np.int64)
        chunks, local = np.divmod(rows, self.chunk_rows)
        needed = [int(c) for c in np.unique(chunks)]
        self._own_process()
        self._prefetch(needed)
        batch = {}
        for name in self.fields:
            first = self._chunk(name, needed[0])
            out = np.empty((len(rows), *first.shape[1:]), dtype=first.dtype)
            for chunk in needed:
                mask = chunks == chunk
                out[mask] = self._chunk(name, chunk)[local[mask]]
            batch[name] = from_storage(out, self.store.manifest.arrays[name].dtype)
        return batch

    def __getitem__(self, row: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([row]).items()}


class MemoryDataset(Dataset):
    """The same rows held in memory as tensors: the baseline a store is measured against."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors
        self.rows = len(next(iter(tensors.values())))

    @classmethod
    def from_store(cls, dataset: StoreDataset) -> "MemoryDataset":
        return cls(dataset.__getitems__(range(len(dataset))))

    def __len__(self) -> int:
        return self.rows

    def __getitems__(self, rows: Sequence[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(np.asarray(rows, dtype=np.int64))
        return {k: v.index_select(0, index) for k, v in self.tensors.items()}


class ChunkShuffleSampler(Sampler[list[int]]):
    """Batches of row indices: one view per sample per epoch, read chunk by chunk.

    Each epoch, every stripe of samples (one chunk of rows per view, see ``RowLayout``) takes one
    view at random, so the K stored views act as K augmentations. Stripes are shuffled, grouped
    into buffers of ``buffer_chunks`` stripes, rows are shuffled within a buffer and cut into
    batches. Buffers are dealt to ``num_workers`` streams and the streams interleaved batch by
    batch, matching DataLoader's round-robin, so each worker reads only its own chunks.
    Deterministic for (seed, epoch).

    ``views`` = K uses only the first K stored views (default: all), so one store of many views
    serves runs that measure what fewer views give.
    """

    def __init__(self, layout: RowLayout, batch_size: int, *, buffer_chunks: int = 4,
                 num_workers: int = 0, seed: int = 0, drop_last: bool = False, views: int | None = None) -> None:
        if views is not None and not 1 <= views <= layout.views:
            raise ValueError(f"Expected views between 1 and the store's {layout.views}, got {views} instead.")
        self.layout, self.batch_size, self.buffer_chunks = layout, batch_size, max(1, buffer_chunks)
        self.streams, self.seed, self.drop_last = max(1, num_workers), seed, drop_last
        self.views = views or layout.views
        self.epoch = 0

    @classmethod
    def for_store(cls, store: Store, batch_size: int, **kwargs) -> "ChunkShuffleSampler":
        layout = store.manifest.layout
        return cls(RowLayout(layout.samples, layout.views, layout.chunk_rows), batch_size, **kwargs)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        stripes = rng.permutation(self.layout.stripes)
        stripe_views = rng.integers(0, self.views, size=len(stripes))
        streams: list[list[list[int]]] = [[] for _ in range(self.streams)]
        for b, first in enumerate(range(0, len(stripes), self.buffer_chunks)):
            rows = np.concatenate([np.asarray(self.layout.stripe_rows(int(k), int(v)))
                                   for k, v in zip(stripes[first : first + self.buffer_chunks],
                                                   stripe_views[first : first + self.buffer_chunks])])
            rng.shuffle(rows)
            stream = streams[b % self.streams]
            for i in range(0, len(rows), self.batch_size):
                stream.append(rows[i : i + self.batch_size].tolist())
        batches = [batch for group in _interleave(streams) for batch in group]
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())


def _interleave(streams: list[list[list[int]]]) -> Iterator[list[list[int]]]:
    longest = max((len(s) for s in streams), default=0)
    for i in range(longest):
        yield [s[i] for s in streams if i < len(s)]


def make_loader(dataset: Dataset, sampler: Sampler, *, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate_rows,
                      pin_memory=pin_memory, persistent_workers=num_workers > 0,
                      multiprocessing_context=worker_context(num_workers),
                      prefetch_factor=4 if num_workers > 0 else None)
