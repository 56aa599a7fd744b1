"""Nothing lost, ever: outputs held by one run at a time, stores mended in place, outputs never
inside a store, and every bad input refused with one ``Error:`` line before any work starts.

Each test fails without its fix (the cases a new user met on 0.1, README "Failure behaviour")."""

from __future__ import annotations

import json
import socket
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import (
    PYTHON,
    REPO,
    TINY,
    TINY_STORE_OPTIONS,
    assert_clean_error,
    make_incomplete_store,
    quiet,
    run_cli,
    shard_checksums,
    subprocess_env,
)

from litcache import BlockTrainOptions, ExtractOptions, extract, train_blocks, train_teacher, verify_store
from litcache.errors import OptionError, OutputLockedError
from litcache.store.arrays import read_ledger
from litcache.training.student import assemble

BLOCKS = ("--student", "resnet8", "--epochs", "1", "--batch-size", "16", "--no-eval", "-q")

#: Runs the CLI with its first optimizer step held until the file $RELEASE exists, so that a second
#: process meets the first one at work.
HELD_CLI = textwrap.dedent("""
    import os, sys, time
    import litcache.training.loop as loop
    real = loop.optimizer_step

    def held(*args, **kwargs):
        deadline = time.monotonic() + 120
        while not os.path.exists(os.environ["RELEASE"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        return real(*args, **kwargs)

    import litcache.training.step, litcache.training.teacher
    litcache.training.step.optimizer_step = held
    litcache.training.teacher.optimizer_step = held
    from litcache.cli import main
    main(sys.argv[1:], prog_name="litcache")
""")


def _start_held(tmp_path: Path, *args) -> subprocess.Popen:
    script = tmp_path / "held_cli.py"
    script.write_text(HELD_CLI)
    return subprocess.Popen([PYTHON, str(script), *map(str, args)], env=subprocess_env(RELEASE=str(tmp_path / "go")),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "litcache.cli", *map(str, args)], env=subprocess_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def _assert_refused_as_busy(done: subprocess.CompletedProcess, out: Path) -> None:
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert errors and errors[0].startswith(f"Error: '{out}' is being written by another litcache run"), done.stderr
    assert "Traceback" not in done.stderr


# ---------------------------------------------------------------------------------------------
# 1. Two runs into one output


def test_two_train_blocks_into_one_out_at_once_the_second_is_refused(tiny_store, tmp_path):
    out = tmp_path / "runCC2"
    first = _start_held(tmp_path, "train-blocks", TINY, "--store", tiny_store, "--out", out, *BLOCKS, "--lr", "0.05",
                        "--epochs", "2")
    _wait_for(out / "resnet8" / ".lock", first)
    second = _cli("train-blocks", TINY, "--store", tiny_store, "--out", out, *BLOCKS, "--lr", "0.01", "--epochs", "3")
    _assert_refused_as_busy(second, out / "resnet8")
    (tmp_path / "go").touch()
    assert first.wait(timeout=300) == 0, first.communicate()
    saved = torch.load(out / "resnet8" / "student.pt", weights_only=True)
    assert saved["config"]["lr"] == 0.05 and saved["epoch"] == 2  # the first run's, whole
    assert not (out / "resnet8" / ".lock").exists()


def test_two_train_teachers_into_one_file_at_once_the_second_is_refused(tmp_path):
    out = tmp_path / "tcc.pt"
    first = _start_held(tmp_path, "train-teacher", TINY, "--out", out, "--epochs", "2", "--batch-size", "16", "-q")
    lock = tmp_path / ".tcc.pt.lock"
    _wait_for(lock, first)
    second = _cli("train-teacher", TINY, "--out", out, "--epochs", "1", "--batch-size", "16", "--lr", "0.01", "-q")
    _assert_refused_as_busy(second, out)
    (tmp_path / "go").touch()
    assert first.wait(timeout=300) == 0, first.communicate()
    assert torch.load(out, weights_only=True)["epoch"] == 2 and not lock.exists()


