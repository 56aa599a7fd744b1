"""Resume after `litcache extract` is stopped: SIGKILLed mid-run, in the middle of a shard write,
while writing a ledger entry, right after a commit, while committing the manifest and while
creating the store, or interrupted with Ctrl-C. The
resumed store must be the store an uninterrupted run makes, byte for byte."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import PYTHON, TINY, load_tiny, quiet, run_cli, shard_checksums, subprocess_env

from litcache import ExtractOptions, extract
from litcache.errors import IncompleteStoreError
from litcache.store.arrays import open_store, read_ledger, verify_checksums
from litcache.store.manifest import read_manifest

SAMPLES = 256  # with 16-row shards: 16 shards
OPTIONS = dict(chunk_rows=8, shard_rows=16, batch_size=8)
NUM_SHARDS = SAMPLES // 16


def _cli_args(out: Path, ckpt: Path) -> list[str]:
    return ["extract", TINY, "--teacher", str(ckpt), "--out", str(out), "--chunk-rows", "8",
            "--shard-rows", "16", "--batch-size", "8", "--device", "cpu"]


@pytest.fixture(scope="module")
def reference(teacher_ckpt, tmp_path_factory) -> Path:
    """An uninterrupted extraction with the same options."""
    out = tmp_path_factory.mktemp("reference") / "ref.zarr"
    extract(load_tiny(SAMPLES), out, ExtractOptions(**OPTIONS), teacher_checkpoint=teacher_ckpt,
            progress=False, log=quiet)
    assert len(shard_checksums(out)) == NUM_SHARDS
    return out


def _assert_same_store(store: Path, reference: Path) -> None:
    assert shard_checksums(store) == shard_checksums(reference)
    got, ref = open_store(store), open_store(reference)
    assert got.manifest.identity == ref.manifest.identity
    # The manifest's checksums come from memory: check the bytes on disk too.
    assert verify_checksums(got) == []
    for name in ref.manifest.arrays:
        assert np.array_equal(got.array(name)[:], ref.array(name)[:]), name
    assert not (store / ".lock").exists()


def _assert_killed_state(out: Path, pid: int, committed_at_least: int, committed_at_most: int) -> None:
    """The killed run left an incomplete store, its committed shards, and its (now stale) lock."""
    committed = read_ledger(out)
    assert committed_at_least <= len(committed) <= committed_at_most, sorted(committed)
    lock = json.loads((out / ".lock").read_text())
    assert lock["pid"] == pid
    with pytest.raises(IncompleteStoreError, match=r"--resume"):
        open_store(out)
    assert read_manifest(out).complete is False


def _refuses_without_resume(out: Path, ckpt: Path) -> None:
    result = run_cli(*_cli_args(out, ckpt), "-q", env={"LITCACHE_TINY_SAMPLES": str(SAMPLES)})
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    line = [text for text in result.output.splitlines() if text.startswith("Error:")][0]
    assert line.startswith(f"Error: Store '{out}' holds an unfinished extraction with these same options. "
                           "Pass --resume")


def _resume_in_process(out: Path, ckpt: Path, rows_left: int) -> None:
    result = run_cli(*_cli_args(out, ckpt), "--resume", env={"LITCACHE_TINY_SAMPLES": str(SAMPLES)})
    assert result.exit_code == 0, result.output
    assert "resuming: " in result.output
    assert result.output.splitlines()[-1] == f"resumed: {out} ({SAMPLES} rows)"
    assert f"({rows_left} extracted in" in result.output


def _default_sigint() -> None:
    # A shell's background job (`make test &`) starts with SIGINT ignored, and Python then keeps
    # ignoring it: give the child the default, so Ctrl-C reaches it as it would from a terminal.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_slow_extract(out: Path, ckpt: Path, log: Path) -> subprocess.Popen:
    with open(log, "wb") as err:
        return subprocess.Popen([PYTHON, "-m", "litcache.cli", *_cli_args(out, ckpt), "-q"],
                                env=subprocess_env(LITCACHE_TINY_SAMPLES=str(SAMPLES), LITCACHE_TINY_DELAY="0.01"),
                                stdout=subprocess.DEVNULL, stderr=err, preexec_fn=_default_sigint)


def _wait_for_shards(proc: subprocess.Popen, out: Path, log: Path, count: int = 2) -> None:
    deadline = time.monotonic() + 90
    while True:
        ledger = out / "ledger"
        if ledger.is_dir() and len(list(ledger.glob("shard-*.json"))) >= count:
            return
        assert proc.poll() is None, (f"extract ended (rc {proc.returncode}) before it could be stopped:\n"
                                     f"{log.read_text()}")
        assert time.monotonic() < deadline, "no shard committed in time"
        time.sleep(0.01)


def test_resume_after_kill_mid_run(teacher_ckpt, reference, tmp_path):
    out, log = tmp_path / "killed.zarr", tmp_path / "killed.log"
    proc = _start_slow_extract(out, teacher_ckpt, log)
    try:
        _wait_for_shards(proc, out, log)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()  # reaped, so its pid is dead (a zombie would still hold the lock)
    assert proc.returncode == -signal.SIGKILL

    _assert_killed_state(out, proc.pid, 2, NUM_SHARDS - 1)
    _refuses_without_resume(out, teacher_ckpt)

    # Resume as a real process too: it takes over the dead process's lock and finishes the rest.
    done = len(read_ledger(out))
    resumed = subprocess.run([PYTHON, "-m", "litcache.cli", *_cli_args(out, teacher_ckpt), "--resume"],
                             env=subprocess_env(LITCACHE_TINY_SAMPLES=str(SAMPLES)), capture_output=True, text=True,
                             timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip() == f"resumed: {out} ({SAMPLES} rows)"
    assert f"resuming: {done} shards already committed" in resumed.stderr
    assert f"({SAMPLES - 16 * done} extracted in" in resumed.stderr
    _assert_same_store(out, reference)


def test_resume_after_ctrl_c(teacher_ckpt, reference, tmp_path):
    out, log = tmp_path / "interrupted.zarr", tmp_path / "interrupted.log"
    proc = _start_slow_extract(out, teacher_ckpt, log)
    try:
        _wait_for_shards(proc, out, log)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, log.read_text()
    assert ("Error: interrupted. Committed work is kept; run the same command with --resume to continue."
            in log.read_text())
    assert "Traceback" not in log.read_text()
    assert not (out / ".lock").exists()  # a clean exit releases its lock
    done = len(read_ledger(out))
    assert 2 <= done < NUM_SHARDS
    with pytest.raises(IncompleteStoreError, match=r"--resume"):
        open_store(out)
    _resume_in_process(out, teacher_ckpt, SAMPLES - 16 * done)
    _assert_same_store(out, reference)


def _wrapper(tmp_path: Path, patch: str) -> Path:
    """A script that patches litcache, then runs the CLI: a process killed at an exact point."""
    path = tmp_path / "killer.py"
    path.write_text("import os, signal, sys\nimport numpy as np\nfrom litcache.store.arrays import StoreWriter\n"
                    + textwrap.dedent(patch)
                    + "\nfrom litcache.cli import main\nmain(prog_name='litcache')\n")
    return path


def _run_killed(wrapper: Path, out: Path, ckpt: Path) -> int:
    proc = subprocess.run([PYTHON, str(wrapper), *_cli_args(out, ckpt), "-q"],
                          env=subprocess_env(LITCACHE_TINY_SAMPLES=str(SAMPLES)), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    return json.loads((out / ".lock").read_text())["pid"]


def test_resume_after_kill_during_shard_write(teacher_ckpt, reference, tmp_path):
    # Shard 2's first array is written (with garbage, as a torn write could leave it), then the
    # process dies before its other arrays and its ledger entry.
    wrapper = _wrapper(tmp_path, """
        _write_shard = StoreWriter.write_shard

        def write_shard(self, index, start, data, **kwargs):
            if index == 2:
                import time
                from litcache.store.arrays import read_ledger
                while len(read_ledger(self.location)) < 2:  # shard 1 may still be committing beside this one
                    time.sleep(0.01)
                name = next(iter(self._arrays))
                torn = np.ascontiguousarray(data[name]).copy()
                torn.view(np.uint8)[...] = 0x55
                self._arrays[name][start:start + len(torn)] = torn
                os.kill(os.getpid(), signal.SIGKILL)
            return _write_shard(self, index, start, data, **kwargs)

        StoreWriter.write_shard = write_shard
    """)
    out = tmp_path / "torn.zarr"
    pid = _run_killed(wrapper, out, teacher_ckpt)
    _assert_killed_state(out, pid, 2, 2)
    assert sorted(read_ledger(out)) == [0, 1]
    assert any((out / "boundaries" / "0" / "c").rglob("*"))  # the torn write did reach the disk
    _refuses_without_resume(out, teacher_ckpt)
    _resume_in_process(out, teacher_ckpt, SAMPLES - 32)
    _assert_same_store(out, reference)


def test_resume_after_kill_during_a_ledger_write(teacher_ckpt, reference, tmp_path):
    # Shard 3's arrays are written and its ledger entry sits in a temporary file: killed before the
    # rename that commits it, so shard 3 is not committed and is extracted again.
    wrapper = _wrapper(tmp_path, """
        import litcache.store.arrays as store

        def write_atomic(path, data):
            if path.name == "shard-000003.json":
                tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                tmp.write_bytes(data)
                os.kill(os.getpid(), signal.SIGKILL)
            return _write_atomic(path, data)

        _write_atomic = store.write_atomic
        store.write_atomic = write_atomic
    """)
    out = tmp_path / "ledger.zarr"
    pid = _run_killed(wrapper, out, teacher_ckpt)
    _assert_killed_state(out, pid, 3, 3)
    assert sorted(read_ledger(out)) == [0, 1, 2]
    assert list((out / "ledger").glob(".shard-000003.json.*.tmp"))  # the uncommitted entry is ignored
    _refuses_without_resume(out, teacher_ckpt)
    _resume_in_process(out, teacher_ckpt, SAMPLES - 48)
    _assert_same_store(out, reference)


def test_resume_after_kill_right_after_a_commit(teacher_ckpt, reference, tmp_path):
    # Killed between shards: shard 1 is fully committed, nothing of shard 2 is written yet.
    wrapper = _wrapper(tmp_path, """
        _write_shard = StoreWriter.write_shard

        def write_shard(self, index, start, data, **kwargs):
            entry = _write_shard(self, index, start, data, **kwargs)
            if index == 1:
                os.kill(os.getpid(), signal.SIGKILL)
            return entry

        StoreWriter.write_shard = write_shard
    """)
    out = tmp_path / "between.zarr"
    pid = _run_killed(wrapper, out, teacher_ckpt)
    _assert_killed_state(out, pid, 2, 2)
    _refuses_without_resume(out, teacher_ckpt)
    _resume_in_process(out, teacher_ckpt, SAMPLES - 32)
    _assert_same_store(out, reference)


def test_resume_after_kill_during_finalize(teacher_ckpt, reference, tmp_path):
    wrapper = _wrapper(tmp_path, """
        def finalize(self, *args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)

        StoreWriter.finalize = finalize
    """)
    out = tmp_path / "unfinished.zarr"
    pid = _run_killed(wrapper, out, teacher_ckpt)
    _assert_killed_state(out, pid, NUM_SHARDS, NUM_SHARDS)
    result = run_cli("info", out)
    assert result.exit_code == 0 and f"INCOMPLETE ({NUM_SHARDS}/{NUM_SHARDS} shards" in result.output
    _refuses_without_resume(out, teacher_ckpt)
    _resume_in_process(out, teacher_ckpt, 0)
    _assert_same_store(out, reference)
    assert read_manifest(out).complete is True


def test_rerun_after_kill_during_store_creation(teacher_ckpt, tmp_path):
    wrapper = tmp_path / "killer.py"
    wrapper.write_text(textwrap.dedent("""
        import os, signal
        import zarr

        _create_array = zarr.Group.create_array
        calls = []

        def create_array(self, *args, **kwargs):
            calls.append(1)
            if len(calls) == 2:  # the store's second array
                os.kill(os.getpid(), signal.SIGKILL)
            return _create_array(self, *args, **kwargs)

        zarr.Group.create_array = create_array
        from litcache.cli import main
        main(prog_name="litcache")
    """))
    out = tmp_path / "new.zarr"
    args = ["extract", TINY, "--teacher", str(teacher_ckpt), "--out", str(out), "--limit", "16", "--chunk-rows", "8",
            "-q"]
    proc = subprocess.run([PYTHON, str(wrapper), *args], env=subprocess_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert out.is_dir()
    # The directory is litcache's own half-made store (its lock names the dead process), not a
    # foreign directory: --resume starts it again (no shard was committed), as does --overwrite.
    assert read_ledger(out) == {}
    result = run_cli(*args, "--resume")
    assert result.exit_code == 0, result.output
    store = open_store(out)
    assert store.complete and store.rows == 16 and verify_checksums(store) == []
    assert not (out / ".lock").exists()
    shutil.rmtree(out)
    proc = subprocess.run([PYTHON, str(wrapper), *args], env=subprocess_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    result = run_cli(*args, "--overwrite")
    assert result.exit_code == 0, result.output
    assert open_store(out).complete
