"""The longer checks, kept out of the default run (`make test-slow` runs them):

- every SIGKILL point of an extraction: at each array created, in the middle of each file written
  (every shard file of every array and every ledger entry) and while committing the manifest; each
  time `--resume` must finish the store with the checksums of an uninterrupted run; with the shard
  writer's pool at 1 encoder thread (shards one at a time) and at 3 (shards overlapping);
- a longer LIT run on a larger store of learnable data: the student must learn what the teacher knows.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import textwrap
from pathlib import Path

import pytest
from conftest import PYTHON, TINY, quiet, run_cli, shard_checksums, subprocess_env, write_variant

from litcache import BlockTrainOptions, ExtractOptions, evaluate, extract, load_recipe, train_blocks, train_teacher
from litcache.store.arrays import open_store, verify_checksums

pytestmark = pytest.mark.slow

#: Kills the CLI at the KILL_AT-th time it reaches KILL_POINT: "create" (an array of a new store),
#: "write" (a file written whole: half of it lands in the temporary file, then the process dies)
#: or "finalize" (the manifest's last commit).
KILLER = textwrap.dedent("""
    import os, signal, sys, threading
    from pathlib import Path

    import zarr
    from litcache.store import StoreWriter
    from litcache.store.location import StoreLocation

    point, at = os.environ["KILL_POINT"], int(os.environ["KILL_AT"])
    calls, lock = [0], threading.Lock()  # shard files are written from a thread pool

    def reached():
        with lock:
            calls[0] += 1
            return calls[0] == at

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if point == "create":
        create_array = zarr.Group.create_array

        def create(self, *args, **kwargs):
            if reached():
                die()
            return create_array(self, *args, **kwargs)

        zarr.Group.create_array = create
    elif point == "write":
        write_bytes = StoreLocation.write_bytes

        def write(self, key, data, **kwargs):
            if reached():
                path = Path(str(self.path)) / key
                path.parent.mkdir(parents=True, exist_ok=True)
                whole = data if isinstance(data, bytes) else b"".join(data)  # shard files come as parts
                path.with_name(f".{path.name}.{os.getpid()}.tmp").write_bytes(whole[: len(whole) // 2])
                die()
            return write_bytes(self, key, data, **kwargs)

        StoreLocation.write_bytes = write
    elif point == "finalize":
        finalize = StoreWriter.finalize

        def commit(self, *args, **kwargs):
            if reached():
                die()
            return finalize(self, *args, **kwargs)

        StoreWriter.finalize = commit
    from litcache.cli import main
    main(sys.argv[1:], prog_name="litcache")
""")


def _extract_args(out: Path, ckpt: Path, threads: int = 1) -> list[str]:
    # 48 samples, 16-row shards: three shards, so a first, a middle and a last one.
    return ["extract", TINY, "--teacher", str(ckpt), "--out", str(out), "--chunk-rows", "8", "--shard-rows", "16",
            "--batch-size", "8", "--device", "cpu", "--codec", "zstd", "--writer-threads", str(threads), "-q"]


@pytest.fixture(scope="module")
def reference(teacher_ckpt, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "ref.zarr"
    result = run_cli(*_extract_args(out, teacher_ckpt))
    assert result.exit_code == 0, result.output
    return out


def _kill_at_every(point: str, reference: Path, ckpt: Path, tmp_path: Path, threads: int, most: int = 200) -> int:
    """Kill an extraction at each ``point`` in turn, resume it, compare it with ``reference``; returns
    how many points there were (the first run that reaches no further point finishes normally)."""
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER)
    for at in range(1, most):
        out = tmp_path / f"{point}-{at}.zarr"
        # Both ways of writing: at 1 writer thread the teacher takes every core, pauses for each shard and the
        # loop copies its outputs; at more, one torch thread leaves cores free and the encoders, beside the
        # teacher, cast its outputs themselves (ShardSink's deferred copies).
        torch_threads = "1" if threads > 1 else str(os.cpu_count() or 1)
        proc = subprocess.run([PYTHON, str(killer), *_extract_args(out, ckpt, threads)], capture_output=True, text=True,
                              env=subprocess_env(KILL_POINT=point, KILL_AT=str(at), OMP_NUM_THREADS=torch_threads),
                              timeout=300)
        if proc.returncode == 0:
            return at - 1
        assert proc.returncode == -signal.SIGKILL, f"{point} {at}: {proc.stderr}"
        resumed = run_cli(*_extract_args(out, ckpt, threads), "--resume")
        assert resumed.exit_code == 0, f"{point} {at}: {resumed.output}"
        store = open_store(out)
        assert store.complete and verify_checksums(store) == [], f"{point} {at}"
        assert shard_checksums(out) == shard_checksums(reference), f"{point} {at}"
        assert store.manifest.identity == open_store(reference).manifest.identity, f"{point} {at}"
        assert not (out / ".lock").exists(), f"{point} {at}"
        shutil.rmtree(out)
    raise AssertionError(f"more than {most} {point} points")


@pytest.mark.parametrize("threads", [1, 3])
def test_sigkill_at_every_point_then_resume(teacher_ckpt, reference, tmp_path, threads):
    shards = len(shard_checksums(reference))
    arrays = len(open_store(reference).manifest.arrays)
    # the row arrays, then the teacher's
    assert _kill_at_every("create", reference, teacher_ckpt, tmp_path, threads) >= arrays
    # Each shard is a file per row array and a ledger entry.
    assert _kill_at_every("write", reference, teacher_ckpt, tmp_path, threads) == shards * (arrays + 1)
    assert _kill_at_every("finalize", reference, teacher_ckpt, tmp_path, threads) == 1


LEARNABLE = '''
from torch.utils.data import Dataset
from litcache import CropFlip, TrainConfig


class Quadrants(Dataset):
    """Noisy images labelled by the quadrant where channel 0 is brighter: learnable, not trivial."""

    def __init__(self, split):
        g = torch.Generator().manual_seed(0 if split == "train" else 1)
        n = {"train": 2048, "test": 512}[split]
        self.y = torch.randint(0, 4, (n,), generator=g)
        self.x = torch.randn(n, 3, 8, 8, generator=g)
        for i, q in enumerate(self.y.tolist()):
            r, c = divmod(q, 2)
            self.x[i, 0, 4 * r:4 * r + 4, 4 * c:4 * c + 4] += 0.6

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


# No flips: a flip would move the bright quadrant and so change the label.
recipe = replace(base, name="quadrants", load_split=Quadrants, augment=CropFlip(padding=1, flip=False),
                 teacher_training=TrainConfig(epochs=4, batch_size=32, lr=0.05))
'''


def test_lit_student_learns_from_a_larger_store(tmp_path):
    recipe = load_recipe(write_variant(tmp_path, "quadrants", LEARNABLE))
    teacher = tmp_path / "teacher.pt"
    train_teacher(recipe, teacher, device="cpu", log=quiet)
    store = tmp_path / "train.zarr"
    extract(recipe, store, ExtractOptions(views=4, chunk_rows=64, batch_size=256, dtype="float16"),
            teacher_checkpoint=teacher, progress=False, log=quiet)
    assert open_store(store).rows == 2048 * 4
    [result] = train_blocks(recipe, store, ["resnet8"], tmp_path / "lit",
                            BlockTrainOptions(epochs=6, batch_size=32, lr=0.05, device="cpu", evaluate=False),
                            log=quiet)
    first, last = result["history"][0], result["history"][-1]
    ir_first, ir_last = ([first[k] for k in sorted(first) if k.startswith("ir")],
                         [last[k] for k in sorted(last) if k.startswith("ir")])
    assert ir_first and all(b < a / 2 for a, b in zip(ir_first, ir_last)), (ir_first, ir_last)  # every section learns

    report = evaluate(recipe, result["checkpoint"], teacher, device="cpu")
    teacher_acc, student_acc = report["teacher"]["accuracy"], report["student"]["accuracy"]
    assert teacher_acc > 0.7, teacher_acc  # chance is 0.25
    assert student_acc > teacher_acc - 0.05, (student_acc, teacher_acc)
