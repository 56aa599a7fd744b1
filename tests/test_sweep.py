"""Sweeps and distributed extraction on a dask LocalCluster: same weights and same store bytes as the
serial paths, failures reported without losing the work of other tasks, reruns that skip."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import RECIPES, TINY, TINY_STORE_OPTIONS, assert_clean_error, quiet, run_cli, shard_checksums

from litcache import (
    BlockTrainOptions,
    ExtractOptions,
    assemble,
    extract,
    load_recipe,
    load_student,
    open_store,
    train_blocks,
)
from litcache.errors import IncompleteStoreError, OptionError
from litcache.extraction.distributed import dask_client
from litcache.store.arrays import read_ledger
from litcache.sweep_report import pareto_front
from litcache.sweeps import plan_variants, sweep, variant_name

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAILING_TEACHER = RECIPES / "tiny_failing_teacher.py"


@pytest.fixture(scope="module")
def cluster():
    """One local cluster of 2 worker processes (as --workers 2 starts it) for the module: starting one
    and importing torch in its workers costs seconds on a busy machine. Tests use it by address."""
    with dask_client(2, None) as client:
        yield client.scheduler.address


def _results(out: Path) -> tuple[list[dict], list[dict]]:
    rows = json.loads((out / "results.json").read_text())["variants"]
    with open(out / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert (out / "pareto.png").read_bytes()[:8] == PNG_MAGIC
    return rows, table


def _assert_same_weights(a_path, b_path) -> None:
    a, b = load_student(a_path).state_dict(), load_student(b_path).state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def _direct(**kw) -> BlockTrainOptions:
    return BlockTrainOptions(**{"epochs": 1, "batch_size": 16, "evaluate": False, **kw})


def test_variant_names_are_stable_and_filesystem_safe():
    assert variant_name("resnet8", 0, "lit", {"lr": 0.1, "batch_size": 16}) == "resnet8_seed0_lr0.1_batch-size16"
    assert variant_name("res/net 8", 3, "ir", {"weight_decay": 1e-5}) == "res-net-8_ir_seed3_weight-decay1e-05"
    variants = plan_variants(["a", "b"], [0, 1, 0], {"lr": [0.1, 0.05, 0.1]}, "lit")
    assert [v.name for v in variants] == ["a_seed0_lr0.1", "a_seed1_lr0.1", "a_seed0_lr0.05", "a_seed1_lr0.05",
                                          "b_seed0_lr0.1", "b_seed1_lr0.1", "b_seed0_lr0.05", "b_seed1_lr0.05"]
    with pytest.raises(OptionError, match="--beta weights the KD term"):
        plan_variants(["a"], [0], {"beta": [0.5]}, "ir")
    with pytest.raises(OptionError, match="give the same variant name"):
        plan_variants(["a/b", "a b"], [0], {}, "lit")


def test_pareto_front():
    # (cost, accuracy): the second is beaten by the first (cheaper, as accurate); ties both stay.
    points = [(1, 0.5), (2, 0.5), (3, 0.9), (3, 0.9), (4, 0.8)]
    assert pareto_front(points) == [True, False, True, True, False]


def test_sweep_on_two_workers_equals_train_blocks_and_rerun_skips(tiny_recipe, tiny_store, cluster, tmp_path):
    out = tmp_path / "sweep"
    args = ["sweep", TINY, "--store", tiny_store, "--student", "resnet8", "--lr", "0.1", "--lr", "0.05",
            "--seed", "0", "--seed", "1", "--epochs", "1", "--batch-size", "16", "--out", out, "-q"]
    result = run_cli(*args, "--scheduler", cluster)
    assert result.exit_code == 0, result.output
    rows, table = _results(out)
    assert len(rows) == len(table) == 4
    assert {(r["lr"], r["seed"]) for r in rows} == {(0.1, 0), (0.1, 1), (0.05, 0), (0.05, 1)}
    assert all(r["status"] == "trained" and 0 <= r["accuracy"] <= 1 and r["depth"] == 8 and r["params"] > 0
               and r["macs"] > 0 and r["train_seconds"] > 0 for r in rows)
    assert [r["variant"] for r in table] == [r["variant"] for r in rows]

    for r in rows:  # each variant, trained again by itself in this process
        [direct] = train_blocks(tiny_recipe, tiny_store, ["resnet8"], tmp_path / "direct" / r["variant"],
                                _direct(lr=r["lr"], seed=r["seed"]), log=quiet)
        assert Path(r["checkpoint"]) == out / r["variant"] / "resnet8" / "student.pt"
        _assert_same_weights(r["checkpoint"], direct["checkpoint"])

    # Everything is done: no cluster is started, results are read back.
    again = run_cli(*args, "--workers", "2")
    assert again.exit_code == 0, again.output
    reread, _ = _results(out)
    assert [r["status"] for r in reread] == ["skipped"] * 4
    keep = ("variant", "accuracy", "params", "macs", "depth", "train_seconds", "checkpoint")
    assert [{k: r[k] for k in keep} for r in reread] == [{k: r[k] for k in keep} for r in rows]


def test_ir_sweep_assembles_the_student_of_separate_block_runs(tiny_recipe, tiny_store, cluster, tmp_path):
    out = tmp_path / "sweep"
    grid = {"epochs": [1], "batch_size": [16], "lr": [0.05]}
    result = sweep(tiny_recipe, tiny_store, ["resnet8"], out, grid=grid, mode="ir", scheduler=cluster, log=quiet)
    [row] = result.rows
    assert row["status"] == "trained" and row["beta"] == 0 and row["variant"].startswith("resnet8_ir_")

    parts = []
    for block in (1, 2, 3):
        [r] = train_blocks(tiny_recipe, tiny_store, ["resnet8"], tmp_path / f"b{block}",
                           _direct(mode="ir", section=block, lr=0.05), log=quiet)
        parts.append(r["checkpoint"])
    assemble(parts, tmp_path / "assembled.pt")
    _assert_same_weights(row["checkpoint"], tmp_path / "assembled.pt")
    assert load_student(row["checkpoint"])(torch.randn(2, 3, 8, 8)).shape == (2, 4)

    # Lose the assembled student and one section: a rerun (in this process) trains that section
    # alone, reuses the other two and assembles the same student.
    Path(row["checkpoint"]).unlink()
    shutil.rmtree(out / row["variant"] / "block2")
    [again] = sweep(tiny_recipe, tiny_store, ["resnet8"], out, grid=grid, mode="ir", workers=1, log=quiet).rows
    assert again["status"] == "trained"
    _assert_same_weights(again["checkpoint"], tmp_path / "assembled.pt")


def test_failed_variant_is_reported_and_the_others_are_kept(tiny_store, cluster, tmp_path):
    out = tmp_path / "sweep"
    result = run_cli("sweep", RECIPES / "tiny_broken_student.py", "--store", tiny_store, "--student", "resnet8",
                     "--student", "broken", "--epochs", "1", "--batch-size", "16", "--out", out,
                     "--scheduler", cluster, "-q")
    assert_clean_error(result, "variant broken_seed0_epochs1_batch-size16 failed: RuntimeError: the builder of student "
                               "'broken' fails on purpose", exit_code=1)
    rows, table = _results(out)
    assert [(r["student"], r["status"]) for r in rows] == [("resnet8", "trained"), ("broken", "failed")]
    assert "fails on purpose" in rows[1]["error"] and rows[1]["accuracy"] is None
    assert 0 <= rows[0]["accuracy"] <= 1 and Path(rows[0]["checkpoint"]).is_file()
    assert [r["status"] for r in table] == ["trained", "failed"]


def test_variant_trained_from_another_store_is_not_taken_as_done(tiny_recipe, tiny_store, tiny_store_f16, tmp_path):
    out, grid = tmp_path / "sweep", {"epochs": [1], "batch_size": [16]}
    [first] = sweep(tiny_recipe, tiny_store, ["resnet8"], out, grid=grid, workers=1, log=quiet).rows
    assert first["status"] == "trained"
    [other] = sweep(tiny_recipe, tiny_store_f16, ["resnet8"], out, grid=grid, workers=1, log=quiet).rows
    assert other["status"] == "failed" and "trained from another store or with other options" in other["error"]
    assert other["error"].endswith(f"Remove '{out / first['variant']}' or choose another --out.")


def test_sweep_refuses_bad_options_before_training(tiny_store, tmp_path):
    base = ["sweep", TINY, "--store", tiny_store, "--out", tmp_path / "s"]
    assert_clean_error(run_cli(*base, "--student", "resnet8", "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"),
                       "Give --workers N (a local cluster) or --scheduler ADDRESS", exit_code=1)
    assert_clean_error(run_cli(*base, "--student", "resnet8", "--scheduler", "nonsense"),
                       "Expected a running dask scheduler at --scheduler 'nonsense'", exit_code=1)
    assert_clean_error(run_cli(*base, "--student", "nope"),
                       "Expected a student of recipe 'tiny' (resnet8, or mixes such as 'mix-1-1-1'), got 'nope'",
                       exit_code=1)
    assert_clean_error(run_cli(*base, "--student", "resnet8", "--mode", "ir", "--beta", "0.5"),
                       "--beta weights the KD term", exit_code=1)
    assert not (tmp_path / "s").exists()  # nothing trained, nothing written


def test_distributed_extraction_equals_serial(tiny_recipe, teacher_ckpt, tiny_store, cluster, tmp_path):
    out = tmp_path / "distributed.zarr"
    result = extract(tiny_recipe, out, TINY_STORE_OPTIONS, teacher_checkpoint=teacher_ckpt, progress=False, log=quiet,
                     scheduler=cluster)
    assert result.status == "created" and result.rows_written == 96
    assert shard_checksums(out) == shard_checksums(tiny_store)
    ours, serial = open_store(out).manifest, open_store(tiny_store).manifest
    assert ours.identity == serial.identity and ours.teacher_modules == serial.teacher_modules
    assert not (out / ".lock").exists()
    again = extract(tiny_recipe, out, TINY_STORE_OPTIONS, teacher_checkpoint=teacher_ckpt, progress=False, log=quiet,
                    scheduler=cluster)
    assert again.status == "unchanged"


def test_failed_worker_range_keeps_other_shards_and_resume_completes(teacher_ckpt, cluster, tmp_path):
    options = dict(views=2, dtype="float32", chunk_rows=8, shard_rows=16, batch_size=8, shuffle=False)
    recipe = load_recipe(FAILING_TEACHER)
    reference = tmp_path / "serial.zarr"
    extract(recipe, reference, ExtractOptions(**options), teacher_checkpoint=teacher_ckpt, progress=False, log=quiet)

    out = tmp_path / "failed.zarr"
    flags = ["--views", "2", "--dtype", "float32", "--chunk-rows", "8", "--shard-rows", "16", "--batch-size", "8",
             "--no-shuffle"]
    # A fresh local cluster started under the variable: its workers fail on shard 4 (samples 32-39);
    # the worker with shards 0-2 and the shard before 4 commit.
    result = run_cli("extract", FAILING_TEACHER, "--out", out, "--teacher", teacher_ckpt, *flags, "--workers", "2",
                     "-q", env={"LITCACHE_FAIL_TEACHER": "1"})
    assert_clean_error(result, f"Extraction into '{out}' did not finish: shards 3-5 failed: "
                               "RuntimeError: the teacher fails on a marked sample", exit_code=1)
    assert "The 4 of 6 shards committed are kept" in result.output and "--resume" in result.output
    assert sorted(read_ledger(out)) == [0, 1, 2, 3]
    assert not (out / ".lock").exists()
    with pytest.raises(IncompleteStoreError):
        open_store(out)

    copy = tmp_path / "failed-copy.zarr"
    shutil.copytree(out, copy)
    serial = run_cli("extract", FAILING_TEACHER, "--out", out, "--teacher", teacher_ckpt, *flags, "--resume", "-q")
    assert serial.exit_code == 0, serial.output
    resumed = extract(recipe, copy, ExtractOptions(**options), teacher_checkpoint=teacher_ckpt, resume=True,
                      progress=False, log=quiet, scheduler=cluster)
    assert resumed.status == "resumed" and resumed.rows_written == 32
    assert shard_checksums(out) == shard_checksums(copy) == shard_checksums(reference)


def test_extract_refuses_workers_and_scheduler_together(teacher_ckpt, tmp_path):
    result = run_cli("extract", TINY, "--out", tmp_path / "s.zarr", "--teacher", teacher_ckpt, "--workers", "2",
                     "--scheduler", "tcp://127.0.0.1:1")
    assert_clean_error(result, "Give --workers N (a local cluster) or --scheduler ADDRESS", exit_code=1)
    assert not (tmp_path / "s.zarr").exists()