def _live_lock(path: Path) -> subprocess.Popen:
    """A lock file held by a live process other than this one."""
    holder = subprocess.Popen([PYTHON, "-c", "import time; time.sleep(120)"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": holder.pid, "since": time.time()}))
    return holder


def test_sweep_and_assemble_refuse_an_output_another_run_holds_and_take_over_a_dead_ones(tiny_recipe, tiny_store,
                                                                                          tmp_path):
    parts = [train_blocks(tiny_recipe, tiny_store, ["resnet8"], tmp_path / f"s{i}",
                          BlockTrainOptions(mode="ir", section=i, epochs=1, batch_size=16), log=quiet)[0]["checkpoint"]
             for i in (1, 2, 3)]
    out = tmp_path / "assembled.pt"
    holders = [_live_lock(tmp_path / "sweep" / ".lock"), _live_lock(tmp_path / ".assembled.pt.lock")]
    try:
        result = run_cli("sweep", TINY, "--store", tiny_store, "--student", "resnet8", "--epochs", "1", "--workers",
                         "1", "--out", tmp_path / "sweep", "-q")
        assert_clean_error(result, f"'{tmp_path / 'sweep'}' is being written by another litcache run (process "
                                   f"{holders[0].pid}", 1)
        with pytest.raises(OutputLockedError, match="is being written by another litcache run"):
            assemble(parts, out)
        assert not out.exists() and not (tmp_path / "sweep" / "results.csv").exists()
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()
    assert assemble(parts, out)["checkpoint"] == str(out)  # the lock of a process that is gone is taken over
    assert not (tmp_path / ".assembled.pt.lock").exists()


# ---------------------------------------------------------------------------------------------
# 2. Resume trusts the disk, not the ledger; a damaged store is mended in place


def test_resume_re_extracts_a_committed_shard_whose_file_was_deleted(tiny_recipe, teacher_ckpt, tmp_path):
    reference = tmp_path / "ref.zarr"
    extract(tiny_recipe, reference, TINY_STORE_OPTIONS, teacher_checkpoint=teacher_ckpt, progress=False, log=quiet)
    out = make_incomplete_store(tiny_recipe, tmp_path / "s.zarr", teacher_ckpt, TINY_STORE_OPTIONS, committed=3)
    assert sorted(read_ledger(out)) == [0, 1, 2]
    (out / "boundaries" / "2" / "c" / "1" / "0" / "0" / "0").unlink()  # a committed shard's file is gone
    said = []
    result = extract(tiny_recipe, out, TINY_STORE_OPTIONS, teacher_checkpoint=teacher_ckpt, resume=True,
                     progress=False, log=said.append)
    assert result.status == "repaired" and result.rows_written == 16 * 4  # shard 1 again, and shards 3-5
    assert any("shard 1 of" in line and "missing" in line for line in said), said
    assert verify_store(out).ok and shard_checksums(out) == shard_checksums(reference)


def test_a_complete_store_with_a_lost_shard_is_mended_by_resume_and_a_flipped_byte_by_repair(tiny_store, tmp_path):
    before = shard_checksums(tiny_store)
    shard = tiny_store / "logits" / "c" / "4" / "0"
    shard.unlink()
    assert not verify_store(tiny_store).ok
    result = run_cli("extract", TINY, "--out", tiny_store, "--teacher", _teacher(tiny_store), "--views", "2",
                     "--dtype", "float32", "--chunk-rows", "8", "--shard-rows", "16", "--batch-size", "8", "--resume",
                     "--json", "-q")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["status"] == "repaired" and json.loads(result.stdout)["rows_written"] == 16
    assert verify_store(tiny_store).ok and shard_checksums(tiny_store) == before

    data = bytearray(shard.read_bytes())
    data[20] ^= 0xFF  # same size: only the checksums see it
    shard.write_bytes(bytes(data))
    args = ["extract", TINY, "--out", tiny_store, "--teacher", _teacher(tiny_store), "--views", "2", "--dtype",
            "float32",
            "--chunk-rows", "8", "--shard-rows", "16", "--batch-size", "8", "--json", "-q"]
    assert json.loads(run_cli(*args, "--resume").stdout)["status"] == "unchanged"  # sizes match: --resume trusts them
    repaired = run_cli(*args, "--repair")
    assert repaired.exit_code == 0, repaired.output
    assert json.loads(repaired.stdout)["status"] == "repaired" and json.loads(repaired.stdout)["rows_written"] == 16
    assert verify_store(tiny_store).ok and shard_checksums(tiny_store) == before
    assert json.loads(run_cli(*args, "--repair").stdout)["status"] == "unchanged"


def _extract_args(store: Path) -> list:
    return ["extract", TINY, "--out", store, "--teacher", _teacher(store), "--views", "2", "--dtype", "float32",
            "--chunk-rows", "8", "--shard-rows", "16", "--batch-size", "8", "--json", "-q"]


def test_a_repair_killed_after_marking_the_store_unfinished_is_finished_by_resume(tiny_store):
    """Killed between the two steps of uncommitting a damaged shard (the manifest says unfinished, the
    ledger still holds every entry): --resume must not finalize the damaged bytes as they are."""
    from litcache.store.arrays import forget_shards

    before = shard_checksums(tiny_store)
    shard = tiny_store / "boundaries" / "1" / "c" / "2" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[30] ^= 0xFF
    shard.write_bytes(bytes(data))
    forget_shards(tiny_store, [])  # the first step only: marked unfinished, nothing uncommitted
    done = run_cli(*_extract_args(tiny_store), "--resume")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["status"] == "repaired" and json.loads(done.stdout)["rows_written"] == 16
    assert verify_store(tiny_store).ok and shard_checksums(tiny_store) == before


def test_repair_writes_a_damaged_teacher_tensor_again(tiny_store):
    from litcache.store.arrays import damaged_teacher_tensors

    weight = next(p for p in (tiny_store / "teacher" / "stem").iterdir() if p.is_dir())
    chunk = next(f for f in weight.rglob("*") if f.is_file() and f.name != "zarr.json")
    chunk.write_bytes(b"\0" * len(chunk.read_bytes()))
    assert not verify_store(tiny_store).ok and damaged_teacher_tensors(tiny_store) == [f"teacher/stem/{weight.name}"]
    done = run_cli(*_extract_args(tiny_store), "--repair")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["status"] == "repaired" and json.loads(done.stdout)["rows_written"] == 0
    assert verify_store(tiny_store).ok


def test_repair_and_overwrite_together_are_refused(tiny_store):
    result = run_cli(*_extract_args(tiny_store), "--repair", "--overwrite")
    assert_clean_error(result, "--repair mends a store in place and --overwrite replaces it", 1)
    assert verify_store(tiny_store).ok


def _teacher(store: Path) -> str:
    return json.loads((store / "zarr.json").read_text())["attributes"]["litcache"]["teacher"]["checkpoint"]


# ---------------------------------------------------------------------------------------------
# 3. Outputs inside a store; --overwrite of a store holding a user's files


def test_outputs_inside_a_store_are_refused(tiny_recipe, tiny_store, teacher_ckpt, tmp_path):
    for out in (tiny_store, tiny_store / "run"):
        result = run_cli("train-blocks", TINY, "--store", tiny_store, "--out", out, *BLOCKS)
        assert_clean_error(result, f"Expected --out outside any litcache store, got '{out}'", 1)
    result = run_cli("train-teacher", TINY, "--out", tiny_store / "t.pt", "--epochs", "1")
    assert_clean_error(result, "Expected --out outside any litcache store", 1)
    result = run_cli("sweep", TINY, "--store", tiny_store, "--student", "resnet8", "--workers", "1", "--out",
                     tiny_store / "sweep")
    assert_clean_error(result, "Expected --out outside any litcache store", 1)
    result = run_cli("extract", TINY, "--teacher", teacher_ckpt, "--out", tiny_store / "inner.zarr")
    assert_clean_error(result, "Expected --out outside any other litcache store", 1)
    assert sorted(p.name for p in tiny_store.iterdir() if p.name not in ("boundaries", "ledger", "teacher")) == [
        "labels", "logits", "source_index", "view", "view_params", "zarr.json"]
    assert verify_store(tiny_store).ok


def test_overwrite_refuses_a_store_that_holds_a_users_files(tiny_store, teacher_ckpt):
    (tiny_store / "NOTES.txt").write_text("mine")
    (tiny_store / "mydata").mkdir()
    (tiny_store / "mydata" / "x.csv").write_text("1,2")
    result = run_cli("extract", TINY, "--teacher", teacher_ckpt, "--out", tiny_store, "--views", "3", "--overwrite")
    line = assert_clean_error(result, f"Store '{tiny_store}' also holds files litcache did not write", 1)
    assert "NOTES.txt" in line and "mydata" in line
    assert (tiny_store / "NOTES.txt").read_text() == "mine" and (tiny_store / "mydata" / "x.csv").exists()
    assert verify_store(tiny_store).ok


# ---------------------------------------------------------------------------------------------
# 4. assemble --out naming one of its inputs


def test_assemble_refuses_to_write_over_one_of_its_parts(tiny_recipe, tiny_store, tmp_path):
    parts = [train_blocks(tiny_recipe, tiny_store, ["resnet8"], tmp_path / f"s{i}",
                          BlockTrainOptions(mode="ir", section=i, epochs=1, batch_size=16), log=quiet)[0]["checkpoint"]
             for i in (1, 2, 3)]
    before = Path(parts[1]).read_bytes()
    result = run_cli("assemble", *parts, "--out", parts[1])
    assert_clean_error(result, f"Expected --out to be a new checkpoint, but '{parts[1]}' is one of the parts", 1)
    assert Path(parts[1]).read_bytes() == before
    assert run_cli("assemble", *parts, "--out", tmp_path / "whole.pt").exit_code == 0  # and assembling still works


# ---------------------------------------------------------------------------------------------
# The table: tracebacks and silent acceptance


@pytest.mark.parametrize("flags, message", [
    (("--views", "100000000000"), "Expected a store of at most 1,000,000 shards"),
    (("--shard-rows", "4000000000000", "--chunk-rows", "8"), "Expected a chunk, a shard and its index to fit"),
    (("--chunk-rows", "4000000000000"), "Expected a chunk, a shard and its index to fit"),
])
def test_absurd_sizes_are_refused_before_anything_is_allocated(teacher_ckpt, tmp_path, flags, message):
    out = tmp_path / "huge.zarr"
    result = run_cli("extract", TINY, "--teacher", teacher_ckpt, "--out", out, *flags)
    assert_clean_error(result, message, 1)
    assert not out.exists()


@pytest.mark.parametrize("seed", ["-1", str(2**70)])
def test_every_command_takes_the_same_seeds(tiny_store, teacher_ckpt, tmp_path, seed):
    commands = [("extract", TINY, "--teacher", teacher_ckpt, "--out", tmp_path / "e.zarr"),
                ("train-blocks", TINY, "--store", tiny_store, "--out", tmp_path / "b", *BLOCKS),
                ("train-teacher", TINY, "--out", tmp_path / "t.pt", "--epochs", "1"),
                ("sweep", TINY, "--store", tiny_store, "--student", "resnet8", "--workers", "1", "--out",
                 tmp_path / "s")]
    for command in commands:
        result = run_cli(*command, "--seed", seed)
        assert_clean_error(result, "Invalid value for '--seed'", 2)
        assert "0<=x<=4294967295" in result.output
    assert not any((tmp_path / name).exists() for name in ("e.zarr", "b", "t.pt", "s"))


def test_the_library_refuses_the_same_seeds(tiny_recipe, tiny_store, tmp_path):
    for seed in (-1, 2**70):
        with pytest.raises(OptionError, match="--seed to be a whole number from 0 to 4294967295"):
            ExtractOptions(seed=seed)
        with pytest.raises(OptionError, match="--seed to be a whole number"):
            BlockTrainOptions(seed=seed)
        with pytest.raises(OptionError, match="--seed to be a whole number"):
            train_teacher(tiny_recipe, tmp_path / "t.pt", seed=seed, log=quiet)
    assert not (tmp_path / "t.pt").exists()


@pytest.mark.parametrize("flags, message", [
    (("--milestones=-1,0",), "Expected --milestones to be distinct epochs >= 1"),
    (("--milestones", "5,5"), "Expected --milestones to be distinct epochs >= 1"),
    (("--lr", "nan"), "Expected --lr to be a finite number, got nan"),
    (("--lr", "inf"), "Expected --lr to be a finite number, got inf"),
])
def test_schedules_that_cannot_train_are_refused(tiny_store, tmp_path, flags, message):
    blocks = run_cli("train-blocks", TINY, "--store", tiny_store, "--out", tmp_path / "b", *BLOCKS, *flags)
    assert_clean_error(blocks, message, 1)
    teacher = run_cli("train-teacher", TINY, "--out", tmp_path / "t.pt", "--epochs", "1", *flags)
    assert_clean_error(teacher, message, 1)
    assert not (tmp_path / "b" / "resnet8").exists() and not (tmp_path / "t.pt").exists()


def test_an_output_that_cannot_be_written_is_refused_before_any_work(tiny_recipe, tiny_store, teacher_ckpt, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    under = blocker / "out"  # nothing can be created under a file, for root too
    parts = [train_blocks(tiny_recipe, tiny_store, ["resnet8"], tmp_path / f"s{i}",
                          BlockTrainOptions(mode="ir", section=i, epochs=1, batch_size=16), log=quiet)[0]["checkpoint"]
             for i in (1, 2, 3)]
    commands = [("extract", TINY, "--teacher", teacher_ckpt, "--out", under / "s.zarr"),
                ("train-blocks", TINY, "--store", tiny_store, "--out", under, *BLOCKS),
                ("train-teacher", TINY, "--out", under / "t.pt", "--epochs", "1"),
                ("sweep", TINY, "--store", tiny_store, "--student", "resnet8", "--workers", "1", "--out", under),
                ("assemble", *parts, "--out", under / "a.pt")]
    for command in commands:
        result = run_cli(*command)
        line = assert_clean_error(result, "Expected --out ", 1)
        assert f"to be writable, but '{blocker}' is a file" in line, line
    assert blocker.read_text() == "not a folder"


@pytest.fixture
def read_only_store(tiny_store, tmp_path):
    """``tiny_store`` seen through a read-only bind mount (which holds for root too)."""
    view = tmp_path / "ro.zarr"
    view.mkdir()
    mounted = subprocess.run(["mount", "--bind", str(tiny_store), str(view)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {mounted.stderr.decode().strip()}")
    try:
        if subprocess.run(["mount", "-o", "remount,ro,bind", str(view)], capture_output=True).returncode != 0:
            pytest.skip("cannot remount read-only here")
        yield view
    finally:
        subprocess.run(["umount", str(view)], capture_output=True)


def test_resume_of_an_intact_read_only_store_writes_nothing_and_succeeds(read_only_store):
    done = run_cli(*_extract_args(read_only_store), "--resume")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["status"] == "unchanged"


def test_overwrite_of_a_read_only_store_is_refused_before_any_work(read_only_store, teacher_ckpt):
    result = run_cli("extract", TINY, "--teacher", teacher_ckpt, "--out", read_only_store, "--views", "3",
                     "--overwrite")
    line = assert_clean_error(result, f"Expected --out '{read_only_store}' to be writable, but folder", 1)
    assert "is not writable here" in line
    assert verify_store(read_only_store).ok


@pytest.mark.parametrize("command", [("info", "foo://x"), ("extract", TINY, "--out", "foo://x/y.zarr"),
                                     ("train-blocks", TINY, "--store", "foo://x", "--out", "run", *BLOCKS)])
def test_a_store_url_of_an_unknown_protocol(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run_cli(*command)
    line = assert_clean_error(result, "Expected a local path or a URL whose protocol fsspec knows", 1)
    assert "'foo://x" in line and not (tmp_path / "run").exists()


def test_a_remote_store_without_credentials(monkeypatch):
    pytest.importorskip("s3fs")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "LITCACHE_STORAGE_OPTIONS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    result = run_cli("info", "s3://litcache-no-such-bucket/x.zarr")
    line = assert_clean_error(result, "Expected credentials for the remote store", 1)
    assert "NoCredentialsError" in line and len(result.output.splitlines()) == 1


def test_a_recipe_that_exits(tmp_path):
    recipe = tmp_path / "exits.py"
    recipe.write_text("import sys\nsys.exit(3)\n")
    result = run_cli("show", recipe)
    assert_clean_error(result, f"Recipe file '{recipe}' called sys.exit(3) while loading", 1)


class NotWeights:
    """Any object but tensors and plain containers: a weights-only load refuses it."""


def test_a_garbage_checkpoint_gives_no_unsafe_advice(tmp_path):
    files = {"bytes.pt": b"garbage bytes here not a checkpoint", "repeated.pt": b"this is not a checkpoint" * 10}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    torch.save({"state_dict": NotWeights()}, tmp_path / "object.pt")  # a pickle of code, not of weights
    for name in [*files, "object.pt"]:
        garbage = tmp_path / name
        result = run_cli("extract", TINY, "--teacher", garbage, "--out", tmp_path / "s.zarr")
        line = assert_clean_error(result, f"Checkpoint '{garbage}' does not load as weights-only torch data (", 1)
        # torch's own text advises weights_only=False, which would run the file's code: it must not reach the user
        assert "weights_only" not in line.split("torch data", 1)[1] and "arbitrary code" not in line, line
        assert not (tmp_path / "s.zarr").exists()
    assert "Unsupported global" in line and "NotWeights" in line  # the unpickler's reason is kept


def test_a_stale_train_blocks_lock_is_taken_over(tiny_recipe, tiny_store, tmp_path):
    out = tmp_path / "run"
    dead = subprocess.Popen([PYTHON, "-c", "pass"])
    dead.wait()
    (out / "resnet8").mkdir(parents=True)
    (out / "resnet8" / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "since": 0}))
    [result] = train_blocks(tiny_recipe, tiny_store, ["resnet8"], out, BlockTrainOptions(epochs=1, batch_size=16,
                                                                                          evaluate=False), log=quiet)
    assert Path(result["checkpoint"]).exists() and not (out / "resnet8" / ".lock").exists()
