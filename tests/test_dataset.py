"""Reading a store for training: the row layout, the Dataset and the chunk-aware sampler."""

from __future__ import annotations

import numpy as np
import torch
from conftest import check_row_layout
from hypothesis import given, settings
from hypothesis import strategies as st

from litcache import ChunkShuffleSampler, MemoryDataset, StoreDataset, open_store
from litcache.extraction.teacher import load_teacher
from litcache.sections import cut_sections
from litcache.store.layout import RowLayout
from litcache.training.dataset import make_loader
from litcache.views import view_generator


@settings(max_examples=60, deadline=None)
@given(samples=st.integers(1, 200), views=st.integers(1, 5), block=st.integers(1, 64))
def test_row_layout_is_a_bijection_and_blocks_are_chunks(samples, views, block):
    layout = RowLayout(samples, views, block)
    seen = {layout.locate(r) for r in range(layout.rows)}
    assert seen == {(p, v) for p in range(samples) for v in range(views)}
    for b in range(layout.stripes):
        for v in range(views):
            rows = layout.stripe_rows(b, v)
            assert [layout.locate(r) for r in rows] == [(p, v) for p in range(b * block, min((b + 1) * block, samples))]
            if len(rows) == block:  # a full block is exactly one chunk of the store
                assert rows.start % block == 0


@settings(max_examples=30, deadline=None)
@given(samples=st.integers(1, 120), views=st.integers(1, 4), block=st.integers(1, 32), batch=st.integers(1, 50),
       buffer=st.integers(1, 5), workers=st.integers(0, 3), epoch=st.integers(0, 3))
def test_sampler_draws_each_sample_once_with_one_view_per_block(samples, views, block, batch, buffer, workers, epoch):
    layout = RowLayout(samples, views, block)
    sampler = ChunkShuffleSampler(layout, batch, buffer_chunks=buffer, num_workers=workers, seed=7)
    sampler.set_epoch(epoch)
    batches = list(sampler)
    assert all(1 <= len(b) <= batch for b in batches)
    located = [layout.locate(r) for b in batches for r in b]
    assert sorted(p for p, _ in located) == list(range(samples))
    view_of_block = {}
    for p, v in located:
        assert view_of_block.setdefault(p // block, v) == v
    again = ChunkShuffleSampler(layout, batch, buffer_chunks=buffer, num_workers=workers, seed=7)
    again.set_epoch(epoch)
    assert list(again) == batches


def test_sampler_epochs_differ_and_views_vary():
    layout = RowLayout(1000, 4, 10)
    sampler = ChunkShuffleSampler(layout, 32)
    epochs = []
    for epoch in range(4):
        sampler.set_epoch(epoch)
        epochs.append(list(sampler))
    assert epochs[0] != epochs[1]
    views = {layout.locate(r)[1] for b in epochs[0] for r in b}
    assert views == {0, 1, 2, 3}


def test_store_dataset_reads_exact_rows(tiny_store):
    store = open_store(tiny_store)
    fields = [*store.boundary_names, "logits", "labels", "source_index"]
    dataset = StoreDataset(store, fields)
    rows = [95, 3, 17, 17, 64, 0]
    batch = dataset.__getitems__(rows)
    for name in fields:
        direct = torch.from_numpy(np.asarray(store.array(name).oindex[rows]))
        assert torch.equal(batch[name], direct), name
    assert batch["boundaries/1"].dtype == torch.float32 and batch["labels"].dtype == torch.int64


def _teacher_outputs(recipe, ckpt, seed: int, sources: torch.Tensor, views: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the teacher gives for each (sample, view), made here from the split, the view seeds and
    the augmentation, without the store or litcache's extraction: the reference a read must match."""
    dataset, augment = recipe.load_split("train"), recipe.augmentation_for("train")
    inputs, params = [], []
    for index, view in zip(sources.tolist(), views.tolist()):
        x = dataset[index][0]
        params.append(augment.sample(view_generator(seed, index, view), x.shape))
        inputs.append(augment.apply(x, params[-1]))
    teacher, _, _ = load_teacher(recipe, ckpt)
    with torch.no_grad():
        outs, logits = cut_sections(teacher, recipe).eval().boundaries(torch.stack(inputs))
    return {"boundaries/2": outs[2], "logits": logits, "labels": torch.tensor([int(dataset[i][1]) for i in sources]),
            "view_params": torch.tensor(params, dtype=torch.float32)}


def test_loader_batches_hold_the_teachers_outputs_for_their_rows(tiny_recipe, teacher_ckpt, tiny_store):
    store = open_store(tiny_store)
    source_index, view = check_row_layout(store)  # row -> (sample, view), checked against the documented layout
    teacher = _teacher_outputs(tiny_recipe, teacher_ckpt, store.manifest.identity.seed, source_index, view)
    dataset = StoreDataset(store, [*teacher, "source_index", "view"])
    readers = [("store", dataset, 0), ("store", dataset, 2), ("memory", MemoryDataset.from_store(dataset), 0)]
    for name, reader, workers in readers:
        sampler = ChunkShuffleSampler.for_store(store, 10, num_workers=workers, seed=3)
        rows = [torch.as_tensor(list(b)) for b in sampler]
        batches = list(make_loader(reader, sampler, num_workers=workers))
        assert len(batches) == len(rows) == len(sampler), name
        for r, batch in zip(rows, batches):
            what = f"{name} reader, {workers} workers, rows {r.tolist()}"
            assert torch.equal(batch["source_index"], source_index[r]) and torch.equal(batch["view"], view[r]), what
            assert torch.equal(batch["labels"], teacher["labels"][r]), what
            assert torch.equal(batch["view_params"], teacher["view_params"][r]), what
            for field in ("boundaries/2", "logits"):  # float32 store: rounding of another batching only
                torch.testing.assert_close(batch[field], teacher[field][r], rtol=1e-4, atol=1e-5,
                                           msg=f"{field}, {what}")


def test_float16_and_bfloat16_stores_read_back_in_their_dtype(tiny_recipe, teacher_ckpt, tmp_path):
    from litcache import ExtractOptions, extract

    for dtype, torch_dtype in (("float16", torch.float16), ("bfloat16", torch.bfloat16)):
        out = tmp_path / f"{dtype}.zarr"
        extract(tiny_recipe, out, ExtractOptions(dtype=dtype, chunk_rows=8, batch_size=8),
                teacher_checkpoint=teacher_ckpt, progress=False, log=lambda m: None)
        full = StoreDataset(out, ["boundaries/1", "logits"]).__getitems__(range(8))
        assert full["boundaries/1"].dtype == torch_dtype and full["logits"].dtype == torch.float32
        assert torch.isfinite(full["boundaries/1"].float()).all()
