"""From a recipe's split to rows: (sample, view) pairs, their inputs, and a data fingerprint."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import xxhash
from torch.utils.data import Dataset, TensorDataset

from .errors import OptionError
from .views import Augmentation, view_generator

__all__ = ["RowLayout", "ViewRows", "batch_of", "worker_context", "data_fingerprint", "parse_device", "resolve_device",
           "FINGERPRINT_SAMPLES"]

#: How many evenly spaced samples the data fingerprint hashes (all of them in small splits).
FINGERPRINT_SAMPLES = 512


def is_per_position(label) -> bool:
    """Whether a sample's label is a target per position (a language model's (T,) next tokens) rather
    than one class. A one-element tensor is one class, as ``int()`` always read it."""
    return isinstance(label, torch.Tensor) and label.numel() > 1


def _sample_bytes(item) -> bytes:
    x, y = item[0], item[1]
    x = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if is_per_position(y):  # a language model's targets
        return x.detach().cpu().contiguous().numpy().tobytes() + y.detach().cpu().to(torch.int64).numpy().tobytes()
    return x.detach().cpu().contiguous().numpy().tobytes() + str(int(y)).encode()


def data_fingerprint(dataset: Dataset, samples: int) -> str:
    """xxh3 of the split's size and up to FINGERPRINT_SAMPLES evenly spaced samples of the first ``samples``.

    A fingerprint, not a full hash: cheap at any size, and it catches a different dataset,
    a different order or different preprocessing.
    """
    h = xxhash.xxh3_64()
    h.update(f"{len(dataset)}:{samples}".encode())
    picks = np.unique(np.linspace(0, samples - 1, num=min(samples, FINGERPRINT_SAMPLES)).astype(np.int64))
    for i in picks:
        h.update(_sample_bytes(dataset[int(i)]))
    return h.hexdigest()


@dataclass(frozen=True)
class RowLayout:
    """Where view v of the sample at position p lives: block-interleaved rows.

    Positions are cut into blocks of ``block`` (= the store's chunk rows). The rows
    ``[(b * views + v) * block, +block)`` hold view v of block b, so every (block, view) pair is
    exactly one chunk and a reader that takes one view of a block decodes one chunk. The last,
    partial block (``samples % block`` positions) stores its views one after another at the end.
    """

    samples: int
    views: int
    block: int

    @property
    def rows(self) -> int:
        return self.samples * self.views

    @property
    def blocks(self) -> int:
        return -(-self.samples // self.block)

    @property
    def _full_rows(self) -> int:
        return (self.samples // self.block) * self.views * self.block

    def locate(self, row: int) -> tuple[int, int]:
        """(position, view) of a row."""
        if row < self._full_rows:
            segment, offset = divmod(row, self.block)
            b, view = divmod(segment, self.views)
            return b * self.block + offset, view
        view, offset = divmod(row - self._full_rows, self.samples % self.block)
        return (self.samples // self.block) * self.block + offset, view

    def block_rows(self, b: int, view: int) -> range:
        """The rows of view ``view`` of block ``b``, in position order."""
        if (b + 1) * self.block <= self.samples:
            start = (b * self.views + view) * self.block
            return range(start, start + self.block)
        tail = self.samples % self.block
        start = self._full_rows + view * tail
        return range(start, start + tail)


class ViewRows(Dataset):
    """Row r of a store -> (view input, label, sample index, view id, view params).

    Rows follow ``RowLayout``. With ``shuffle`` the positions visit the samples in a permutation
    seeded by ``seed`` (the same for every view), so chunks mix classes even when the split is
    sorted by label. View v of sample i is made from a generator seeded by (seed, i, v): the same
    in every run and process.
    """

    def __init__(self, dataset: Dataset, layout: RowLayout, seed: int, augment: Augmentation | None,
                 shuffle: bool = True) -> None:
        self.dataset, self.layout, self.seed, self.augment, self.shuffle = dataset, layout, seed, augment, shuffle
        self.samples, self.views = layout.samples, layout.views
        self.order = np.random.default_rng([seed, 0x5EED]).permutation(self.samples) if shuffle else np.arange(self.samples)
        self.num_params = len(augment.param_names) if augment is not None else 0

    @classmethod
    def from_identity(cls, dataset: Dataset, identity: dict, augment: Augmentation | None) -> "ViewRows":
        """The rows of an existing store, from its manifest's identity."""
        layout = RowLayout(identity["samples"], identity["views"], identity["chunk_rows"])
        return cls(dataset, layout, identity["seed"], augment, identity["shuffle"])

    def __len__(self) -> int:
        return self.layout.rows

    def locate(self, row: int) -> tuple[int, int]:
        """(sample index in the split, view id) of a row."""
        position, view = self.layout.locate(row)
        return int(self.order[position]), view

    def get_batch(self, rows) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Many rows at once, equal to stacking ``self[r]``: (inputs, labels, sample indices, view ids,
        view params). Inputs come from ``batch_of`` and views from the augmentation's ``apply_batch``
        where it exists, so extraction runs no per-sample tensor code; each view's parameters are
        still drawn from its own seed."""
        located = [self.locate(int(r)) for r in rows]
        index = [i for i, _ in located]
        x, y = batch_of(self.dataset, index)
        if self.augment is None:
            params = torch.zeros((len(index), 0), dtype=torch.float32)
        else:
            params = torch.tensor([self.augment.sample(view_generator(self.seed, i, v), x.shape[1:]) for i, v in located],
                                  dtype=torch.float32)
            if hasattr(self.augment, "apply_batch"):
                x = self.augment.apply_batch(x, params)
            else:
                x = torch.stack([self.augment.apply(x[k], params[k].tolist()) for k in range(len(index))])
        return x, y, torch.tensor(index), torch.tensor([v for _, v in located]), params

    def __getitem__(self, row: int):
        return self.make_view(*self.locate(row))

    def make_view(self, index: int, view: int):
        """(view input, label, sample index, view id, view params) of view ``view`` of sample ``index``,
        from the generator seeded by (seed, index, view); views past the stored ones are just as defined."""
        x, y = self.dataset[index][:2]
        x = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
        if self.augment is not None:
            params = self.augment.sample(view_generator(self.seed, index, view), x.shape)
            x = self.augment.apply(x, params)
        else:
            params = ()
        y = y if is_per_position(y) else int(y)  # per-token targets stay a tensor
        return x, y, index, view, torch.tensor(params, dtype=torch.float32)


def batch_of(dataset: Dataset, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, int64 labels) of ``indices``: one ``dataset.get_batch`` call where the dataset has it,
    a TensorDataset's tensors indexed at once, else item by item."""
    if hasattr(dataset, "get_batch"):
        x, y = dataset.get_batch(indices)
    elif isinstance(dataset, TensorDataset):
        x, y = dataset.tensors[0][indices], dataset.tensors[1][indices]
    else:
        items = [dataset[i][:2] for i in indices]
        x = torch.stack([it[0] if isinstance(it[0], torch.Tensor) else torch.as_tensor(np.asarray(it[0])) for it in items])
        labels = [it[1] for it in items]
        y = torch.stack(labels) if is_per_position(labels[0]) else torch.tensor([int(label) for label in labels])
    return x, torch.as_tensor(y).to(torch.int64)


def worker_context(num_workers: int):
    """Start DataLoader workers by fork where the platform has it: recipe modules are loaded from
    files into this process only, so spawned workers could not unpickle a recipe's dataset."""
    import multiprocessing

    if num_workers > 0 and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return None


def parse_device(device: str) -> torch.device:
    """``--device`` as torch reads it (``cpu``, ``cuda``, ``cuda:1``, ``mps``, ...); a string torch
    does not read is an OptionError. ``auto`` is not parsed here (see ``resolve_device``)."""
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise OptionError(f"Expected --device auto or a torch device such as cpu, cuda, cuda:1 or mps, got {device!r} "
                          "instead.") from None


def _backend(kind: str):
    """The torch module that says whether devices of ``kind`` exist (None: torch has no such check)."""
    return torch.backends.mps if kind == "mps" else getattr(torch, kind, None)


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present; any other value must name a device that exists here: asking
    for one that does not is an error, never a silent fallback to the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    d = parse_device(device)
    if d.type == "cpu":
        return d
    backend = _backend(d.type)
    if d.type == "cuda" and not torch.cuda.is_available():
        raise OptionError(f"Expected a CUDA device for --device {device}, but torch sees none. CUDA is not available "
                          "here (a CPU-only torch build, or no GPU or driver): use --device cpu or auto.")
    if backend is None or not callable(getattr(backend, "is_available", None)) or not backend.is_available():
        raise OptionError(f"Expected --device {device} to be a device this machine has, but torch cannot run "
                          f"on {d.type!r} here. Use --device cpu or auto.")
    count = backend.device_count() if callable(getattr(backend, "device_count", None)) else 1
    if d.index is not None and d.index >= count:
        names = ", ".join(f"{d.type}:{i}" for i in range(count))
        raise OptionError(f"Expected --device {device} to be one of this machine's {count} {d.type} device(s) ({names}), "
                          f"got index {d.index} instead. Use one of those, or --device auto.")
    return d
