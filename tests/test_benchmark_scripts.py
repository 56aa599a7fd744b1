"""Every script in benchmarks/ runs at a tiny size and prints what a user reads (no timing asserted)."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import PYTHON, REPO, TINY, subprocess_env


def _run(script: str, *args) -> str:
    done = subprocess.run([PYTHON, str(REPO / "benchmarks" / script), *map(str, args)], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{script} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_extract_bench(teacher_ckpt):
    out = _run("extract_bench.py", "--recipe", TINY, "--teacher", teacher_ckpt, "--limit", 16, "--views", 2, "--repeats", 2)
    assert out.count("   repeat ") == 2
    assert "ratio extract/forward = " in out and "(inline writer)" in out and "(background writer)" in out


def test_storage_bench(teacher_ckpt, tmp_path):
    out = _run("storage_bench.py", "--recipe", TINY, "--teacher", teacher_ckpt, "--bytes-limit", 16, "--limit", 16,
               "--views", 2, "--lit-epochs", 1, "--ft-epochs", 1, "--seeds", "0,1", "--keep-bits", 4,
               "--json", tmp_path / "storage.json")
    report = json.loads((tmp_path / "storage.json").read_text())
    configs = {(r["dtype"], r["codec"], r["keep_bits"]) for r in report["bytes"]}
    assert len(configs) == 10 and ("float16", "zstd", 4) in configs
    assert "lossless codecs of each dtype decode to identical values (checked)" in out
    assert [(r["dtype"], r["keep_bits"], r["seed"]) for r in report["accuracy"]] == [
        ("float32", None, 0), ("float32", None, 1), ("float16", None, 0), ("bfloat16", None, 0), ("float16", 4, 0)]
    assert all(0 <= r["accuracy"] <= 1 for r in report["accuracy"])


def test_train_bench(tiny_store, teacher_ckpt):
    out = _run("train_bench.py", "--recipe", TINY, "--store", tiny_store, "--teacher", teacher_ckpt, "--batch-size", 16,
               "--repeats", 2)
    for source in ("store", "memory", "online"):
        assert f"   {source} " in out, source
    assert "loader ratio store/memory time = " in out
    assert "pays for itself" in out or "does not pay off" in out


def test_baselines(tiny_store, teacher_ckpt, tmp_path):
    out = _run("baselines.py", "--recipe", TINY, "--store", tiny_store, "--teacher", teacher_ckpt,
               "--epochs", 1, "--finetune-epochs", 1, "--out", tmp_path)
    for method in ("scratch", "kd", "hints", "lit", "lit + finetune", "teacher"):
        assert any(line.startswith(f"{method} ") and "test top-1" in line for line in out.splitlines()), method
    report = json.loads((tmp_path / "baselines.json").read_text())
    assert set(report["accuracy"]) == {"scratch", "kd", "hints", "lit", "lit + finetune"}


def test_reuse_bench(teacher_ckpt, tmp_path):
    out = _run("reuse_bench.py", "--recipe", TINY, "--teacher", teacher_ckpt, "--students", "resnet8", "--seeds", "0,1",
               "--ks", "1,2", "--limit", 32, "--views", 2, "--epochs", 1, "--batch-size", 16, "--out", tmp_path)
    lines = out.splitlines()
    assert any("extract E" in line and "bare forward F" in line for line in lines)
    assert "largest accuracy difference cached - online" in out
    header = next(i for i, line in enumerate(lines) if "online/cached" in line and "cached/ideal" in line)
    assert [line.split()[0] for line in lines[header + 1 : header + 3]] == ["1", "2"]
    report = json.loads((tmp_path / "reuse.json").read_text())
    assert [v["variant"] for v in report["variants"]] == ["resnet8_seed0", "resnet8_seed1"]
    for v in report["variants"]:
        assert {"cached_s", "memory_s", "online_s", "cached_accuracy", "online_accuracy", "accuracy_diff_points"} <= set(v)
    assert [row["k"] for row in report["table"]] == [1, 2]
    assert report["table"][1]["cached_s"] == pytest.approx(
        report["extract_s"] + sum(v["cached_s"] for v in report["variants"]))
    assert list(tmp_path.glob("work-*")) == []  # stores and runs removed without --keep


def test_scale_bench(teacher_ckpt, tmp_path):
    out = _run("scale_bench.py", "--recipe", TINY, "--teacher", teacher_ckpt, "--sizes", "16x2,48x4",
               "--batch-size", 16, "--out", tmp_path)
    assert "ratio 192/32 rows, extract: memory" in out and "ratio 192/32 rows, train-blocks: memory" in out
    report = json.loads((tmp_path / "scale.json").read_text())
    assert [s["rows"] for s in report["sizes"]] == [32, 192]
    for size in report["sizes"]:
        assert size["train"]["epochs"] == size["views"] and size["train"]["rows_read"] == size["rows"]
        assert size["extract"]["peak_rss_mb"] > 0 and size["train"]["peak_rss_mb"] > 0
    assert set(report["ratios_largest_over_smallest"]) == {"extract", "train"}
