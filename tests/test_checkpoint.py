"""Checkpoint I/O: one atomic write for checkpoints and store files (tmp + fsync + rename + dir fsync)."""

from __future__ import annotations

import os

import pytest
import torch

import litcache.runtime.files
from litcache.runtime.checkpoint import load_checkpoint, save_atomic


def test_save_atomic_fsyncs_the_file_and_its_directory(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def recording_fsync(fd):
        synced.append(os.fstat(fd).st_ino)
        return real(fd)

    monkeypatch.setattr(litcache.runtime.files.os, "fsync", recording_fsync)
    path = tmp_path / "runs" / "ckpt.pt"
    save_atomic({"epoch": 3, "w": torch.arange(4)}, path)
    # The data (the temporary file, renamed since: same inode), then the directory holding the rename.
    assert synced == [path.stat().st_ino, path.parent.stat().st_ino]
    saved = load_checkpoint(path)
    assert saved["epoch"] == 3 and torch.equal(saved["w"], torch.arange(4))
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pt"]


def test_a_save_that_fails_to_serialize_leaves_the_old_checkpoint_and_no_debris(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_atomic({"epoch": 1}, path)
    before = path.read_bytes()
    with pytest.raises(Exception):
        save_atomic({"epoch": 2, "not data": lambda: None}, path)  # a lambda does not pickle
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
