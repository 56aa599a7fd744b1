"""From a recipe's split to rows: (sample, view) pairs, their inputs, and a data fingerprint."""

from __future__ import annotations

import numpy as np
import torch
import xxhash
from torch.utils.data import Dataset

from .views import Augmentation, view_generator

__all__ = ["ViewRows", "data_fingerprint", "resolve_device", "FINGERPRINT_SAMPLES"]

#: How many evenly spaced samples the data fingerprint hashes (all of them in small splits).
FINGERPRINT_SAMPLES = 512


def _sample_bytes(item) -> bytes:
    x, y = item[0], item[1]
    x = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
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

    Rows are view-major: view = r // samples, position = r % samples. With ``shuffle`` the
    positions visit the samples in a permutation seeded by ``seed`` (the same for every view),
    so that chunks of rows mix classes even when the split is sorted by label. View v of sample
    i is made from a generator seeded by (seed, i, v): the same in every run and process.
    """

    def __init__(self, dataset: Dataset, samples: int, views: int, seed: int, augment: Augmentation | None,
                 shuffle: bool = True) -> None:
        self.dataset, self.samples, self.views, self.seed, self.augment = dataset, samples, views, seed, augment
        self.shuffle = shuffle
        self.order = np.random.default_rng([seed, 0x5EED]).permutation(samples) if shuffle else np.arange(samples)
        self.num_params = len(augment.param_names) if augment is not None else 0

    @classmethod
    def from_identity(cls, dataset: Dataset, identity: dict, augment: Augmentation | None) -> "ViewRows":
        """The rows of an existing store, from its manifest's identity."""
        return cls(dataset, identity["samples"], identity["views"], identity["seed"], augment, identity["shuffle"])

    def __len__(self) -> int:
        return self.samples * self.views

    def locate(self, row: int) -> tuple[int, int]:
        """(sample index in the split, view id) of a row."""
        view, position = divmod(row, self.samples)
        return int(self.order[position]), view

    def __getitem__(self, row: int):
        index, view = self.locate(row)
        x, y = self.dataset[index][:2]
        x = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
        if self.augment is not None:
            params = self.augment.sample(view_generator(self.seed, index, view), x.shape)
            x = self.augment.apply(x, params)
        else:
            params = ()
        return x, int(y), index, view, torch.tensor(params, dtype=torch.float32)


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is an error, not a silent fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        from .errors import LitcacheError

        raise LitcacheError("Expected a CUDA device for --device cuda, but torch sees none. Use --device cpu or auto.")
    return torch.device(device)
