"""The extraction writer (litcache.extraction.writer) and `--codec auto` (litcache.extraction.codec_choice):
every thread count writes the same bytes and commits the ledger in shard order; a failing writer
thread ends the run with one clear error and a store that --resume finishes; auto records a real
codec, which a resume adopts without measuring again."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from conftest import TINY, TINY_STORE_OPTIONS, quiet, run_cli, shard_checksums

from litcache import ExtractOptions, extract, open_store
from litcache.extraction import run as run_module
from litcache.extraction.codec_choice import CodecChoice, choose_codec, measure_codecs
from litcache.extraction.plan import plan_extraction
from litcache.extraction.writer import default_writer_threads
from litcache.store.arrays import StoreWriter
from litcache.store.encoding import CODECS, numcodecs_compressor
from litcache.store.shards import ShardFormat


def _cli_args(out, ckpt, *extra):
    return ["extract", TINY, "--teacher", str(ckpt), "--out", str(out), "--views", "2", "--dtype", "float32",
            "--chunk-rows", "8", "--shard-rows", "16", "--batch-size", "8", "--device", "cpu", "-q", *extra]


def test_ledger_commits_in_shard_order_whatever_finishes_first(tiny_recipe, teacher_ckpt, tiny_store, tmp_path,
                                                                monkeypatch):
    commits, real = [], StoreWriter.write_shard

    def slow_first(self, index, start, data, before_commit=None, **kwargs):
        if index == 0:
            time.sleep(0.3)  # shard 0 finishes encoding last; it must still commit first

        def record():
            before_commit()
            commits.append(index)
        return real(self, index, start, data, before_commit=record, **kwargs)

    monkeypatch.setattr(StoreWriter, "write_shard", slow_first)
    out = tmp_path / "s.zarr"
    extract(tiny_recipe, out, TINY_STORE_OPTIONS, teacher_checkpoint=teacher_ckpt, progress=False, log=quiet,
            background_writer=True, writer_threads=3)
    assert commits == sorted(commits) == list(range(len(shard_checksums(tiny_store))))
    assert shard_checksums(out) == shard_checksums(tiny_store)


@pytest.mark.parametrize("threads", ["1", "3"])
def test_a_failing_writer_thread_gives_one_error_and_resume_finishes(teacher_ckpt, tiny_store, tmp_path, monkeypatch,
                                                                     threads):
    real = ShardFormat._encode_chunk
    calls = {"n": 0}
    lock = threading.Lock()

    def breaks_once(self, rows):
        with lock:
            calls["n"] += 1
            if calls["n"] == 25:  # a chunk of the second shard or later
                raise RuntimeError("encoder blew up")
        return real(self, rows)

    out = tmp_path / "s.zarr"
    with monkeypatch.context() as m:
        m.setattr(ShardFormat, "_encode_chunk", breaks_once)
        failed = run_cli(*_cli_args(out, teacher_ckpt, "--writer-threads", threads, "--codec", "zstd"))
    assert failed.exit_code == 1
    lines = failed.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: The shard writer failed on shard"), failed.output
    assert "RuntimeError: encoder blew up" in lines[0] and "--resume" in lines[0]
    assert "Traceback" not in failed.output
    assert not open_store(out, require_complete=False).complete
    resumed = run_cli(*_cli_args(out, teacher_ckpt, "--writer-threads", threads, "--codec", "zstd", "--resume"))
    assert resumed.exit_code == 0, resumed.output
    assert shard_checksums(out) == shard_checksums(tiny_store)


def test_writer_threads_follow_the_free_cores():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert default_writer_threads(cpu, 2, 2, 0) == (2, False)  # a CPU teacher on every core: pause, encode on all
    assert default_writer_threads(cpu, 16, 4, 0) == (12, True)  # spare cores encode beside the teacher
    assert default_writer_threads(cpu, 16, 4, 2) == (10, True)
    assert default_writer_threads(cuda, 16, 16, 0) == (15, True)  # a GPU teacher: every core but the loop's
    assert default_writer_threads(cuda, 1, 1, 0) == (1, True)


def test_numcodecs_compressors_are_the_stores_codecs(tiny_recipe, teacher_ckpt, tmp_path):
    """What --codec auto and the benchmarks time is exactly what the store encodes with."""
    data = np.linspace(-3, 3, 8 * 40, dtype=np.float32).reshape(8, 40)
    for codec in CODECS:
        out = tmp_path / f"{codec}.zarr"
        extract(tiny_recipe, out, ExtractOptions(codec=codec, limit=8, chunk_rows=8), teacher_checkpoint=teacher_ckpt,
                progress=False, log=quiet)
        fmt = open_store(out).shard_format("logits")
        mine = numcodecs_compressor(codec)
        assert (fmt.compressor is None) == (mine is None)
        if mine is not None:
            assert fmt.compressor.get_config() == mine.get_config()
            assert bytes(fmt.compressor.encode(data)) == bytes(mine.encode(data))


def test_choose_codec_takes_the_strongest_that_keeps_up():
    assert choose_codec(100.0, {"zstd": 150.0, "lz4": 900.0, "none": 5000.0}) == "zstd"
    assert choose_codec(200.0, {"zstd": 150.0, "lz4": 900.0, "none": 5000.0}) == "lz4"
    assert choose_codec(1000.0, {"zstd": 150.0, "lz4": 900.0, "none": 5000.0}) == "none"
    assert choose_codec(9000.0, {"zstd": 150.0, "lz4": 900.0, "none": 5000.0}) == "none"  # none keeps up: fastest
    assert choose_codec(9000.0, {"zstd": 150.0, "lz4": 9500.0, "none": 5000.0}) == "lz4"


def test_measure_codecs_times_the_teacher_and_each_codec(tiny_recipe, teacher_ckpt):
    plan = plan_extraction(tiny_recipe, ExtractOptions(limit=16), teacher_ckpt)
    choice = measure_codecs(plan, torch.device("cpu"), threads=2)
    assert choice.forward_rows_per_s > 0 and set(choice.encode_rows_per_s) == set(CODECS)
    assert choice.codec == choose_codec(choice.forward_rows_per_s, choice.encode_rows_per_s)
    assert f"--codec auto chose {choice.codec}" in choice.describe() and "2 threads" in choice.describe()


def test_auto_records_the_codec_it_chose_and_a_resume_adopts_it(tiny_recipe, teacher_ckpt, tmp_path, monkeypatch):
    lines = []
    rates = {"zstd": 5.0, "lz4": 50.0, "none": 99.0}  # the teacher at 10 rows/s: zstd falls behind, lz4 keeps up
    monkeypatch.setattr(run_module, "measure_codecs",
                        lambda plan, device, threads: CodecChoice("lz4", 10.0, rates, threads))
    out = tmp_path / "s.zarr"
    options = ExtractOptions(views=2, chunk_rows=8, shard_rows=16, batch_size=8)
    assert options.codec == "auto"
    extract(tiny_recipe, out, options, teacher_checkpoint=teacher_ckpt, progress=False, log=lines.append)
    store = open_store(out)
    assert store.manifest.identity["codec"] == "lz4"
    assert all(record.codec == "lz4" for record in store.manifest.arrays.values())
    assert any("--codec auto chose lz4 (the strongest that keeps up)" in line for line in lines)

    def refuse(*args):
        raise AssertionError("a store that exists is not measured again")

    monkeypatch.setattr(run_module, "measure_codecs", refuse)
    again = extract(tiny_recipe, out, options, teacher_checkpoint=teacher_ckpt, progress=False, log=quiet)
    assert again.status == "unchanged"
    again = extract(tiny_recipe, out, options, teacher_checkpoint=teacher_ckpt, progress=False, log=quiet, resume=True)
    assert again.status == "unchanged"


def test_cli_codec_auto_is_the_default(teacher_ckpt, tmp_path):
    out = tmp_path / "s.zarr"
    result = run_cli(*_cli_args(out, teacher_ckpt)[:-1])
    assert result.exit_code == 0, result.output
    assert "--codec auto chose" in result.output
    assert open_store(out).manifest.identity["codec"] in CODECS


def test_sink_refuses_nan_among_the_largest_logits(tmp_path):
    """With --logit-topk the full logits are not stored; a NaN in them still stops the shard (it sorts first)."""
    from litcache.errors import NonFiniteOutputError
    from litcache.extraction.rows import ViewRows
    from litcache.extraction.writer import ShardSink
    from litcache.store.arrays import ArraySpec
    from litcache.store.layout import RowLayout

    rows = ViewRows(torch.utils.data.TensorDataset(torch.zeros(4, 2), torch.zeros(4)), RowLayout(4, 1, 4), 0, None,
                    shuffle=False)
    specs = [ArraySpec("boundaries/0", (2,), "float16"), ArraySpec("topk_values", (2,), "float32"),
             ArraySpec("labels", (), "int64")]

    class NoPool:
        def put(self, *args, **kwargs):
            raise AssertionError("nothing of this shard may reach the writer")

    sink = ShardSink(NoPool(), specs, [(0, 4)], [0], torch.device("cpu"), "float16", None, rows)
    values = torch.tensor([[1.0, 0.5], [float("nan"), 2.0], [3.0, 1.0], [1.0, 1.0]])
    sink.add({"boundaries/0": torch.ones(4, 2), "topk_values": values}, {"labels": torch.zeros(4, dtype=torch.int64)})
    with pytest.raises(NonFiniteOutputError, match=r"The teacher's largest logits holds NaN or Inf at row 1 "):
        sink.close()


@pytest.mark.parametrize("dtype, keep_bits", [("float32", None), ("float16", 5)])
def test_copies_on_the_encoder_threads_write_what_the_gpu_path_writes(tiny_recipe, teacher_ckpt, tmp_path,
                                                                      monkeypatch, dtype, keep_bits):
    """A CPU teacher's outputs are cast by the encoder threads, chunk by chunk (deferred); a GPU teacher's are
    copied in the loop. Both write the same bytes, with batches (6 rows) that straddle chunks (8 rows)."""
    from litcache.extraction import loop
    from litcache.extraction.writer import ShardSink

    options = ExtractOptions(views=2, dtype=dtype, keep_bits=keep_bits, chunk_rows=8, shard_rows=16, batch_size=6)
    stores = {}
    for deferred in (True, False):
        monkeypatch.setattr(loop, "ShardSink", lambda *args, d=deferred, **_: ShardSink(*args, deferred=d))
        stores[deferred] = tmp_path / f"deferred-{deferred}.zarr"
        extract(tiny_recipe, stores[deferred], options, teacher_checkpoint=teacher_ckpt, progress=False, log=quiet,
                writer_threads=2)
    assert shard_checksums(stores[True]) == shard_checksums(stores[False])
    a, b = open_store(stores[True]), open_store(stores[False])
    for name in a.boundary_names:
        assert np.array_equal(a.array(name)[:], b.array(name)[:])
    assert np.isfinite(a.array(a.boundary_names[0])[:].astype(np.float32)).all()
