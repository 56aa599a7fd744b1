"""The store under faults: a damaged manifest that --overwrite replaces, a durable manifest, and a
disk that fills up while a store is created, written or finalized."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import zarr
from conftest import TINY, assert_clean_error, run_cli, shard_checksums

from litcache.errors import DamagedStoreError, NotAStoreError
from litcache.store.arrays import open_store, read_ledger, verify_checksums
from litcache.store.location import StoreLocation
from litcache.store.manifest import read_manifest

#: The options of conftest's ``tiny_store`` (48 samples x 2 views, 6 shards), as flags.
TINY_FLAGS = ["--views", "2", "--dtype", "float32", "--chunk-rows", "8", "--shard-rows", "16", "--batch-size", "8",
              "--device", "cpu"]


def _extract(out, ckpt, *extra):
    return run_cli("extract", TINY, "--teacher", ckpt, "--out", out, *TINY_FLAGS, *extra)


def _snapshot(directory: Path) -> dict:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


# --- a damaged manifest ------------------------------------------------------------------------------

DAMAGES = {
    "garbage": lambda meta: meta.write_bytes(b'{"attributes": {"litcache": {"form'),  # torn mid-write
    "missing": lambda meta: meta.unlink(),
    "no-manifest": lambda meta: meta.write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}'),
    "lacks-keys": lambda meta: meta.write_text(json.dumps(
        {"zarr_format": 3, "node_type": "group",
         "attributes": {"litcache": {"format": "litcache-store", "format_version": 1}}})),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_manifest_advises_overwrite_and_overwrite_replaces_it(damage, tiny_store, teacher_ckpt):
    checksums = shard_checksums(tiny_store)
    DAMAGES[damage](tiny_store / "zarr.json")
    with pytest.raises(DamagedStoreError, match="--overwrite"):
        read_manifest(tiny_store)
    for result in (run_cli("info", tiny_store), run_cli("verify", tiny_store),
                   _extract(tiny_store, teacher_ckpt, "--resume")):
        line = assert_clean_error(result, f"Store '{tiny_store}' is a litcache store whose manifest", 1)
        assert f"--out {tiny_store} --overwrite" in line
    result = _extract(tiny_store, teacher_ckpt, "--overwrite")  # the advice works
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == f"created: {tiny_store} (96 rows)"
    assert shard_checksums(tiny_store) == checksums
    assert verify_checksums(open_store(tiny_store)) == []


def _assert_overwrite_refused(mine: Path, ckpt) -> None:
    """``mine`` is not a store, and ``extract --overwrite`` refuses it without touching a byte."""
    before = _snapshot(mine)
    with pytest.raises(NotAStoreError):
        read_manifest(mine)
    result = _extract(mine, ckpt, "--overwrite")
    assert_clean_error(result, f"Output path '{mine}' exists and is not a litcache store; "
                               "refusing to write into it.", 1)
    assert _snapshot(mine) == before


@pytest.mark.parametrize("layout", ["user-files", "no-ledger"])
def test_overwrite_still_refuses_a_directory_litcache_did_not_make(layout, tmp_path, teacher_ckpt):
    # A broken zarr.json, and a folder that is not a litcache store's: one file of the user's
    # beside litcache-like names, or no ledger (a foreign Zarr group with a "logits" array).
    mine = tmp_path / "mine"
    (mine / "logits").mkdir(parents=True)
    (mine / "logits" / "zarr.json").write_text("{}")
    (mine / "zarr.json").write_text("{ broken")
    if layout == "user-files":
        (mine / "ledger").mkdir()
        (mine / "notes.txt").write_text("precious")
    _assert_overwrite_refused(mine, teacher_ckpt)


@pytest.mark.parametrize("case", ["other-version-beside-user-files", "user-file-in-ledger"])
def test_overwrite_refuses_foreign_files_behind_litcache_names(case, tmp_path, teacher_ckpt):
    # --overwrite deletes what it replaces: a litcache-looking folder holding one file litcache did
    # not make (at the root beside a zarr.json of another format version, or inside ledger/) stays.
    mine = tmp_path / "mine"
    (mine / "labels").mkdir(parents=True)
    if case == "other-version-beside-user-files":
        manifest = {"format": "litcache-store", "format_version": 99}
        (mine / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group",
                                                    "attributes": {"litcache": manifest}}))
        (mine / "thesis.tex").write_text("precious")
    else:
        (mine / "ledger").mkdir()
        (mine / "ledger" / "2025.csv").write_text("precious")
    _assert_overwrite_refused(mine, teacher_ckpt)


def test_manifest_is_written_whole_and_fsynced(tiny_recipe, teacher_ckpt, tmp_path, monkeypatch):
    # Through StoreLocation.write_bytes (tmp + fsync + rename + directory fsync): when the store is
    # created, and when it is committed complete.
    from conftest import TINY_STORE_OPTIONS, quiet

    from litcache import extract

    written = []
    real = StoreLocation.write_bytes

    def recording(self, key, data, **kwargs):
        if key == "zarr.json":
            written.append(json.loads(data)["attributes"]["litcache"]["complete"])
        return real(self, key, data, **kwargs)

    monkeypatch.setattr(StoreLocation, "write_bytes", recording)
    extract(tiny_recipe, tmp_path / "s.zarr", TINY_STORE_OPTIONS, teacher_checkpoint=teacher_ckpt, progress=False,
            log=quiet)
    assert written[0] is False and written[-1] is True
    # zarr reads the group (and its manifest) as its own.
    assert zarr.open_group(str(tmp_path / "s.zarr"), mode="r").attrs["litcache"]["complete"] is True


# --- a full disk -------------------------------------------------------------------------------------


def _full_disk(monkeypatch, when):
    """Make StoreLocation.write_bytes fail as a full disk does for the writes ``when(key, data)`` picks."""
    real = StoreLocation.write_bytes

    def write_bytes(self, key, data, **kwargs):
        if when(key, data):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, key, data, **kwargs)

    monkeypatch.setattr(StoreLocation, "write_bytes", write_bytes)


def _assert_empty_or_absent(out: Path) -> None:
    assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.iterdir())


@pytest.mark.parametrize("at", ["manifest", "array"])
def test_disk_full_while_creating_the_store(at, tiny_store, teacher_ckpt, tmp_path, monkeypatch):
    out = tmp_path / "new.zarr"
    if at == "manifest":
        _full_disk(monkeypatch, lambda key, data: key == "zarr.json")
    else:  # zarr itself runs out of space writing the metadata of the third array
        real, calls = zarr.Group.create_array, []

        def create_array(self, *args, **kwargs):
            calls.append(1)
            if len(calls) == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(self, *args, **kwargs)

        monkeypatch.setattr(zarr.Group, "create_array", create_array)
    result = _extract(out, teacher_ckpt)
    line = assert_clean_error(result, f"Disk full while creating store '{out}': ", 1)
    assert " free, and it needs up to " in line and "uncompressed" in line
    assert "Nothing was committed, and the half-made store was removed; free some space" in line
    assert result.output.count("Error:") == 1
    _assert_empty_or_absent(out)  # no lock, no half-made store, no temporary file
    monkeypatch.undo()
    result = _extract(out, teacher_ckpt)  # the same command, once there is space
    assert result.exit_code == 0, result.output
    assert shard_checksums(out) == shard_checksums(tiny_store)


def test_disk_full_while_finalizing_keeps_a_resumable_store(tiny_store, teacher_ckpt, tmp_path, monkeypatch):
    out = tmp_path / "final.zarr"
    _full_disk(monkeypatch, lambda key, data: key == "zarr.json" and b'"complete": true' in data)
    result = _extract(out, teacher_ckpt)
    line = assert_clean_error(result, f"Disk full while committing the manifest of store '{out}': ", 1)
    assert "All 6 shards are committed and the store is as it was, incomplete" in line and "--resume" in line
    manifest = read_manifest(out)  # the previous manifest, whole: not torn by the failed write
    assert manifest.complete is False and sorted(read_ledger(out)) == list(range(6))
    assert not (out / ".lock").exists() and not list(out.glob(".zarr.json.*.tmp"))
    monkeypatch.undo()
    result = _extract(out, teacher_ckpt, "--resume")
    assert result.exit_code == 0, result.output
    assert "(0 extracted in" in result.output
    assert shard_checksums(out) == shard_checksums(tiny_store)


def test_disk_full_while_writing_a_shard_is_one_error_line(tiny_store, teacher_ckpt, tmp_path, monkeypatch):
    out = tmp_path / "mid.zarr"
    _full_disk(monkeypatch, lambda key, data: key.startswith("boundaries/1/c/2/"))
    result = _extract(out, teacher_ckpt)
    line = assert_clean_error(result, f"Disk full while writing shard 2 of store '{out}': ", 1)
    assert "for the 4 shards not committed yet" in line
    assert "The 2 shards committed so far are kept; free some space and run the same command with --resume." in line
    assert sorted(read_ledger(out)) == [0, 1]
    monkeypatch.undo()
    result = _extract(out, teacher_ckpt, "--resume")
    assert result.exit_code == 0, result.output
    assert shard_checksums(out) == shard_checksums(tiny_store)


def test_disk_full_taking_the_lock(teacher_ckpt, tmp_path, monkeypatch):
    out = tmp_path / "locked.zarr"

    def no_space(self, key, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(StoreLocation, "create_exclusive", no_space)
    result = _extract(out, teacher_ckpt)
    assert_clean_error(result, f"Disk full while creating the lock of store '{out}': ", 1)
    _assert_empty_or_absent(out)


def test_a_failed_write_leaves_neither_temporary_file_nor_torn_target(tmp_path, monkeypatch):
    loc = StoreLocation(tmp_path)
    loc.write_bytes("a/key", b"old")

    def replace(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("litcache.runtime.files.os.replace", replace)
    with pytest.raises(OSError):
        loc.write_bytes("a/key", b"new")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["key"]
    assert (tmp_path / "a" / "key").read_bytes() == b"old"


def test_a_lock_whose_owner_could_not_be_written_is_removed(tmp_path, monkeypatch):
    # O_EXCL created it, then the write failed: an empty lock would read as held forever.
    real_fdopen = __import__("os").fdopen

    class Full:
        def __init__(self, fd):
            self.f = real_fdopen(fd, "wb")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("litcache.store.location.os.fdopen", lambda fd, mode: Full(fd))
    with pytest.raises(OSError):
        StoreLocation(tmp_path).create_exclusive(".lock", b"{}")
    assert not (tmp_path / ".lock").exists()
