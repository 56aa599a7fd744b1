"""litcache's own shard encoder and reader agree with zarr's, byte for value, for every codec."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from conftest import TINY
from hypothesis import given, settings
from hypothesis import strategies as st

from litcache.cli import main
from litcache.errors import CorruptStoreError
from litcache.store.encoding import DTYPES, codec_pipeline
from litcache.store.location import StoreLocation
from litcache.store.shards import ShardFormat


def _array(root, name, rows, row_shape, chunk_rows, chunks_per_shard, dtype, codec):
    group = zarr.open_group(str(root), mode="a")
    return group.create_array(name, shape=(rows, *row_shape), chunks=(chunk_rows, *row_shape),
                              shards=(chunk_rows * chunks_per_shard, *row_shape), dtype=dtype,
                              compressors=codec_pipeline(codec), fill_value=0)


def _format(root, name) -> ShardFormat:
    fmt = ShardFormat.from_metadata(json.loads((root / name / "zarr.json").read_text()))
    assert fmt is not None
    return fmt


def _values(rng, shape, dtype):
    if np.dtype(dtype).kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    return rng.integers(0, 2**15, size=shape).astype(dtype)


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 40), chunk_rows=st.integers(1, 8), chunks_per_shard=st.integers(1, 4),
       codec=st.sampled_from(["zstd", "lz4", "none"]),
       dtype=st.sampled_from([np.float32, np.float16, np.uint16, np.int64, np.int32]),
       row_shape=st.sampled_from([(), (3,), (2, 3, 2)]))
def test_shards_written_by_litcache_read_back_through_zarr_and_litcache(tmp_path_factory, rows, chunk_rows,
                                                                           chunks_per_shard, codec, dtype, row_shape):
    root = tmp_path_factory.mktemp("s") / "g.zarr"
    array = _array(root, "a", rows, row_shape, chunk_rows, chunks_per_shard, dtype, codec)
    fmt = _format(root, "a")
    data = _values(np.random.default_rng(rows), (rows, *row_shape), dtype)
    shard_rows = chunk_rows * chunks_per_shard
    loc = StoreLocation(root)
    for shard, start in enumerate(range(0, rows, shard_rows)):
        loc.write_bytes(ShardFormat.shard_key("a", shard, array.ndim), fmt.encode(data[start:start + shard_rows]))
    np.testing.assert_array_equal(zarr.open_array(str(root / "a"), mode="r")[...], data)  # zarr's reader
    for chunk, start in enumerate(range(0, rows, chunk_rows)):  # litcache's reader
        shard, within = divmod(chunk, chunks_per_shard)
        key = ShardFormat.shard_key("a", shard, array.ndim)
        got, _ = fmt.read_chunk(lambda a, b: loc.read_range(key, a, b), within)
        np.testing.assert_array_equal(got[: min(chunk_rows, rows - start)], data[start:start + chunk_rows])


@pytest.mark.parametrize("codec", ["zstd", "lz4", "none"])
def test_litcache_reads_shards_that_zarr_wrote_including_all_zero_chunks(tmp_path, codec):
    root = tmp_path / "g.zarr"
    array = _array(root, "a", 20, (4,), 4, 3, DTYPES["float16"], codec)
    data = np.random.default_rng(0).standard_normal((20, 4)).astype(np.float16)
    data[4:8] = 0  # zarr leaves an all-fill chunk out of its shard: it must read back as zeros
    array[...] = data
    fmt, loc = _format(root, "a"), StoreLocation(root)
    for chunk in range(5):
        shard, within = divmod(chunk, 3)
        key = ShardFormat.shard_key("a", shard, 2)
        got, _ = fmt.read_chunk(lambda a, b: loc.read_range(key, a, b), within)
        np.testing.assert_array_equal(got[: 4], data[chunk * 4:chunk * 4 + 4])


def test_a_damaged_shard_index_is_reported_not_misread(tmp_path):
    root = tmp_path / "g.zarr"
    _array(root, "a", 8, (2,), 4, 2, np.float32, "zstd")
    fmt = _format(root, "a")
    blob = bytearray(fmt.encode(np.ones((8, 2), np.float32)))
    blob[-10] ^= 0xFF
    with pytest.raises(CorruptStoreError, match="crc32c"):
        fmt.read_chunk(lambda a, b: bytes(blob[a:b] if a >= 0 else blob[a:]), 0)


def test_training_from_a_store_with_a_damaged_shard_index_stops_with_one_error_line(tiny_store, teacher_ckpt, tmp_path):
    key = ShardFormat.shard_key("boundaries/1", 1, 2 + 2)  # boundaries/1 rows are (C, H, W)
    path = tiny_store / key
    blob = bytearray(path.read_bytes())
    blob[-6] ^= 0xFF  # inside the index: the crc32c no longer matches
    path.write_bytes(bytes(blob))
    result = CliRunner().invoke(main, ["train-blocks", TINY, "--store", str(tiny_store), "--student", "resnet8",
                                       "--out", str(tmp_path / "run"), "--epochs", "1", "--no-verify", "--no-eval"])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert (len(errors) == 1
            and errors[0].startswith("Error: Cannot read shard 1 of 'boundaries/1' in store ")), result.output
    assert "shard index fails its crc32c check" in result.output and "Traceback" not in result.output
    assert ".." not in errors[0], errors[0]  # the reason's own full stop is not doubled


def test_arrays_with_other_layouts_are_left_to_zarr(tmp_path):
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="a")
    group.create_array("plain", shape=(8, 2), chunks=(4, 2), dtype="float32", fill_value=0)  # not sharded
    group.create_array("gzip", shape=(8, 2), chunks=(4, 2), shards=(8, 2), dtype="float32", fill_value=0,
                       compressors=[zarr.codecs.GzipCodec()])
    group.create_array("filled", shape=(8, 2), chunks=(4, 2), shards=(8, 2), dtype="float32", fill_value=1.5)
    for name in ("plain", "gzip", "filled"):
        assert ShardFormat.from_metadata(json.loads((tmp_path / "g.zarr" / name / "zarr.json").read_text())) is None


@pytest.mark.parametrize("rows", [0, 1, 5, 12])
def test_submit_file_writes_what_encode_gives_from_the_pool(rows):
    """The writer pool's path: the thread that encodes the last chunk writes the file, byte for byte
    the shard ``encode`` gives; a chunk that fails to encode writes nothing and fails the future."""
    from concurrent.futures import ThreadPoolExecutor

    import numcodecs

    fmt = ShardFormat(np.dtype("<f4"), (3,), 4, 3, numcodecs.Zstd(level=1))
    data = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)
    written = []
    with ThreadPoolExecutor(2) as pool:
        size = fmt.submit_file(data, pool, lambda parts: written.append(b"".join(parts))).result()
        assert written == [fmt.encode(data)] and size == len(written[0])
        if rows:
            broken = ShardFormat(np.dtype("<f4"), (3,), 4, 3, _Failing())
            future = broken.submit_file(data, pool, written.append)
            with pytest.raises(RuntimeError, match="codec failed"):
                future.result()
            assert len(written) == 1


class _Failing:
    def encode(self, raw):
        raise RuntimeError("codec failed")
