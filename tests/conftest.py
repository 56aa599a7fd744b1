from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from litcache import ExtractOptions, extract, load_recipe
from litcache.runtime.checkpoint import save_atomic

# The models are tiny: one thread is fastest, and OpenMP threads spinning on a busy 2-core machine
# make every extraction many times slower.
torch.set_num_threads(1)
# --precision auto picks bf16 on CPUs with bf16 instructions: tests that compare stored bytes with
# fp32 outputs must not depend on the machine, so auto means fp32 here (test_precision.py runs bf16
# explicitly, and flips this to test the detection).
os.environ["LITCACHE_CPU_BF16"] = "0"

TESTS = Path(__file__).parent
REPO = TESTS.parent
RECIPES = TESTS / "recipes"
TINY = str(RECIPES / "tiny.py")


def quiet(_msg: str) -> None:
    """A ``log`` for ``extract()`` that prints nothing."""


@pytest.fixture(scope="session")
def tiny_recipe():
    return load_recipe(TINY)


@contextmanager
def tiny_env(**env: str):
    """Set LITCACHE_TINY_* variables (read by tests/recipes/tiny.py at import) for a block."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def load_tiny(samples: int):
    """The tiny recipe with ``samples`` train samples (the recipe reads its size at import)."""
    with tiny_env(LITCACHE_TINY_SAMPLES=str(samples)):
        return load_recipe(TINY)


def make_teacher_checkpoint(recipe, path: Path, seed: int = 0) -> Path:
    """A seeded, untrained teacher with BatchNorm statistics warmed so outputs are non-trivial."""
    torch.manual_seed(seed)
    model = recipe.build_teacher()
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 3, 8, 8))
    save_atomic({"state_dict": model.state_dict(), "recipe": recipe.name}, path)
    return path


@pytest.fixture(scope="session")
def teacher_ckpt(tiny_recipe, tmp_path_factory) -> Path:
    return make_teacher_checkpoint(tiny_recipe, tmp_path_factory.mktemp("teacher") / "teacher.pt")


@pytest.fixture(scope="session")
def other_teacher_ckpt(tiny_recipe, tmp_path_factory) -> Path:
    """The same architecture with other weights."""
    return make_teacher_checkpoint(tiny_recipe, tmp_path_factory.mktemp("teacher2") / "teacher.pt", seed=1)


#: Options of the ``tiny_store`` fixture. The codec is named: ``--codec auto`` chooses by measured speed, which
#: on a loaded machine chose lz4 for one of two otherwise equal stores and zstd for the other.
TINY_STORE_OPTIONS = ExtractOptions(views=2, dtype="float32", chunk_rows=8, shard_rows=16, batch_size=8, codec="zstd")


@pytest.fixture
def tiny_store(tiny_recipe, teacher_ckpt, tmp_path) -> Path:
    """A complete float32 store: 48 samples x 2 views, 8-row chunks, 16-row shards."""
    out = tmp_path / "tiny.zarr"
    extract(tiny_recipe, out, TINY_STORE_OPTIONS, teacher_checkpoint=teacher_ckpt, progress=False, log=quiet)
    return out


@pytest.fixture
def tiny_store_f16(tiny_recipe, teacher_ckpt, tmp_path) -> Path:
    """A complete float16 (zstd) store: 48 samples x 2 views, 8-row chunks, 16-row shards."""
    out = tmp_path / "tiny16.zarr"
    extract(tiny_recipe, out, ExtractOptions(views=2, dtype="float16", chunk_rows=8, shard_rows=16, batch_size=8),
            teacher_checkpoint=teacher_ckpt, progress=False, log=quiet)
    return out


def make_incomplete_store(recipe, out, ckpt, options, committed: int) -> Path:
    """Extract until ``committed`` shards are in the ledger, then fail as a full disk would."""
    from litcache.errors import ShardWriteError
    from litcache.store.arrays import StoreWriter

    original = StoreWriter.write_shard

    def failing(self, index, start, data, **kwargs):
        if index >= committed:
            raise OSError("simulated failure")
        return original(self, index, start, data, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(StoreWriter, "write_shard", failing)
        with pytest.raises(ShardWriteError, match="simulated failure"):
            extract(recipe, out, options, teacher_checkpoint=ckpt, progress=False, log=quiet)
    return Path(out)


def run_cli(*args, env: dict | None = None):
    """Invoke ``litcache.cli.main`` in-process; returns click's Result."""
    from litcache.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def error_line(result) -> str:
    """The ``Error: ...`` line of a CLI result (stdout and stderr together)."""
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert lines, f"no Error: line in output:\n{result.output}"
    return lines[0]


def assert_clean_error(result, starts: str, exit_code: int | None = None) -> str:
    """Non-zero exit, an ``Error:`` line that starts with ``starts``, and no traceback."""
    assert starts, "give the start of the expected message: an empty one accepts any error"
    assert result.exit_code != 0, result.output
    if exit_code is not None:
        assert result.exit_code == exit_code, result.output
    # A library error must reach the user as a ClickException, not an uncaught exception.
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    line = error_line(result)
    assert line.startswith(f"Error: {starts}"), line
    return line


def write_variant(directory: Path, name: str, body: str) -> Path:
    """A recipe file that builds on the tiny recipe: ``base`` is it, ``body`` must set ``recipe``."""
    path = Path(directory) / f"{name}.py"
    path.write_text(
        "from dataclasses import replace\n"
        "import torch\nimport torch.nn as nn\n"
        "from litcache import load_recipe\n"
        f"base = load_recipe({TINY!r})\n" + body + "\n"
    )
    return path


def manifest_of(store: Path) -> dict:
    return json.loads((Path(store) / "zarr.json").read_text())["attributes"]["litcache"]


def shard_checksums(store: Path) -> list[dict]:
    return [s["xxh3_64"] for s in manifest_of(store)["shards"]]


def reference_layout(samples: int, views: int, block: int) -> list[tuple[int, int]]:
    """Row -> (position, view) of the documented block-interleaved layout, written out longhand:
    view v of each full block of ``block`` positions is one run of rows, blocks in order; the
    last partial block stores its views one after another at the end."""
    rows = []
    full = samples // block
    for b in range(full):
        for v in range(views):
            rows += [(b * block + k, v) for k in range(block)]
    for v in range(views):
        rows += [(full * block + k, v) for k in range(samples % block)]
    return rows


def check_row_layout(store) -> tuple[torch.Tensor, torch.Tensor]:
    """Check a store's rows follow the documented layout and every view visits the same
    permutation of the first ``samples`` samples; returns (source_index, view) per row."""
    layout = store.manifest.layout
    samples, views, chunk_rows = layout.samples, layout.views, layout.chunk_rows
    source_index = store.read("source_index", 0, store.rows)
    view = store.read("view", 0, store.rows)
    expected = reference_layout(samples, views, chunk_rows)
    assert len(expected) == store.rows
    assert view.tolist() == [v for _, v in expected]
    sample_at = {}
    for (position, _), index in zip(expected, source_index.tolist()):
        assert sample_at.setdefault(position, index) == index  # one sample per position, in every view
    assert sorted(sample_at.values()) == list(range(samples))
    return source_index, view


def subprocess_env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra)
    return env


PYTHON = sys.executable
