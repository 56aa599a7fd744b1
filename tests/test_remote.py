"""Stores at fsspec URLs: ``memory://`` in-process, and ``s3://`` against a moto S3 server on loopback."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import time
import uuid

import pytest
import torch
from conftest import TINY, TINY_STORE_OPTIONS, quiet, run_cli

from litcache import BlockTrainOptions, extract, load_student, open_store, train_blocks
from litcache.extraction.replay import verify_store
from litcache.sections import cut_sections
from litcache.store.arrays import StoreWriter
from litcache.store.location import STORAGE_OPTIONS_ENV
from litcache.store.verify import store_info
from litcache.training.student import build_student, read_student

BUCKET = "litcache-test"
TRAIN = BlockTrainOptions(epochs=1, batch_size=16, lr=0.05, evaluate=False)


def checksums(store) -> list[dict]:
    return [s.xxh3_64 for s in open_store(store).manifest.shards]


@pytest.fixture(scope="module")
def local_reference(tiny_recipe, teacher_ckpt, tmp_path_factory) -> list[dict]:
    """Shard checksums of the same extraction to a local directory."""
    out = tmp_path_factory.mktemp("local") / "tiny.zarr"
    extract(tiny_recipe, out, TINY_STORE_OPTIONS, teacher_checkpoint=teacher_ckpt, progress=False, log=quiet)
    return checksums(out)


@pytest.fixture
def memory_url():
    import fsspec

    url = f"memory://litcache-{uuid.uuid4().hex}/tiny.zarr"
    yield url
    fs = fsspec.filesystem("memory")
    if fs.exists(url):
        fs.rm(url, recursive=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on a free loopback port with one bucket; yields its storage options."""
    try:
        import boto3
        import moto.server  # noqa: F401
        import s3fs  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"S3 tests need moto[server], s3fs and boto3 (pip install -e .[test]): {exc}")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-c", "from moto.server import main; main()", "-H", "127.0.0.1",
                             "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start on port {port} (exit code {proc.poll()})")
                time.sleep(0.2)
        options = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "testing", "secret": "testing"}
        # s3fs's mkdir fails against moto with a location-constraint error; boto3 does not.
        boto3.client("s3", endpoint_url=options["endpoint_url"], aws_access_key_id="testing",
                     aws_secret_access_key="testing", region_name="us-east-1").create_bucket(Bucket=BUCKET)
        yield options
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def s3_url(s3_server, monkeypatch):
    monkeypatch.setenv(STORAGE_OPTIONS_ENV, json.dumps(s3_server))
    return f"s3://{BUCKET}/{uuid.uuid4().hex}/tiny.zarr"


def _extract(recipe, url, ckpt, **kwargs):
    return extract(recipe, url, TINY_STORE_OPTIONS, teacher_checkpoint=ckpt, progress=False, log=quiet, **kwargs)


def _assert_trained_from(store_url, result: dict, recipe) -> None:
    """What one LIT epoch from the store leaves: a standalone student that records the store, a finite
    loss, every section moved from its seeded initial weights, and the store's stem and head unchanged."""
    store = open_store(store_url)
    assert read_student(result["checkpoint"])["store"]["identity"] == store.manifest.identity
    [epoch] = result["history"]
    assert math.isfinite(epoch["loss"]) and epoch["loss"] > 0
    trained = cut_sections(load_student(result["checkpoint"], recipe), recipe)
    for part, module in (("stem", trained.stem), ("head", trained.head)):
        stored = store.module_state(part)
        assert stored and all(torch.equal(module.state_dict()[k], v) for k, v in stored.items()), part
    torch.manual_seed(TRAIN.seed)  # train_blocks draws the initial weights from --seed alone
    _, initial = build_student(recipe, "resnet8")
    for i, (after, before) in enumerate(zip(trained.sections, initial.sections)):
        moved = [not torch.equal(a, b) for a, b in zip(after.parameters(), before.parameters())]
        assert moved and all(moved), f"section {i + 1} did not train (each parameter moved: {moved})"


