"""Reading a store for training: the row layout, the Dataset and the chunk-aware sampler."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from litcache import ChunkShuffleSampler, MemoryDataset, StoreDataset, open_store
from litcache.data import RowLayout
from litcache.dataset import make_loader


@settings(max_examples=60, deadline=None)
@given(samples=st.integers(1, 200), views=st.integers(1, 5), block=st.integers(1, 64))
def test_row_layout_is_a_bijection_and_blocks_are_chunks(samples, views, block):
    layout = RowLayout(samples, views, block)
    seen = {layout.locate(r) for r in range(layout.rows)}
    assert seen == {(p, v) for p in range(samples) for v in range(views)}
    for b in range(layout.blocks):
        for v in range(views):
            rows = layout.block_rows(b, v)
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


def test_loader_with_workers_gives_the_same_batches_as_memory(tiny_store):
    store = open_store(tiny_store)
    dataset = StoreDataset(store, ["boundaries/2", "labels"])
    memory = MemoryDataset.from_store(dataset)
    for workers in (0, 2):
        sampler = ChunkShuffleSampler.for_store(store, 10, num_workers=workers, seed=3)
        got = list(make_loader(dataset, sampler, num_workers=workers))
        want = list(make_loader(memory, sampler))
        assert len(got) == len(want) == len(sampler)
        for a, b in zip(got, want):
            assert torch.equal(a["boundaries/2"], b["boundaries/2"]) and torch.equal(a["labels"], b["labels"])


def test_float16_and_bfloat16_stores_read_back_in_their_dtype(tiny_recipe, teacher_ckpt, tmp_path):
    from litcache import ExtractOptions, extract

    for dtype, torch_dtype in (("float16", torch.float16), ("bfloat16", torch.bfloat16)):
        out = tmp_path / f"{dtype}.zarr"
        extract(tiny_recipe, out, ExtractOptions(dtype=dtype, chunk_rows=8, batch_size=8), teacher_checkpoint=teacher_ckpt,
                progress=False, log=lambda m: None)
        full = StoreDataset(out, ["boundaries/1", "logits"]).__getitems__(range(8))
        assert full["boundaries/1"].dtype == torch_dtype and full["logits"].dtype == torch.float32
        assert torch.isfinite(full["boundaries/1"].float()).all()
