"""The store lock under contention: takeover of a stale lock by processes racing for it."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time

import pytest

from litcache.errors import StoreLockedError
from litcache.store.location import StoreLocation
from litcache.store.lock import store_lock

ROUNDS = 12
#: A slow staleness check (a loaded machine, a slow file system) widens the window between judging
#: a lock stale and removing it; takeover must be atomic all the same.
CHECK_DELAY = 0.02


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid is free (a zombie would still count as alive)
    return proc.pid


def _stale_lock(path, pid: int, round_: int) -> None:
    (path / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": pid, "since": round_}))


def _contender(path: str, rounds: int, start, held, done, outcomes) -> None:
    """One racing process: each round, take the store's lock if it can and hold it until both tried."""
    module = sys.modules[store_lock.__module__]  # wherever the lock lives, slow down its liveness check
    pid_alive = module._pid_alive
    module._pid_alive = lambda pid: (time.sleep(CHECK_DELAY), pid_alive(pid))[1]
    for round_ in range(rounds):
        start.wait(timeout=60)
        try:
            with store_lock(path):
                outcomes.put((round_, os.getpid(), "won"))
                held.wait(timeout=60)  # both have tried while the winner still holds the lock
        except StoreLockedError:
            outcomes.put((round_, os.getpid(), "refused"))
            held.wait(timeout=60)
        except Exception as exc:  # reported, so that the parent fails with it
            outcomes.put((round_, os.getpid(), f"error {type(exc).__name__}: {exc}"))
            held.wait(timeout=60)
        done.wait(timeout=60)


def test_exactly_one_of_two_processes_takes_over_a_stale_lock(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    start, held, done = ctx.Barrier(3), ctx.Barrier(3), ctx.Barrier(3)
    outcomes = ctx.Queue()
    dead = _dead_pid()
    _stale_lock(tmp_path, dead, 0)
    procs = [ctx.Process(target=_contender, args=(str(tmp_path), ROUNDS, start, held, done, outcomes))
             for _ in range(2)]
    for proc in procs:
        proc.start()
    results = []
    try:
        for round_ in range(ROUNDS):
            start.wait(timeout=120)  # the first wait also covers the children's start-up
            held.wait(timeout=60)
            done.wait(timeout=60)
            results.append(sorted(outcomes.get(timeout=10)[2] for _ in range(2)))
            assert not (tmp_path / ".lock").exists(), f"round {round_}: the winner's lock was not released"
            _stale_lock(tmp_path, dead, round_ + 1)
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    assert results == [["refused", "won"]] * ROUNDS


def test_a_fresh_lock_is_never_taken_for_the_stale_one(tmp_path):
    # A taker judged the old lock stale, but another process replaced it meanwhile: the fresh one stays.
    loc = StoreLocation(tmp_path)
    _stale_lock(tmp_path, _dead_pid(), 0)
    fresh = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": 1}).encode()

    def replaced_while_judging(data: bytes) -> bool:
        os.unlink(tmp_path / ".lock")
        assert loc.create_exclusive(".lock", fresh)
        return True  # the old content was stale

    assert loc.delete_if(".lock", replaced_while_judging) is False
    assert (tmp_path / ".lock").read_bytes() == fresh


def test_release_leaves_a_lock_that_is_not_ours(tmp_path):
    other = json.dumps({"host": "elsewhere.invalid", "pid": 1, "since": 0})
    with store_lock(tmp_path):
        (tmp_path / ".lock").write_text(other)  # e.g. removed by hand and taken by another extraction
    assert (tmp_path / ".lock").read_text() == other


def test_empty_lock_counts_as_held(tmp_path):
    # An O_EXCL creator that has not written its owner yet: the lock is taken, not stale.
    (tmp_path / ".lock").write_bytes(b"")
    with pytest.raises(StoreLockedError, match="locked by process \\? on host \\?"):
        with store_lock(tmp_path):
            pass
    assert (tmp_path / ".lock").exists()