def test_memory_store_extract_info_verify_train(teacher_ckpt, memory_url, local_reference, tmp_path):
    o = TINY_STORE_OPTIONS
    result = run_cli("extract", TINY, "--teacher", teacher_ckpt, "--out", memory_url, "--views", o.views,
                     "--dtype", o.dtype, "--chunk-rows", o.chunk_rows, "--shard-rows", o.shard_rows,
                     "--batch-size", o.batch_size, "-q")
    assert result.exit_code == 0, result.output
    assert checksums(memory_url) == local_reference

    info = run_cli("info", memory_url)
    assert info.exit_code == 0, info.output
    assert memory_url in info.output
    assert store_info(memory_url)["stored_bytes"] > 0

    verify = run_cli("verify", memory_url)
    assert verify.exit_code == 0, verify.output
    assert "0 checksum failures" in verify.output

    train = run_cli("train-blocks", TINY, "--store", memory_url, "--student", "resnet8", "--out", tmp_path / "run",
                    "--epochs", "1", "--batch-size", "16", "--no-eval", "-q")
    assert train.exit_code == 0, train.output
    assert (tmp_path / "run" / "resnet8").is_dir()


def test_s3_store_extract_verify_train_cli(tiny_recipe, teacher_ckpt, s3_url, local_reference, tmp_path):
    result = _extract(tiny_recipe, s3_url, teacher_ckpt)
    assert result.status == "created"
    assert checksums(s3_url) == local_reference

    report = verify_store(s3_url)
    assert report.ok and report.shards_checked == len(local_reference)

    [trained] = train_blocks(tiny_recipe, s3_url, ["resnet8"], tmp_path / "run", TRAIN, log=quiet)
    _assert_trained_from(s3_url, trained, tiny_recipe)

    info = run_cli("info", s3_url)
    assert info.exit_code == 0, info.output
    assert s3_url in info.output
    verify = run_cli("verify", s3_url)
    assert verify.exit_code == 0, verify.output
    assert "0 checksum failures" in verify.output

    # A second run is a no-op, and the lock was released.
    assert _extract(tiny_recipe, s3_url, teacher_ckpt).status == "unchanged"

    # A sweep reads the same remote store (in-process: --workers 1).
    sweep = run_cli("sweep", TINY, "--store", s3_url, "--student", "resnet8", "--out", tmp_path / "sweep",
                    "--epochs", "1", "--batch-size", "16", "--lr", "0.05", "--lr", "0.1", "--workers", "1")
    assert sweep.exit_code == 0, sweep.output
    assert (tmp_path / "sweep" / "results.csv").read_text().count("\n") == 3  # header + 2 variants


@pytest.mark.parametrize("backend", ["memory", "s3"])
def test_remote_store_resumes_after_interruption(backend, request, tiny_recipe, teacher_ckpt, local_reference,
                                                 monkeypatch):
    url = request.getfixturevalue(f"{backend}_url")
    original = StoreWriter.write_shard

    def interrupted(self, index, start, data, **kwargs):
        if index == 2:
            raise KeyboardInterrupt
        return original(self, index, start, data, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(StoreWriter, "write_shard", interrupted)
        with pytest.raises(KeyboardInterrupt):
            _extract(tiny_recipe, url, teacher_ckpt)
    assert sorted(open_store(url, require_complete=False).committed()) == [0, 1]
    result = _extract(tiny_recipe, url, teacher_ckpt, resume=True)
    assert result.status == "resumed"
    assert result.rows_written == result.rows - 2 * TINY_STORE_OPTIONS.shard_rows
    assert checksums(url) == local_reference
    assert verify_store(url).ok


def test_bad_storage_options_are_a_clean_error(memory_url, monkeypatch):
    monkeypatch.setenv(STORAGE_OPTIONS_ENV, "{not json")
    result = run_cli("info", memory_url)
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert STORAGE_OPTIONS_ENV in result.output
