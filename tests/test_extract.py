"""`extract()` end to end: stored rows are the teacher's outputs, store identity, NaN refusal."""

from __future__ import annotations

import importlib
import json
import platform
import tempfile
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numcodecs
import numpy as np
import pytest
import torch
import xxhash
import zarr
from conftest import (
    RECIPES,
    TINY,
    TINY_STORE_OPTIONS,
    check_row_layout,
    make_incomplete_store,
    manifest_of,
    quiet,
    shard_checksums,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import Subset

import litcache
from litcache import ExtractOptions, extract, load_recipe
from litcache.errors import (
    DiskSpaceError,
    IncompleteStoreError,
    NonFiniteOutputError,
    OptionError,
    StoreLockedError,
    StoreMismatchError,
)
from litcache.extraction.loop import shard_batches
from litcache.extraction.plan import plan_extraction
from litcache.extraction.replay import verify_store
from litcache.extraction.rows import data_fingerprint
from litcache.extraction.teacher import load_teacher
from litcache.recipe import recipe_code_hash
from litcache.runtime.checkpoint import weights_hash
from litcache.sections import cut_sections
from litcache.store.arrays import open_store, read_ledger, shard_ranges, store_sizes, verify_checksums
from litcache.store.encoding import round_mantissa
from litcache.store.lock import store_lock
from litcache.views import view_generator

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _run(recipe, out, ckpt, **options):
    return extract(recipe, out, ExtractOptions(**options), teacher_checkpoint=ckpt, progress=False, log=quiet)


class _Outputs(dict):
    def __repr__(self) -> str:  # keeps hypothesis' report of a failing example short
        return "<direct teacher outputs>"


def _direct(recipe, ckpt, split="train", views=1, seed=0):
    """What the teacher itself gives for every (sample, view) of the split, computed in one batch
    without litcache's extraction loop: ``arrays`` maps each store array name to a tensor whose
    row ``keys[(sample, view)]`` belongs to that sample and view."""
    dataset = recipe.load_split(split)
    augment = recipe.augmentation_for(split)
    keys, inputs, params = [], [], []
    for view in range(views):
        for index in range(len(dataset)):
            x = dataset[index][0]
            p = augment.sample(view_generator(seed, index, view), x.shape) if augment else ()
            keys.append((index, view))
            inputs.append(augment.apply(x, p) if augment else x)
            params.append(torch.tensor(p, dtype=torch.float32))
    teacher, _, _ = load_teacher(recipe, ckpt)
    with torch.inference_mode():
        outs, logits = cut_sections(teacher, recipe).eval().boundaries(torch.stack(inputs))
    return _Outputs(
        keys={k: r for r, k in enumerate(keys)},
        arrays={
            **{f"boundaries/{i}": o for i, o in enumerate(outs)},
            "logits": logits,
            "labels": torch.tensor([int(dataset[i][1]) for i, _ in keys]),
            "source_index": torch.tensor([i for i, _ in keys]),
            "view": torch.tensor([v for _, v in keys], dtype=torch.int32),
            "view_params": torch.stack(params),
        },
    )


def _rows_of(store, direct) -> torch.Tensor:
    """Which direct rows the store's rows are, after checking the store's row layout."""
    source_index, view = check_row_layout(store)
    return torch.tensor([direct["keys"][(int(i), int(v))] for i, v in zip(source_index, view)])


@pytest.fixture(scope="module")
def direct_tiny(tiny_recipe, teacher_ckpt):
    return _direct(tiny_recipe, teacher_ckpt, views=2)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    limit=st.integers(1, 30),
    views=st.integers(1, 2),
    chunk_rows=st.integers(1, 12),
    chunks_per_shard=st.integers(1, 3),
    # From 2: a batch of one row takes another conv kernel on CPU and differs in the last bits;
    # extraction never leaves a lone trailing row (it joins the batch before), so only
    # --batch-size 1 computes rows alone.
    batch_size=st.integers(2, 24),
)
def test_extract_stores_teacher_outputs(tiny_recipe, teacher_ckpt, direct_tiny, tmp_path,
                                        limit, views, chunk_rows, chunks_per_shard, batch_size):
    shard_rows = chunk_rows * chunks_per_shard
    rows = limit * views
    base = tempfile.mkdtemp(dir=tmp_path)
    out = Path(base) / "s.zarr"
    # The codec named: auto chooses by measured speed, so two stores compared here could differ in it.
    result = _run(tiny_recipe, out, teacher_ckpt, views=views, limit=limit, dtype="float32", codec="zstd",
                  chunk_rows=chunk_rows, shard_rows=shard_rows, batch_size=batch_size)
    assert (result.status, result.rows, result.rows_written) == ("created", rows, rows)

    store = open_store(out)
    layout = store.manifest.layout
    assert (layout.rows, layout.samples, layout.views) == (rows, limit, views)
    assert (layout.chunk_rows, layout.shard_rows) == (chunk_rows, shard_rows)
    assert len(store.manifest.shards) == layout.num_shards == len(shard_ranges(rows, shard_rows))
    assert store.array("boundaries/1").chunks[0] == chunk_rows and store.array("boundaries/1").shards[0] == shard_rows

    # The direct outputs of every (sample, view), picked in this store's row order.
    pick = _rows_of(store, direct_tiny)
    for name, value in direct_tiny["arrays"].items():
        stored = store.read(name, 0, rows)
        expected = value[pick]
        if name.startswith("boundaries/") or name == "logits":
            # Float32 rounding only: rows computed in other batchings may differ in the last bits.
            torch.testing.assert_close(stored, expected, rtol=1e-4, atol=1e-5, msg=name)
        else:
            assert torch.equal(stored, expected.to(stored.dtype)), name
    assert verify_checksums(store) == []

    # The stored bytes, hence the checksums, do not depend on how rows were batched.
    other = Path(base) / "one-batch-per-shard.zarr"
    _run(tiny_recipe, other, teacher_ckpt, views=views, limit=limit, dtype="float32", codec="zstd",
         chunk_rows=chunk_rows, shard_rows=shard_rows, batch_size=shard_rows)
    assert shard_checksums(other) == shard_checksums(out)
    assert manifest_of(other)["identity"] == store.manifest.identity


