"""From a recipe's split to rows: (sample, view) pairs, their inputs, and a data fingerprint."""

from __future__ import annotations

import numpy as np
import torch
import xxhash
from torch.utils.data import Dataset, TensorDataset

from ..store.layout import RowLayout
from ..views import Augmentation, view_generator

__all__ = ["ViewRows", "batch_of", "data_fingerprint", "is_per_position", "FINGERPRINT_SAMPLES"]

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
        self.order = (np.random.default_rng([seed, 0x5EED]).permutation(self.samples) if shuffle
                      else np.arange(self.samples))
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

    def get_batch(self, rows, apply_views: bool = True
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Many rows at once, equal to stacking ``self[r]``: (inputs, labels, sample indices, view ids,
        view params). Inputs come from ``batch_of`` and views from the augmentation's ``apply_batch``
        where it exists, so extraction runs no per-sample tensor code; each view's parameters are
        still drawn from its own seed. ``apply_views`` False (an augmentation with ``apply_batch``
        only): the inputs as they are, for the caller to apply the views where the teacher runs."""
        located = [self.locate(int(r)) for r in rows]
        index = [i for i, _ in located]
        x, y = batch_of(self.dataset, index)
        if self.augment is None:
            params = torch.zeros((len(index), 0), dtype=torch.float32)
        else:
            params = torch.tensor([self.augment.sample(view_generator(self.seed, i, v), x.shape[1:])
                                   for i, v in located],
                                  dtype=torch.float32)
            if hasattr(self.augment, "apply_batch"):
                if apply_views:
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
        x = torch.stack([it[0] if isinstance(it[0], torch.Tensor) else torch.as_tensor(np.asarray(it[0]))
                         for it in items])
        labels = [it[1] for it in items]
        y = torch.stack(labels) if is_per_position(labels[0]) else torch.tensor([int(label) for label in labels])
    return x, torch.as_tensor(y).to(torch.int64)
