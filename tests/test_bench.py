"""`litcache bench` runs end to end and reports consistent figures (no timing is asserted)."""

from __future__ import annotations

import json

from click.testing import CliRunner
from conftest import TINY

from litcache.cli import main


def test_bench_on_a_store_reports_every_stage(tiny_store, teacher_ckpt):
    result = CliRunner().invoke(main, ["bench", TINY, "--store", str(tiny_store), "--teacher", str(teacher_ckpt),
                                       "--batch-size", "8", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    for key in ("teacher_forward_rows_per_s", "store_read_rows_per_s", "student_step_rows_per_s_from_store",
                "student_step_rows_per_s_from_memory"):
        assert report[key] > 0, key
    assert report["training_bottleneck"] in ("store read + decode", "student step")
    storage = {(s["dtype"], s["codec"]): s for s in report["storage"]}
    assert len(storage) == 9
    assert storage[("float32", "none")]["ratio_vs_float32"] == 1.0
    assert storage[("float16", "none")]["ratio_vs_float32"] == 2.0
    assert storage[("float16", "zstd")]["bytes_per_row"] < storage[("float16", "none")]["bytes_per_row"]


def test_bench_compares_loader_worker_counts(tiny_store, teacher_ckpt):
    result = CliRunner().invoke(main, ["bench", TINY, "--store", str(tiny_store), "--teacher", str(teacher_ckpt),
                                       "--batch-size", "8", "--loader-workers", "0", "--loader-workers", "1", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [r["loader_workers"] for r in report["store_read_by_workers"]] == [0, 1]
    assert all(r["rows_per_s"] > 0 and r["mb_per_s"] > 0 for r in report["store_read_by_workers"])
    assert report["student_consumes_mb_per_s"] > 0
    needed = report["decode_workers_needed"]
    fast_enough = [r["loader_workers"] for r in report["store_read_by_workers"]
                   if r["rows_per_s"] >= report["student_step_rows_per_s_from_memory"]]
    assert needed == (min(fast_enough) if fast_enough else None)
    text = CliRunner().invoke(main, ["bench", TINY, "--store", str(tiny_store), "--teacher", str(teacher_ckpt),
                                     "--batch-size", "8", "--loader-workers", "1"])
    assert text.exit_code == 0, text.output
    assert "MB/s with 1 loader workers" in text.output and "the student consumes" in text.output


def test_bench_without_a_store_extracts_a_temporary_one(teacher_ckpt, tmp_path):
    result = CliRunner().invoke(main, ["bench", TINY, "--teacher", str(teacher_ckpt), "--samples", "32",
                                       "--batch-size", "8"])
    assert result.exit_code == 0, result.output
    assert "training bottleneck" in result.output
    assert "pays for itself" in result.output or "does not pay off" in result.output


def test_a_float16_store_reports_no_float32_storage_rows(tiny_store_f16):
    # Widened float16 values compress far better than real float32 activations: no made-up row.
    from litcache.bench import storage_table

    table = storage_table(tiny_store_f16)
    assert {row["dtype"] for row in table} == {"float16", "bfloat16"}
    assert len(table) == 6
