"""Online LIT: the teacher runs on every batch, as the original LIT code trains.

The baseline a store is measured against. ``OnlineTeacherDataset`` has the interface of
``StoreDataset`` (rows -> a batch keyed by store array name), but it makes each row's view again
from the store's identity (``ViewRows.from_identity``: the same samples, views and seeds) and runs
the teacher's sections on the batch every time. The store supplies only its manifest (layout, view
seeds, teacher hash); its activation arrays are never read. So a cached and an online run see the
same rows in the same order, and differ only in where the teacher's boundaries come from (and in
their precision: online ones are the teacher's outputs in float32, not rounded to the store's
``--dtype``; the teacher computes in the run's ``--precision``).

With ``fresh_views`` the store's K views are not replayed: each epoch (``set_epoch``) every
sample gets a new view, as the original LIT code trains. Data epoch d's view of a sample (d = the
run's epoch plus its ``data_epoch_offset``, so a fine-tune continues after its LIT phase) is view
number ``K + d`` of the store's view seeds, so it is deterministic, differs from every stored view,
and differs from epoch to epoch. It does not depend on the training seed: runs of other seeds see
the same fresh views, as cached runs of other seeds read the same stored ones, and differ in their
initial weights and row orders.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import StoreMismatchError
from ..extraction.rows import ViewRows, data_fingerprint
from ..extraction.teacher import load_teacher
from ..extraction.teacher_outputs import teacher_fields
from ..recipe import Recipe
from ..runtime.precision import resolve_compute
from ..sections import cut_sections
from ..store.arrays import Store, open_store

__all__ = ["OnlineTeacherDataset"]

#: Fields a row's view gives without the teacher (with the store arrays' dtypes).
_VIEW_FIELDS = {"labels": torch.int64, "source_index": torch.int64, "view": torch.int32}


class OnlineTeacherDataset(Dataset):
    """Rows of ``store`` -> {field: tensor}, computed by running the teacher now.

    ``teacher_checkpoint`` must hold the weights the store was extracted from (same weights hash):
    otherwise an online run would not be the cached run's baseline. Boundaries and logits come back
    on ``device`` (where the teacher runs); labels and view fields on the CPU.
    """

    def __init__(self, recipe: Recipe, store: Store | str | Path, teacher_checkpoint: str | Path,
                 fields: Sequence[str], device: torch.device | str = "cpu", *, precision: str = "fp32",
                 fresh_views: bool = False) -> None:
        self.store = store if isinstance(store, Store) else open_store(store)
        arrays = self.store.manifest.arrays
        missing = [f for f in fields if f not in arrays]
        if missing:
            raise KeyError(f"Store {str(self.store.path)!r} has no arrays {missing}; it has {list(arrays)}.")
        identity = self.store.manifest.identity
        teacher, teacher_hash, path = load_teacher(recipe, teacher_checkpoint)
        if teacher_hash != identity.teacher_hash:
            raise StoreMismatchError(
                f"Online teacher {path!r} has weights hash {teacher_hash}, but store {str(self.store.path)!r} was "
                f"extracted from a teacher with weights hash {identity.teacher_hash} "
                f"({self.store.manifest.teacher.checkpoint!r}). An online baseline must run the store's teacher: give "
                "that checkpoint.")
        split = identity.split
        dataset = recipe.load_split(split)
        augment = recipe.augmentation_for(split)
        described = json.loads(json.dumps(augment.describe())) if augment is not None else None
        if described != identity.transforms:
            raise StoreMismatchError(f"The recipe's augmentation of split {split!r} is {described}, but store "
                                     f"{str(self.store.path)!r} recorded {identity.transforms}: the "
                                     "views would differ.")
        fingerprint = data_fingerprint(dataset, identity.samples)
        if fingerprint != identity.data_fingerprint:
            raise StoreMismatchError(f"Split {split!r} of recipe {recipe.name!r} has data fingerprint {fingerprint}, "
                                     f"but store {str(self.store.path)!r} recorded {identity.data_fingerprint}: the "
                                     "rows would differ.")
        if fresh_views and augment is None:
            raise StoreMismatchError(f"--fresh-views needs an augmentation, but split {split!r} of recipe "
                                     f"{recipe.name!r} has none.")
        self.rows = ViewRows.from_identity(dataset, identity, augment)
        self.device = torch.device(device)
        self.compute = resolve_compute(precision, self.device, teacher)
        self.teacher = self.compute.model(cut_sections(teacher, recipe)).eval()
        self.fields = list(fields)
        self.fresh_views, self.epoch = fresh_views, 0

    def set_epoch(self, epoch: int) -> None:
        """Which fresh views to draw (with ``fresh_views``; stored views ignore it)."""
        self.epoch = epoch

    def _row(self, row: int):
        if not self.fresh_views:
            return self.rows[row]
        index, _ = self.rows.locate(row)
        return self.rows.make_view(index, self.rows.views + self.epoch)

    def __len__(self) -> int:
        return self.store.rows

    def __getitems__(self, rows: Sequence[int]) -> dict[str, torch.Tensor]:
        items = [self._row(int(r)) for r in np.asarray(rows, dtype=np.int64)]
        x, y, index, view, params = zip(*items)
        labels = torch.stack(y) if isinstance(y[0], torch.Tensor) else torch.tensor(y)
        views = {"labels": labels, "source_index": torch.tensor(index), "view": torch.tensor(view)}
        batch: dict[str, torch.Tensor] = {}
        outputs: dict[str, torch.Tensor] = {}
        if any(f not in _VIEW_FIELDS and f != "view_params" for f in self.fields):
            with torch.inference_mode(), self.compute.autocast():
                outs, logits = self.teacher.boundaries(self.compute.input(torch.stack(x)))
                # The same fields as extraction keeps: top-k logits, lengths and zeroed padding of token rows.
                outputs = teacher_fields(outs, logits, labels.to(logits.device),
                                         self.store.manifest.identity.logit_topk)
        for name in self.fields:
            if name in outputs:
                # Outside inference mode: a training step saves these for its backward pass.
                value = outputs[name]
                batch[name] = (value.float() if value.is_floating_point() else value).clone()
            elif name in _VIEW_FIELDS:
                batch[name] = views[name].to(_VIEW_FIELDS[name])
            else:  # view_params
                batch[name] = torch.stack(params)
        return batch

    def __getitem__(self, row: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([row]).items()}
