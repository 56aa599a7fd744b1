"""The Zarr store on its own: write -> read round trips, checksums, manifest checks, the lock."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import torch
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from litcache.errors import IncompleteStoreError, NotAStoreError, StoreFormatError, StoreLockedError, StoreNotFoundError
from litcache.store.arrays import ArraySpec, StoreWriter, checksum, open_store, shard_ranges, verify_checksums
from litcache.store.encoding import from_storage, to_storage
from litcache.store.lock import store_lock
from litcache.store.manifest import Layout, Manifest, RecipeRecord, TeacherRecord, read_manifest

LOGICAL = ("float32", "float16", "bfloat16")


def _manifest(rows: int, chunk_rows: int, shard_rows: int) -> Manifest:
    """A manifest of ``rows`` rows of one view (the store's own tests care for its layout only)."""
    identity = {"recipe": "test", "recipe_hash": "0", "teacher_hash": "0", "data_fingerprint": "0", "split": "train",
                "samples": rows, "views": 1, "seed": 0, "shuffle": False, "transforms": None, "dtype": "float32",
                "codec": "zstd", "chunk_rows": chunk_rows, "shard_rows": shard_rows}
    return Manifest(
        identity=identity,
        layout=Layout(rows=rows, samples=rows, views=1, chunk_rows=chunk_rows, shard_rows=shard_rows,
                      num_shards=len(shard_ranges(rows, shard_rows)), row_order="test"),
        boundaries=["boundaries/0"], view_param_names=[], recipe=RecipeRecord("test", "", "0", 5),
        teacher=TeacherRecord("teacher.pt", "0"), options={}, versions={}, created="now",
    )


def _specs(dtype: str) -> list[ArraySpec]:
    return [
        ArraySpec("boundaries/0", (3, 2, 2), dtype),
        ArraySpec("logits", (5,), "float32"),
        ArraySpec("labels", (), "int64"),
        ArraySpec("view", (), "int32"),
    ]


def _random_tensors(rows: int, dtype: str, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    acts = (torch.randn(rows, 3, 2, 2, generator=g) * 100).to(
        {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype])
    if rows:
        flat = acts.view(-1)
        flat[0] = -0.0  # signed zero must survive, bit for bit
    return {
        "boundaries/0": acts,
        "logits": torch.randn(rows, 5, generator=g),
        "labels": torch.randint(-(2**40), 2**40, (rows,), generator=g),
        "view": torch.randint(0, 7, (rows,), generator=g, dtype=torch.int32),
    }


def _bits(t: torch.Tensor) -> np.ndarray:
    """The raw bytes of a tensor, so that comparisons are bit-exact (NaN, -0.0 included)."""
    return t.contiguous().view(torch.uint8).numpy() if t.dtype != torch.int64 else t.numpy().view(np.uint8)


def _write_store(path, tensors, dtype, rows, chunk_rows, shard_rows, codec, order):
    specs = _specs(dtype)
    writer = StoreWriter.create(path, _manifest(rows, chunk_rows, shard_rows), specs, codec)
    stored = {s.name: to_storage(tensors[s.name], s.dtype) if s.dtype in LOGICAL else tensors[s.name].numpy()
              for s in specs}
    ranges = shard_ranges(rows, shard_rows)
    entries = {}
    for i in order(len(ranges)):
        start, stop = ranges[i]
        entries[i] = writer.write_shard(i, start, {k: v[start:stop] for k, v in stored.items()})
    manifest = writer.finalize(completed="now")
    return manifest, stored, entries


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.integers(1, 70),
    chunk_rows=st.integers(1, 9),
    chunks_per_shard=st.integers(1, 4),
    batch=st.integers(1, 80),
    dtype=st.sampled_from(LOGICAL),
    codec=st.sampled_from(("zstd", "lz4", "none")),
    reverse=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_round_trip_bit_exact(tmp_path, rows, chunk_rows, chunks_per_shard, batch, dtype, codec, reverse, seed):
    shard_rows = chunk_rows * chunks_per_shard
    path = tempfile.mkdtemp(dir=tmp_path)
    tensors = _random_tensors(rows, dtype, seed)
    order = (lambda n: reversed(range(n))) if reverse else range  # shards are independent of write order
    manifest, stored, entries = _write_store(path, tensors, dtype, rows, chunk_rows, shard_rows, codec, order)

    store = open_store(path)
    assert store.complete and store.rows == rows
    assert store.shards == shard_ranges(rows, shard_rows)
    for name, tensor in tensors.items():
        parts = [store.read(name, b, min(b + batch, rows)) for b in range(0, rows, batch)]
        got = torch.cat(parts)
        assert got.dtype == tensor.dtype, name
        assert got.shape == tensor.shape, name
        assert np.array_equal(_bits(got), _bits(tensor)), name
        # Reads that straddle chunk and shard boundaries too.
        lo, hi = rows // 3, rows - rows // 4
        assert np.array_equal(_bits(store.read(name, lo, hi)), _bits(tensor[lo:hi])), name

    # The manifest records, per shard, the checksum of exactly the bytes that were stored.
    assert [s.index for s in manifest.shards] == list(range(len(shard_ranges(rows, shard_rows))))
    for shard in manifest.shards:
        start, stop = shard.rows
        assert shard.xxh3_64 == {k: checksum(v[start:stop]) for k, v in stored.items()}
        assert shard.xxh3_64 == entries[shard.index]["xxh3_64"]
    assert verify_checksums(store) == []
    assert read_manifest(path).complete is True and read_manifest(path).completed == "now"
    assert read_manifest(path) == manifest == store.manifest


@pytest.mark.parametrize("dtype", LOGICAL)
def test_to_from_storage_inverse(dtype):
    t = torch.tensor([0.0, -0.0, 1.5, -3.25e4, float("inf"), float("-inf"), 1e-3]).to(
        {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype])
    array = to_storage(t, dtype)
    assert array.dtype == {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}[dtype]
    back = from_storage(array, dtype)
    assert back.dtype == t.dtype
    assert np.array_equal(_bits(back), _bits(t))


def test_to_storage_casts_float32_input():
    x = torch.tensor([1.0 + 2**-12, 70000.0, 3.0])
    assert np.array_equal(to_storage(x, "float16"), x.half().numpy())
    bf = from_storage(to_storage(x, "bfloat16"), "bfloat16")
    assert torch.equal(bf, x.bfloat16())


def test_finalize_refuses_missing_shards(tmp_path):
    tensors = _random_tensors(10, "float32", 0)
    writer = StoreWriter.create(tmp_path / "s", _manifest(10, 2, 4), _specs("float32"), "zstd")
    stored = {k: v.numpy() for k, v in tensors.items()}
    writer.write_shard(0, 0, {k: v[0:4] for k, v in stored.items()})
    writer.write_shard(2, 8, {k: v[8:10] for k, v in stored.items()})
    with pytest.raises(IncompleteStoreError, match=r"shards \[1\]"):
        writer.finalize()
    with pytest.raises(IncompleteStoreError, match=r"2 of 3 shards committed.*--resume"):
        open_store(tmp_path / "s")
    store = open_store(tmp_path / "s", require_complete=False)
    assert not store.complete and sorted(store.committed()) == [0, 2]


def test_verify_checksums_detects_changed_rows(tmp_path):
    tensors = _random_tensors(12, "float16", 1)
    _write_store(tmp_path / "s", tensors, "float16", 12, 2, 4, "zstd", range)
    array = zarr.open_group(str(tmp_path / "s"), mode="r+")["logits"]
    array[5] = array[5] + 1
    problems = verify_checksums(open_store(tmp_path / "s"))
    assert len(problems) == 1
    assert problems[0].startswith("array 'logits' shard 1 (rows 4-8)")


def test_shard_ranges():
    assert shard_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert shard_ranges(8, 4) == [(0, 4), (4, 8)]
    assert shard_ranges(3, 8) == [(0, 3)]


# --- manifest checks -------------------------------------------------------------------------------


def test_read_manifest_missing(tmp_path):
    with pytest.raises(StoreNotFoundError, match="nothing is there"):
        read_manifest(tmp_path / "nope")


def test_read_manifest_plain_directory_and_file(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    with pytest.raises(NotAStoreError, match="directory with no Zarr group"):
        read_manifest(tmp_path / "d")
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotAStoreError, match="file with no Zarr group"):
        read_manifest(tmp_path / "f")


def test_read_manifest_garbage_and_foreign_group(tmp_path):
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "zarr.json").write_bytes(b"\xff{not json")
    with pytest.raises(NotAStoreError, match="does not parse"):
        read_manifest(tmp_path / "g")
    zarr.open_group(str(tmp_path / "z"), mode="w").attrs["other"] = 1
    with pytest.raises(NotAStoreError, match="without a litcache manifest"):
        read_manifest(tmp_path / "z")


def test_read_manifest_unknown_version(tmp_path):
    _write_store(tmp_path / "s", _random_tensors(4, "float32", 0), "float32", 4, 2, 2, "zstd", range)
    meta = tmp_path / "s" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["litcache"]["format_version"] = 99
    meta.write_text(json.dumps(doc))
    with pytest.raises(StoreFormatError, match="format version 99; this litcache reads versions 1, 2"):
        read_manifest(tmp_path / "s")
    with pytest.raises(StoreFormatError):
        open_store(tmp_path / "s", require_complete=False)


# --- the lock --------------------------------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid is free (a zombie would still count as alive)
    return proc.pid


def test_lock_created_and_removed(tmp_path):
    with store_lock(tmp_path / "s"):
        owner = json.loads((tmp_path / "s" / ".lock").read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
    assert not (tmp_path / "s" / ".lock").exists()


def test_lock_released_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with store_lock(tmp_path):
            raise RuntimeError("boom")
    assert not (tmp_path / ".lock").exists()


def test_live_lock_refused(tmp_path):
    with store_lock(tmp_path):
        with pytest.raises(StoreLockedError, match=f"locked by process {os.getpid()}"):
            with store_lock(tmp_path):
                pass
        assert (tmp_path / ".lock").exists()  # the refused attempt leaves the owner's lock alone


def test_stale_lock_taken_over(tmp_path):
    pid = _dead_pid()
    (tmp_path / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": pid, "since": 0}))
    with store_lock(tmp_path):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert not (tmp_path / ".lock").exists()


def test_lock_of_other_host_refused(tmp_path):
    pid = _dead_pid()  # dead here, but it is another host's pid: cannot be checked, so must be respected
    (tmp_path / ".lock").write_text(json.dumps({"host": "elsewhere.invalid", "pid": pid, "since": 0}))
    with pytest.raises(StoreLockedError, match="on host elsewhere.invalid"):
        with store_lock(tmp_path):
            pass
    assert json.loads((tmp_path / ".lock").read_text())["host"] == "elsewhere.invalid"


def test_create_keeps_lock(tmp_path):
    with store_lock(tmp_path / "s"):
        _write_store(tmp_path / "s", _random_tensors(4, "float32", 0), "float32", 4, 2, 2, "none", range)
        assert (tmp_path / "s" / ".lock").exists()
