"""Debris: temporary files that killed writers leave in a store. Taking the store's lock (any
extraction, `--resume` included) removes them; `litcache verify` reports them and writes nothing."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import TINY, TINY_STORE_OPTIONS, make_incomplete_store, run_cli, shard_checksums

from litcache.store.arrays import open_store, read_ledger, verify_checksums
from litcache.store.debris import find_debris

TINY_FLAGS = ["--views", "2", "--dtype", "float32", "--chunk-rows", "8", "--shard-rows", "16", "--batch-size", "8",
              "--device", "cpu"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _plant_debris(store: Path, pid: int) -> list[str]:
    """Temporary files as ``StoreLocation.write_bytes`` names them (``.{name}.{pid}.tmp``), where a
    killed writer leaves them: a shard of a committed and of an uncommitted shard, a ledger entry,
    the manifest. Returns their keys."""
    keys = [f"boundaries/0/c/0/0/0/.0.{pid}.tmp", f"logits/c/3/.0.{pid}.tmp",
            f"ledger/.shard-000003.json.{pid}.tmp", f".zarr.json.{pid}.tmp"]
    for key in keys:
        (store / key).parent.mkdir(parents=True, exist_ok=True)
        (store / key).write_bytes(b"\x55" * 4096)
    return keys


def _plant_lookalikes(store: Path) -> list[str]:
    """Files that only resemble litcache's temporary names: never touched."""
    keys = ["boundaries/0/c/.0.tmp", "boundaries/0/c/0.123.tmp", "ledger/.shard-000000.json.tmp"]
    for key in keys:
        (store / key).write_bytes(b"keep")
    return keys


def _real_files(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*"))
            if p.is_file() and not p.name.endswith(".tmp")}


def _extract(out, ckpt, *extra):
    return run_cli("extract", TINY, "--teacher", ckpt, "--out", out, *TINY_FLAGS, *extra)


def test_verify_reports_debris_and_writes_nothing(tiny_store):
    keys = _plant_debris(tiny_store, _dead_pid())
    before = {str(p.relative_to(tiny_store)): p.read_bytes() for p in tiny_store.rglob("*") if p.is_file()}
    result = run_cli("verify", tiny_store)
    assert result.exit_code == 0, result.output  # debris is not corruption
    assert "note: 4 temporary files (16.4 KB) of killed writers, not part of the store" in result.output
    assert "delete them, or run the extract command again, which removes them" in result.output
    report = json.loads(run_cli("verify", tiny_store, "--json").output)
    assert report["ok"] and report["debris"] == sorted(keys) and report["debris_bytes"] == 4 * 4096
    assert {str(p.relative_to(tiny_store)): p.read_bytes() for p in tiny_store.rglob("*") if p.is_file()} == before


def test_rerun_on_a_finished_store_removes_its_debris(tiny_store, teacher_ckpt):
    checksums, real = shard_checksums(tiny_store), _real_files(tiny_store)
    keys = _plant_debris(tiny_store, _dead_pid())
    lookalikes = _plant_lookalikes(tiny_store)
    result = _extract(tiny_store, teacher_ckpt, "--resume")
    assert result.exit_code == 0, result.output
    assert "removed 4 temporary files (16.4 KB) of killed writers" in result.output
    assert result.output.splitlines()[-1] == f"unchanged: {tiny_store} (96 rows)"
    assert not any((tiny_store / key).exists() for key in keys)
    assert all((tiny_store / key).read_bytes() == b"keep" for key in lookalikes)
    assert {k: v for k, v in _real_files(tiny_store).items() if k not in lookalikes} == real  # every real chunk kept
    assert shard_checksums(tiny_store) == checksums and verify_checksums(open_store(tiny_store)) == []
    assert find_debris(tiny_store).files == ()


def test_resume_of_a_half_finished_store_removes_its_debris(tiny_recipe, tiny_store, teacher_ckpt, tmp_path):
    out = make_incomplete_store(tiny_recipe, tmp_path / "half.zarr", teacher_ckpt, TINY_STORE_OPTIONS, committed=2)
    committed = {k: v for k, v in _real_files(out).items() if "/c/" in k}  # the two committed shards' files
    assert committed
    keys = _plant_debris(out, _dead_pid())
    assert len(find_debris(out)) == 4
    result = _extract(out, teacher_ckpt, "--resume")
    assert result.exit_code == 0, result.output
    assert "removed 4 temporary files (16.4 KB) of killed writers" in result.output
    assert "resuming: 2 shards already committed" in result.output
    assert not any((out / key).exists() for key in keys)
    assert all(_real_files(out)[k] == v for k, v in committed.items())  # committed shards untouched
    assert sorted(read_ledger(out)) == list(range(6))
    assert shard_checksums(out) == shard_checksums(tiny_store)
    got, ref = open_store(out), open_store(tiny_store)
    assert verify_checksums(got) == []
    for name in ref.manifest.arrays:
        assert np.array_equal(got.array(name)[:], ref.array(name)[:]), name
    assert find_debris(out).files == () and not (out / ".lock").exists()


def test_a_refused_extraction_removes_nothing(tiny_store, other_teacher_ckpt):
    # Refused before the lock is taken (another teacher, no --overwrite): the store stays as it was.
    keys = _plant_debris(tiny_store, _dead_pid())
    result = _extract(tiny_store, other_teacher_ckpt)
    assert result.exit_code == 1
    assert all((tiny_store / key).exists() for key in keys)


def test_temporary_files_of_live_writers_and_of_foreign_folders_are_kept(tiny_store, teacher_ckpt):
    # A writer still running on this host (a dask worker of a taken-over extraction, a checkpoint
    # being saved), or a folder of the user's inside the store (train-blocks --out STORE/lit): its
    # temporary files are not debris, whatever their name.
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as live:
        try:
            kept = [f"logits/c/3/.0.{live.pid}.tmp", f"lit/resnet8/.last.pt.{_dead_pid()}.tmp"]
            for key in kept:
                (tiny_store / key).parent.mkdir(parents=True, exist_ok=True)
                (tiny_store / key).write_bytes(b"live")
            [dead] = [f"logits/c/3/.1.{_dead_pid()}.tmp"]
            (tiny_store / dead).write_bytes(b"gone")
            assert find_debris(tiny_store).files == (dead,)
            result = _extract(tiny_store, teacher_ckpt, "--resume")
            assert result.exit_code == 0, result.output
            assert "removed 1 temporary file (4 B) of killed writers" in result.output
            assert all((tiny_store / key).read_bytes() == b"live" for key in kept) and not (tiny_store / dead).exists()
        finally:
            live.kill()


def test_extraction_killed_writing_its_first_manifest_starts_again(teacher_ckpt, tmp_path):
    # Killed inside the very first zarr.json write: only the lock of a dead process and the
    # half-written manifest are there. That is no data of anyone's: extract starts the store anew.
    out = tmp_path / "s.zarr"
    out.mkdir()
    (out / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": _dead_pid()}))
    (out / f".zarr.json.{_dead_pid()}.tmp").write_bytes(b'{"attri')
    result = _extract(out, teacher_ckpt)
    assert result.exit_code == 0, result.output
    assert open_store(out).complete and find_debris(out).files == ()
