"""Faults that really happen to long jobs: disk full, a second writer, training killed mid-epoch."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import TINY

from litcache import BlockTrainOptions, ExtractOptions, extract, load_student, open_store, train_blocks, verify_store
from litcache.cli import main
from litcache.errors import DiskSpaceError
from litcache.store.arrays import StoreWriter, read_ledger

QUIET = {"progress": False, "log": lambda m: None}
OPTIONS = ExtractOptions(views=2, dtype="float16", chunk_rows=8, shard_rows=16, batch_size=8)
ROOT = Path(__file__).resolve().parents[1]


def _checksums(path) -> list:
    return open_store(path).manifest.shards


def test_disk_full_keeps_committed_shards_and_resume_finishes(tiny_recipe, teacher_ckpt, tmp_path, monkeypatch):
    reference = tmp_path / "reference.zarr"
    extract(tiny_recipe, reference, OPTIONS, teacher_checkpoint=teacher_ckpt, **QUIET)

    real_write = StoreWriter.write_shard

    def write_until_full(self, index, start, data, **kwargs):
        if index == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, index, start, data, **kwargs)

    monkeypatch.setattr(StoreWriter, "write_shard", write_until_full)
    out = tmp_path / "full.zarr"
    with pytest.raises(DiskSpaceError, match=r"Disk full .* The 2 shards committed so far are kept; .*--resume"):
        extract(tiny_recipe, out, OPTIONS, teacher_checkpoint=teacher_ckpt, **QUIET)
    assert sorted(read_ledger(out)) == [0, 1]
    assert not (out / ".lock").exists()

    monkeypatch.setattr(StoreWriter, "write_shard", real_write)
    result = extract(tiny_recipe, out, OPTIONS, teacher_checkpoint=teacher_ckpt, resume=True, **QUIET)
    assert result.status == "resumed" and result.rows_written == 96 - 32
    assert _checksums(out) == _checksums(reference)


def test_second_extraction_into_a_locked_store_is_refused(teacher_ckpt, tmp_path):
    out = tmp_path / "busy.zarr"
    env = {**os.environ, "LITCACHE_TINY_SAMPLES": "200", "LITCACHE_TINY_DELAY": "0.01"}
    args = [sys.executable, "-m", "litcache.cli", "extract", TINY, "--out", str(out), "--teacher", str(teacher_ckpt),
            "--chunk-rows", "8", "--shard-rows", "16", "--batch-size", "8", "-q"]
    first = subprocess.Popen(args, env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not (out / ".lock").exists():
            assert time.monotonic() < deadline and first.poll() is None, "the first extraction never took the lock"
            time.sleep(0.05)
        runner = CliRunner(env={"LITCACHE_TINY_SAMPLES": "200"})
        result = runner.invoke(main, args[3:])
        assert result.exit_code == 1
        assert result.output.startswith(f"Error: Store '{out}' is locked by process {first.pid} on host ")
        assert "Traceback" not in result.output
    finally:
        assert first.wait(timeout=120) == 0
    assert verify_store(out).ok
    assert not (out / ".lock").exists()


KILL_DURING_EPOCH_2 = textwrap.dedent("""
    import os, signal, sys
    import litcache.training.step as train  # train_step calls step_losses from there

    real = train.step_losses
    calls = {"n": 0}

    def dying_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == int(os.environ["KILL_AT_STEP"]):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    train.step_losses = dying_step
    from litcache.cli import main
    main(sys.argv[1:])
""")


def test_training_killed_mid_epoch_resumes_from_last_checkpoint(tiny_recipe, tiny_store, tmp_path):
    options = dict(epochs=3, batch_size=16, lr=0.05, evaluate=False)
    [straight] = train_blocks(tiny_recipe, tiny_store, ["resnet8"], tmp_path / "straight", BlockTrainOptions(**options),
                              log=lambda m: None)
    script = tmp_path / "dying.py"
    script.write_text(KILL_DURING_EPOCH_2)
    run = tmp_path / "killed"
    args = [sys.executable, str(script), "train-blocks", TINY, "--store", str(tiny_store), "--student", "resnet8",
            "--out", str(run), "--epochs", "3", "--batch-size", "16", "--lr", "0.05", "--no-eval", "-q"]
    # 48 samples / 16 = 3 steps per epoch: step 5 is in the middle of epoch 2.
    killed = subprocess.run(args, env={**os.environ, "KILL_AT_STEP": "5"}, cwd=ROOT)
    assert killed.returncode == -9
    last = run / "resnet8" / "last.pt"
    assert torch.load(last, weights_only=True)["epoch"] == 1
    assert not (run / "resnet8" / "student.pt").exists()
    assert not [p for p in (run / "resnet8").iterdir() if p.name.endswith(".tmp")]

    resumed = subprocess.run(args + ["--resume"], env={**os.environ, "KILL_AT_STEP": "0"}, cwd=ROOT,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    a = load_student(straight["checkpoint"]).state_dict()
    b = load_student(run / "resnet8" / "student.pt").state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    # Resuming a finished run trains nothing and says so.
    said = []
    [again] = train_blocks(tiny_recipe, tiny_store, ["resnet8"], tmp_path / "straight", BlockTrainOptions(**options),
                           resume=True, log=said.append)
    assert "resnet8: all 3 epochs already trained" in said and len(again["history"]) == 3