def test_trailing_row_joins_the_batch_before(tiny_recipe, teacher_ckpt, tmp_path):
    # 17 rows in one shard: batches of 8 would leave a lone row; it joins the batch before instead.
    assert shard_batches(0, 17, 8)[-1] == list(range(8, 17))
    a = _run(tiny_recipe, tmp_path / "a", teacher_ckpt, limit=17, dtype="float32", chunk_rows=17, shard_rows=17,
             batch_size=8)
    b = _run(tiny_recipe, tmp_path / "b", teacher_ckpt, limit=17, dtype="float32", chunk_rows=17, shard_rows=17,
             batch_size=17)
    assert a.rows == b.rows == 17
    assert shard_checksums(tmp_path / "a") == shard_checksums(tmp_path / "b")


def test_resume_uses_the_batch_size_the_store_was_started_with(tiny_recipe, teacher_ckpt, tmp_path, monkeypatch):
    from litcache.store.arrays import StoreWriter

    reference = tmp_path / "reference"
    _run(tiny_recipe, reference, teacher_ckpt, limit=32, dtype="float32", chunk_rows=8, shard_rows=8, batch_size=1)
    real = StoreWriter.write_shard

    def stop_at_shard_2(self, index, start, data, **kwargs):
        if index == 2:
            raise KeyboardInterrupt
        return real(self, index, start, data, **kwargs)

    monkeypatch.setattr(StoreWriter, "write_shard", stop_at_shard_2)
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_recipe, tmp_path / "s", teacher_ckpt, limit=32, dtype="float32", chunk_rows=8, shard_rows=8,
             batch_size=1)
    monkeypatch.setattr(StoreWriter, "write_shard", real)
    lines = []
    extract(tiny_recipe, tmp_path / "s",
            ExtractOptions(limit=32, dtype="float32", chunk_rows=8, shard_rows=8, batch_size=8),
            teacher_checkpoint=teacher_ckpt, resume=True, progress=False, log=lines.append)
    assert "resuming with the store's --batch-size 1 (not 8)" in lines
    assert shard_checksums(tmp_path / "s") == shard_checksums(reference)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_store(tiny_recipe, teacher_ckpt, direct_tiny, tmp_path, dtype):
    out = tmp_path / "s"
    _run(tiny_recipe, out, teacher_ckpt, views=2, dtype=dtype, chunk_rows=8, shard_rows=32, batch_size=16)
    store = open_store(out)
    pick = _rows_of(store, direct_tiny)
    direct = {k: v[pick] for k, v in direct_tiny["arrays"].items()}
    assert store.manifest.arrays["boundaries/2"].dtype == dtype
    assert store.manifest.arrays["logits"].dtype == "float32"
    eps = {"float16": 2**-10, "bfloat16": 2**-7}[dtype]
    for i in range(4):
        stored = store.read(f"boundaries/{i}", 0, store.rows)
        assert stored.dtype == TORCH_DTYPES[dtype]
        torch.testing.assert_close(stored.float(), direct[f"boundaries/{i}"].to(TORCH_DTYPES[dtype]).float(),
                                   rtol=eps, atol=eps)
    torch.testing.assert_close(store.read("logits", 0, store.rows), direct["logits"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype,keep", [("float16", 3), ("bfloat16", 2), ("float32", 8)])
def test_keep_bits_rounds_exactly_the_values_an_exact_store_holds(tiny_recipe, teacher_ckpt, tmp_path, dtype, keep):
    options = dict(views=2, dtype=dtype, chunk_rows=8, shard_rows=32, batch_size=16)
    exact = open_store(_run(tiny_recipe, tmp_path / "exact", teacher_ckpt, **options).path)
    lossy = open_store(_run(tiny_recipe, tmp_path / "lossy", teacher_ckpt, keep_bits=keep, **options).path)
    assert lossy.manifest.identity.keep_bits == keep and "keep_bits" not in exact.manifest.identity
    for name in exact.boundary_names:
        want = round_mantissa(np.array(exact.array(name)[...]), dtype, keep)
        np.testing.assert_array_equal(np.array(lossy.array(name)[...]), want)
        exact_values = exact.read(name, 0, exact.rows).float()
        error = (lossy.read(name, 0, lossy.rows).float() - exact_values).abs()
        normal = exact_values.abs() >= torch.finfo(TORCH_DTYPES[dtype]).smallest_normal  # subnormals have fewer bits
        assert (error[normal] <= exact_values.abs()[normal] * 2.0 ** -(keep + 1)).all()
    np.testing.assert_array_equal(lossy.array("logits")[...], exact.array("logits")[...])  # logits stay exact
    sizes = {s.manifest.identity.keep_bits: store_sizes(s)["boundaries/0"] for s in (exact, lossy)}
    assert sizes[keep] < sizes[None]
    # rounded alike: replays
    report = verify_store(lossy.path, replay=6, recipe=tiny_recipe, teacher_checkpoint=teacher_ckpt)
    assert report.ok, report.replay_failures
    # The same extraction without rounding is another store.
    with pytest.raises(StoreMismatchError,
                       match="keep_bits: store has 3|keep_bits: store has 2|keep_bits: store has 8"):
        _run(tiny_recipe, lossy.path, teacher_ckpt, **options)


def test_unaugmented_split_and_auto_shards(tiny_recipe, teacher_ckpt, tmp_path):
    out = tmp_path / "test.zarr"
    result = _run(tiny_recipe, out, teacher_ckpt, split="test", dtype="float32", chunk_rows=5)
    store = open_store(out)
    assert result.rows == store.rows == 16
    assert "view_params" not in store.manifest.arrays and store.manifest.view_param_names == ()
    assert store.manifest.identity.transforms is None and store.manifest.identity.split == "test"
    # Auto shard size: whole chunks, here one shard for the whole (small) store.
    assert store.manifest.layout.shard_rows == 20 and len(store.manifest.shards) == 1
    direct = _direct(tiny_recipe, teacher_ckpt, split="test", views=1)
    expected = direct["arrays"]["boundaries/3"][_rows_of(store, direct)]
    torch.testing.assert_close(store.read("boundaries/3", 0, 16), expected, rtol=1e-4, atol=1e-5)
    # Several views of an unaugmented split would be identical copies: refused.
    with pytest.raises(OptionError, match="has no augmentation, so --views 2 would store 2 identical copies"):
        _run(tiny_recipe, tmp_path / "copies.zarr", teacher_ckpt, split="test", views=2, chunk_rows=5)
    assert not (tmp_path / "copies.zarr").exists()


def test_limit_beyond_split_uses_all_samples(tiny_recipe, teacher_ckpt, tmp_path):
    result = _run(tiny_recipe, tmp_path / "s", teacher_ckpt, split="test", limit=1000, chunk_rows=8)
    assert result.rows == 16 and open_store(tmp_path / "s").manifest.identity.samples == 16


@pytest.mark.parametrize("kwargs,match", [
    ({"views": 0}, "--views >= 1, got 0"),
    ({"batch_size": 0}, "--batch-size >= 1"),
    ({"chunk_rows": 0}, "--chunk-rows >= 1"),
    ({"limit": 0}, "--limit >= 1"),
    ({"limit": -1}, "--limit >= 1"),
    ({"chunk_rows": 8, "shard_rows": 12}, r"--shard-rows to be a positive multiple of --chunk-rows \(8\), got 12"),
    ({"shard_rows": 0}, "--shard-rows"),
    ({"dtype": "int8"}, "--dtype"),
    ({"codec": "gzip"}, "--codec"),
    ({"loader_workers": -1}, "--loader-workers"),
    ({"keep_bits": 10}, "--keep-bits between 1 and 9 for --dtype float16"),
    ({"keep_bits": 0, "dtype": "float32"}, "--keep-bits between 1 and 22 for --dtype float32"),
    ({"keep_bits": 7, "dtype": "bfloat16"}, "--keep-bits between 1 and 6"),
])
def test_options_refused(kwargs, match):
    with pytest.raises(OptionError, match=match):
        ExtractOptions(**kwargs)


# --- identity: same inputs -> unchanged, other inputs -> refused ------------------------------------


def _mtimes(store: Path) -> dict[str, int]:
    return {str(p.relative_to(store)): p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()}


def test_same_extraction_is_unchanged(tiny_recipe, teacher_ckpt, tiny_store):
    store = open_store(tiny_store)
    assert store.complete and store.rows == 96
    before, manifest = _mtimes(tiny_store), manifest_of(tiny_store)
    directory_mtime = tiny_store.stat().st_mtime_ns
    for resume in (False, True):
        result = extract(tiny_recipe, tiny_store, TINY_STORE_OPTIONS, teacher_checkpoint=teacher_ckpt,
                         resume=resume, progress=False, log=quiet)
        assert (result.status, result.rows_written) == ("unchanged", 0)
    # batch_size is not part of the identity: it does not change what is stored.
    result = extract(tiny_recipe, tiny_store, replace(TINY_STORE_OPTIONS, batch_size=4),
                     teacher_checkpoint=teacher_ckpt, progress=False, log=quiet)
    assert result.status == "unchanged"
    assert _mtimes(tiny_store) == before
    assert manifest_of(tiny_store) == manifest
    # Not even the lock was taken (making and deleting it changes the directory): jobs that share
    # one complete store can all start at once.
    assert tiny_store.stat().st_mtime_ns == directory_mtime


@pytest.mark.parametrize("change,key", [
    ({"views": 1}, "views"),
    ({"seed": 1}, "seed"),
    ({"limit": 40}, "samples"),
    ({"dtype": "float16"}, "dtype"),
    ({"chunk_rows": 4}, "chunk_rows"),
    ({"shard_rows": 32}, "shard_rows"),
    ({"codec": "lz4"}, "codec"),
])
def test_other_options_refused_then_overwritten(tiny_recipe, teacher_ckpt, tiny_store, change, key):
    before, manifest = _mtimes(tiny_store), manifest_of(tiny_store)
    options = replace(TINY_STORE_OPTIONS, **change)
    for resume in (False, True):
        with pytest.raises(StoreMismatchError, match=rf"\b{key}: store has .*--overwrite"):
            extract(tiny_recipe, tiny_store, options, teacher_checkpoint=teacher_ckpt, resume=resume,
                    progress=False, log=quiet)
    assert _mtimes(tiny_store) == before and manifest_of(tiny_store) == manifest
    result = extract(tiny_recipe, tiny_store, options, teacher_checkpoint=teacher_ckpt, overwrite=True,
                     progress=False, log=quiet)
    assert result.status == "created"
    new = open_store(tiny_store)
    assert new.manifest.identity[key] != manifest["identity"][key]  # manifest: zarr.json as it was
    assert verify_checksums(new) == []


def test_other_teacher_refused_then_overwritten(tiny_recipe, teacher_ckpt, other_teacher_ckpt, tiny_store):
    with pytest.raises(StoreMismatchError, match="teacher_hash: store has"):
        extract(tiny_recipe, tiny_store, TINY_STORE_OPTIONS, teacher_checkpoint=other_teacher_ckpt, progress=False,
                log=quiet)
    result = extract(tiny_recipe, tiny_store, TINY_STORE_OPTIONS, teacher_checkpoint=other_teacher_ckpt,
                     overwrite=True, progress=False, log=quiet)
    assert result.status == "created"
    assert open_store(tiny_store).manifest.teacher.checkpoint == str(other_teacher_ckpt)


def test_other_recipe_code_refused_but_not_other_prose(teacher_ckpt, tiny_store, tmp_path):
    before = json.dumps(manifest_of(tiny_store))
    # Comments, docstrings and blank lines are the recipe's prose: the store is the same store.
    prose = tmp_path / "tiny_prose.py"
    prose.write_text(Path(TINY).read_text() + '\n# a note\n\ndef f():  # a helper\n    """Because."""\n')
    code = tmp_path / "tiny_code.py"
    code.write_text(Path(TINY).read_text() + '\ndef f():\n    """Why."""\n')
    assert load_recipe(prose).source_hash == load_recipe(code).source_hash != load_recipe(TINY).source_hash
    code.write_text(Path(TINY).read_text() + '\nEDIT = "a change to the code"\n')
    with pytest.raises(StoreMismatchError, match="recipe_hash: store has"):
        extract(load_recipe(code), tiny_store, TINY_STORE_OPTIONS, teacher_checkpoint=teacher_ckpt,
                progress=False, log=quiet)
    prose.write_text("# a note\n" + Path(TINY).read_text().replace("\n\n", "\n\n\n") + "\n# more\n")
    result = extract(load_recipe(prose), tiny_store, TINY_STORE_OPTIONS, teacher_checkpoint=teacher_ckpt,
                     resume=True, progress=False, log=quiet)
    assert result.status == "unchanged" and json.dumps(manifest_of(tiny_store)) == before


def test_store_that_recorded_the_recipe_bytes_still_resumes(tiny_recipe, teacher_ckpt, tiny_store):
    """Stores of 0.1 and 0.2 recorded xxh3 of the recipe file's bytes: with that file unchanged they are
    still the same store; with its prose edited they are refused as before (their hash cannot tell)."""
    meta = json.loads((tiny_store / "zarr.json").read_text())
    meta["attributes"]["litcache"]["identity"]["recipe_hash"] = xxhash.xxh3_64_hexdigest(Path(TINY).read_bytes())
    (tiny_store / "zarr.json").write_text(json.dumps(meta))
    result = extract(tiny_recipe, tiny_store, TINY_STORE_OPTIONS, teacher_checkpoint=teacher_ckpt, resume=True,
                     progress=False, log=quiet)
    assert result.status == "unchanged"


def test_incomplete_store_needs_resume_and_same_options(tiny_recipe, teacher_ckpt, tmp_path):
    out = tmp_path / "s"
    make_incomplete_store(tiny_recipe, out, teacher_ckpt, TINY_STORE_OPTIONS, committed=2)
    assert sorted(read_ledger(out)) == [0, 1] and not (out / ".lock").exists()
    with pytest.raises(IncompleteStoreError, match="2 of 6 shards committed.*--resume"):
        open_store(out)
    with pytest.raises(IncompleteStoreError, match="Pass --resume to finish it"):
        extract(tiny_recipe, out, TINY_STORE_OPTIONS, teacher_checkpoint=teacher_ckpt, progress=False, log=quiet)
    with pytest.raises(StoreMismatchError, match="views: store has 2, now 1"):
        extract(tiny_recipe, out, replace(TINY_STORE_OPTIONS, views=1), teacher_checkpoint=teacher_ckpt,
                resume=True, progress=False, log=quiet)
    # Another live process holds the lock: refused, the lock is left alone.
    with store_lock(out):
        with pytest.raises(StoreLockedError, match="another extraction is writing it"):
            extract(tiny_recipe, out, TINY_STORE_OPTIONS, teacher_checkpoint=teacher_ckpt, resume=True,
                    progress=False, log=quiet)
        assert (out / ".lock").exists()
    result = extract(tiny_recipe, out, TINY_STORE_OPTIONS, teacher_checkpoint=teacher_ckpt, resume=True,
                     progress=False, log=quiet)
    assert (result.status, result.rows, result.rows_written) == ("resumed", 96, 64)
    reference = tmp_path / "ref"
    extract(tiny_recipe, reference, TINY_STORE_OPTIONS, teacher_checkpoint=teacher_ckpt, progress=False, log=quiet)
    assert shard_checksums(out) == shard_checksums(reference)
    assert verify_checksums(open_store(out)) == []


def test_disk_space_refused_before_writing(tiny_recipe, teacher_ckpt, tmp_path, monkeypatch):
    extract_module = importlib.import_module("litcache.extraction.run")
    out = tmp_path / "s"
    with monkeypatch.context() as m:
        m.setattr(extract_module, "_free_bytes", lambda path: 1000)
        with pytest.raises(DiskSpaceError, match="needs about .* but only 1.0 KB is free.*reduce --limit/--views"):
            _run(tiny_recipe, out, teacher_ckpt, chunk_rows=8)
    # Following the advice: the same command with a smaller --limit.
    result = _run(tiny_recipe, out, teacher_ckpt, chunk_rows=8, limit=8)
    assert result.status == "created" and open_store(out).rows == 8


# --- non-finite teacher outputs ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def nan_recipe():
    return load_recipe(RECIPES / "nan.py")


MARKED = (20, 37)  # the samples tests/recipes/nan.py and overflow.py mark
PROBE_ROWS = 8  # extract checks the split on its first 8 rows


def _marked_rows(tiny_recipe, ckpt, **options) -> tuple[int, list[int], object]:
    """A --seed whose row order keeps the marked samples out of the split-check probe, the rows
    that hold marked samples under it (ascending), and those rows' dataset."""
    for seed in range(50):
        plan = plan_extraction(tiny_recipe, ExtractOptions(seed=seed, **options), ckpt)
        rows = plan.rows_dataset
        bad = [r for r in range(len(rows)) if rows.locate(r)[0] in MARKED]
        if min(bad) >= PROBE_ROWS:
            return seed, bad, rows
    raise AssertionError("no seed keeps the marked samples out of the probe")


def _named(rows, r) -> str:
    index, view = rows.locate(r)
    return f"row {r} (sample {index}, view {view})"


def test_nan_output_refused_and_never_committed(tiny_recipe, nan_recipe, teacher_ckpt, tmp_path):
    options = dict(views=2, dtype="float32", chunk_rows=8, shard_rows=16, batch_size=8)
    seed, bad, rows = _marked_rows(tiny_recipe, teacher_ckpt, **options)
    assert len(bad) == 4  # two samples, two views
    out = tmp_path / "s"
    with pytest.raises(NonFiniteOutputError) as info:
        _run(nan_recipe, out, teacher_ckpt, seed=seed, **options)
    message = str(info.value)
    assert f"The teacher's boundary 0 holds NaN or Inf at {_named(rows, bad[0])}" in message
    assert "Nothing from this shard was written" in message
    ledger = read_ledger(out)
    # The shards before the first bad row's are committed; that one and later ones are not.
    assert sorted(ledger) == list(range(bad[0] // 16))
    for entry in ledger.values():
        start, stop = entry["rows"]
        assert not set(bad) & set(range(start, stop))
    with pytest.raises(IncompleteStoreError):
        open_store(out)
    assert not (out / ".lock").exists()


def test_nan_rows_listed(tiny_recipe, nan_recipe, teacher_ckpt, tmp_path):
    # One batch holds both marked samples: both rows are named, in row order.
    options = dict(dtype="float32", chunk_rows=48, batch_size=48)
    seed, bad, rows = _marked_rows(tiny_recipe, teacher_ckpt, **options)
    expected = f"at {_named(rows, bad[0])}, {_named(rows, bad[1])}. Nothing"
    with pytest.raises(NonFiniteOutputError) as info:
        _run(nan_recipe, tmp_path / "s", teacher_ckpt, seed=seed, **options)
    assert expected in str(info.value)
    assert read_ledger(tmp_path / "s") == {}


def test_nan_in_first_rows_reported_as_nan(nan_recipe, teacher_ckpt, tmp_path):
    marked_only = replace(nan_recipe, load_split=lambda split: Subset(nan_recipe.load_split(split), list(MARKED)))
    with pytest.raises(NonFiniteOutputError, match=r"NaN or Inf at row 0 \(sample "):
        _run(marked_only, tmp_path / "s", teacher_ckpt, dtype="float32", chunk_rows=2)


def test_nan_free_prefix_extracts(nan_recipe, teacher_ckpt, tmp_path):
    result = _run(nan_recipe, tmp_path / "s", teacher_ckpt, limit=20, chunk_rows=8)
    assert result.status == "created" and open_store(tmp_path / "s").complete


def test_float16_overflow_refused_with_hint(tiny_recipe, teacher_ckpt, tmp_path):
    recipe = load_recipe(RECIPES / "overflow.py")
    options = dict(chunk_rows=8, shard_rows=16, batch_size=8)
    seed, bad, rows = _marked_rows(tiny_recipe, teacher_ckpt, **options)
    with pytest.raises(NonFiniteOutputError) as info:
        _run(recipe, tmp_path / "f16", teacher_ckpt, dtype="float16", seed=seed, **options)
    message = str(info.value)
    assert f"boundary 0 (as float16) holds NaN or Inf at {_named(rows, bad[0])}" in message
    assert message.endswith("The values may exceed the float16 range; try --dtype bfloat16 or float32.")
    for dtype in ("bfloat16", "float32"):
        _run(recipe, tmp_path / dtype, teacher_ckpt, dtype=dtype, seed=seed, **options)
        store = open_store(tmp_path / dtype)
        assert store.read("boundaries/0", bad[0], bad[0] + 1).float().min() > 65504  # beyond float16


def _known_module_checksums(ckpt: Path) -> dict:
    """The teacher's stem and head tensors from the checkpoint file, hashed here with xxhash."""
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    known = {}
    for part in ("stem", "head"):
        known[part] = {key[len(part) + 1:]: {"shape": list(t.shape), "dtype": str(t.numpy().dtype),
                                            "xxh3_64": xxhash.xxh3_64_hexdigest(t.contiguous().numpy().tobytes())}
                       for key, t in state.items() if key.startswith(f"{part}.")}
    return known


def test_manifest_on_disk_holds_what_the_run_used(tiny_recipe, teacher_ckpt, tmp_path):
    # Options that differ from every default, so a value the writer took from anywhere but this run shows.
    options = ExtractOptions(limit=8, views=2, chunk_rows=4, shard_rows=8, seed=3, dtype="bfloat16", codec="lz4",
                             device="cpu")
    rows, lines = 16, []
    before = datetime.now(timezone.utc).replace(microsecond=0)
    extract(tiny_recipe, tmp_path / "s", options, teacher_checkpoint=teacher_ckpt, progress=False, log=lines.append)
    after = datetime.now(timezone.utc)
    assert lines[0].startswith(f"extract tiny/train: {rows} rows ({rows} to do, 2/2 shards)")
    assert f"complete, {rows} rows in 2 shards" in lines[-1]
    m = manifest_of(tmp_path / "s")  # the JSON file itself, not the reader's view of it

    assert (m["format"], m["format_version"], m["complete"]) == ("litcache-store", 1, True)
    teacher = tiny_recipe.build_teacher()
    teacher.load_state_dict(torch.load(teacher_ckpt, weights_only=True)["state_dict"])
    recipe_hash = recipe_code_hash(Path(TINY).read_bytes())
    identity = m["identity"]
    assert {k: v for k, v in identity.items() if k != "data_fingerprint"} == {
        "recipe": "tiny", "recipe_hash": recipe_hash, "teacher_hash": weights_hash(teacher), "split": "train",
        "samples": 8, "views": 2, "seed": 3, "shuffle": True,
        "transforms": {"type": "CropFlip", "padding": 1, "flip": True},  # as tests/recipes/tiny.py spells it
        "dtype": "bfloat16", "codec": "lz4", "chunk_rows": 4, "shard_rows": 8,  # no precision key: computed in fp32
    }
    assert identity["data_fingerprint"] == data_fingerprint(tiny_recipe.load_split("train"), 8)
    layout = dict(m["layout"])
    assert layout.pop("row_order").startswith("block-interleaved")
    assert layout == {"rows": rows, "samples": 8, "views": 2, "chunk_rows": 4, "shard_rows": 8, "num_shards": 2}
    recipe = dict(m["recipe"])
    assert Path(recipe.pop("source")).resolve() == Path(TINY).resolve()
    assert recipe == {"name": "tiny", "hash": recipe_hash, "num_classes": 4}
    assert m["teacher"] == {"checkpoint": str(teacher_ckpt), "weights_hash": weights_hash(teacher)}
    assert {k: m["options"][k]
            for k in ("limit", "views", "chunk_rows", "shard_rows", "seed", "dtype", "codec", "device")} == {
        "limit": 8, "views": 2, "chunk_rows": 4, "shard_rows": 8, "seed": 3, "dtype": "bfloat16", "codec": "lz4",
        "device": "cpu"}
    assert m["compute"] == {"precision": "fp32", "channels_last": True, "device": "cpu"}
    assert m["versions"] == {"litcache": litcache.__version__, "torch": torch.__version__, "zarr": zarr.__version__,
                             "numcodecs": numcodecs.__version__, "numpy": np.__version__,
                             "python": platform.python_version()}

    # Array shapes from the teacher's own boundaries; bfloat16 is stored as its uint16 bits.
    with torch.no_grad():
        outs, logits = cut_sections(teacher, tiny_recipe).eval().boundaries(torch.randn(2, 3, 8, 8))
    assert m["boundaries"] == [f"boundaries/{i}" for i in range(len(outs))] == [f"boundaries/{i}" for i in range(4)]
    boundary = {"dtype": "bfloat16", "storage_dtype": "uint16", "codec": "lz4"}
    assert m["arrays"] == {
        **{f"boundaries/{i}": {"shape": [rows, *o.shape[1:]], **boundary} for i, o in enumerate(outs)},
        "logits": {"shape": [rows, logits.shape[1]], "dtype": "float32", "storage_dtype": "float32", "codec": "lz4"},
        "labels": {"shape": [rows], "dtype": "int64", "storage_dtype": "int64", "codec": "lz4"},
        "source_index": {"shape": [rows], "dtype": "int64", "storage_dtype": "int64", "codec": "lz4"},
        "view": {"shape": [rows], "dtype": "int32", "storage_dtype": "int32", "codec": "lz4"},
        "view_params": {"shape": [rows, 3], "dtype": "float32", "storage_dtype": "float32", "codec": "lz4"},
    }
    assert m["view_param_names"] == ["dy", "dx", "flip"]
    assert m["teacher_modules"] == _known_module_checksums(teacher_ckpt)

    # Shard checksums: xxh3 of each array's stored bytes, read back through zarr's own pipeline.
    group = zarr.open_group(str(tmp_path / "s"), mode="r")
    assert m["shards"] == [
        {"index": i, "rows": [start, start + 8],
         "xxh3_64": {name: xxhash.xxh3_64_hexdigest(np.ascontiguousarray(group[name][start:start + 8]).tobytes())
                     for name in m["arrays"]}}
        for i, start in enumerate((0, 8))
    ]
    created, completed = datetime.fromisoformat(m["created"]), datetime.fromisoformat(m["completed"])
    assert before <= created <= completed <= after
    assert 0 < m["timing"]["teacher_seconds"] <= m["timing"]["seconds"] <= (after - before).total_seconds() + 1


def test_loader_workers_do_not_change_the_store(tiny_recipe, teacher_ckpt, tmp_path):
    for workers in (0, 2):
        _run(tiny_recipe, tmp_path / f"w{workers}", teacher_ckpt, views=2, chunk_rows=8, shard_rows=16, batch_size=8,
             loader_workers=workers)
    assert shard_checksums(tmp_path / "w2") == shard_checksums(tmp_path / "w0")


def test_loader_workers_with_spawn(teacher_ckpt, tmp_path):
    import multiprocessing

    tiny_recipe = load_recipe(TINY)  # freshly loaded: its module is the one registered in sys.modules

    old = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method("spawn", force=True)
    try:
        _run(tiny_recipe, tmp_path / "s", teacher_ckpt, limit=16, chunk_rows=8, loader_workers=1)
    finally:
        multiprocessing.set_start_method(old, force=True)
    assert open_store(tmp_path / "s").complete
