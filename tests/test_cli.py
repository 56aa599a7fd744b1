"""The command line: clear errors for bad input, `info`, `verify` (checksums and replay)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from conftest import (
    TINY,
    TINY_STORE_OPTIONS,
    assert_clean_error,
    make_incomplete_store,
    manifest_of,
    run_cli,
)

from litcache import __version__
from litcache.runtime.checkpoint import save_atomic
from litcache.store.arrays import checksum


def _set_manifest(store: Path, **changes) -> None:
    meta = store / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["litcache"].update(changes)
    meta.write_text(json.dumps(doc))


def _snapshot(directory: Path) -> dict:
    return {str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def plain_dir(tmp_path) -> Path:
    d = tmp_path / "mine"
    (d / "sub").mkdir(parents=True)
    (d / "notes.txt").write_text("precious")
    (d / "sub" / "data.bin").write_bytes(b"\x00\x01")
    return d


def _extract_args(out, ckpt, *extra):
    return ["extract", TINY, "--teacher", ckpt, "--out", out, "-q", *extra]


# --- happy paths ------------------------------------------------------------------------------------


def test_version_and_help():
    result = run_cli("--version")
    assert result.exit_code == 0 and __version__ in result.output
    result = run_cli("--help")
    assert result.exit_code == 0
    for command in ("extract", "info", "verify", "train-teacher"):
        assert command in result.output


def test_extract_created_then_unchanged(teacher_ckpt, tmp_path):
    out = tmp_path / "s.zarr"
    args = ["extract", TINY, "--teacher", teacher_ckpt, "--out", out, "--limit", "20", "--views", "2",
            "--chunk-rows", "8", "--shard-rows", "16", "--batch-size", "8", "--device", "cpu"]
    result = run_cli(*args, "-v")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == f"created: {out} (40 rows)"
    assert '"views": 2' in result.output and '"samples": 20' in result.output  # -v prints the identity
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    assert "already complete" in result.output
    assert result.output.splitlines()[-1] == f"unchanged: {out} (40 rows)"
    assert run_cli(*args, "-q").output == ""


def test_extract_views_default_to_the_recipes(teacher_ckpt, tmp_path):
    """A recipe's ``views`` is extract's default --views (the CIFAR recipes keep 8); --views overrides it."""
    from dataclasses import replace

    from litcache.errors import RecipeError
    from litcache.recipe import load_recipe

    recipe_file = tmp_path / "tiny_views.py"
    recipe_file.write_text("import runpy\nfrom dataclasses import replace\n"
                           f"recipe = replace(runpy.run_path({str(Path(TINY).resolve())!r})['recipe'], views=2)\n")
    args = ["extract", recipe_file, "--teacher", teacher_ckpt, "--limit", "20", "--chunk-rows", "8",
            "--shard-rows", "16", "--batch-size", "8", "--device", "cpu"]
    result = run_cli(*args, "--out", tmp_path / "a.zarr")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == f"created: {tmp_path / 'a.zarr'} (40 rows)"  # 20 samples x 2 views
    result = run_cli(*args, "--out", tmp_path / "b.zarr", "--views", "1")
    assert result.output.splitlines()[-1] == f"created: {tmp_path / 'b.zarr'} (20 rows)"
    assert "views 2," in run_cli("show", recipe_file).output
    assert "views 1," in run_cli("show", TINY).output
    with pytest.raises(RecipeError, match="Recipe.views"):
        replace(load_recipe(TINY), views=0)


# --- bad input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["info", "verify"])
def test_missing_store(command, tmp_path):
    result = run_cli(command, tmp_path / "nope.zarr")
    assert_clean_error(result, f"Expected a litcache store at '{tmp_path / 'nope.zarr'}', but nothing is there.", 1)


@pytest.mark.parametrize("command", ["info", "verify"])
def test_plain_directory_is_not_a_store(command, plain_dir):
    before = _snapshot(plain_dir)
    result = run_cli(command, plain_dir)
    assert_clean_error(result, f"Expected a litcache store at '{plain_dir}', found a directory with no Zarr group", 1)
    assert _snapshot(plain_dir) == before


@pytest.mark.parametrize("command", ["info", "verify"])
@pytest.mark.parametrize("content,message", [
    ("[1, 2]", "Expected a litcache store at '{path}', found "),
    ('{"attributes": {"litcache": {"format": "litcache-store", "format_version": 1}}}',
     "Store '{path}' is a litcache store whose manifest (zarr.json) lacks complete, identity, layout, boundaries, "
     "view_param_names, recipe, teacher, options, versions, created, arrays: the store is damaged"),
], ids=["not-an-object", "manifest-without-keys"])
def test_malformed_zarr_json(command, content, message, tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "zarr.json").write_text(content)
    result = run_cli(command, tmp_path / "s")
    assert_clean_error(result, message.format(path=tmp_path / "s"), 1)


@pytest.mark.parametrize("overwrite", [False, True])
def test_extract_refuses_plain_directory(plain_dir, teacher_ckpt, overwrite):
    before = _snapshot(plain_dir)
    result = run_cli(*_extract_args(plain_dir, teacher_ckpt, "--limit", "8", *(["--overwrite"] if overwrite else [])))
    assert_clean_error(result, f"Output path '{plain_dir}' exists and is not a litcache store; "
                               "refusing to write into it.", 1)
    assert _snapshot(plain_dir) == before
    assert not (plain_dir / ".lock").exists()


def test_extract_refuses_plain_file(tmp_path, teacher_ckpt):
    target = tmp_path / "file.zarr"
    target.write_text("not a store")
    result = run_cli(*_extract_args(target, teacher_ckpt, "--limit", "8", "--overwrite"))
    assert_clean_error(result, f"Output path '{target}' exists and is not a litcache store", 1)
    assert target.read_text() == "not a store"


def test_unknown_format_version(tiny_store, teacher_ckpt):
    _set_manifest(tiny_store, format_version=99)
    expected = f"Store '{tiny_store}' has format version 99; this litcache reads versions 1, 2 only."
    assert_clean_error(run_cli("info", tiny_store), expected, 1)
    assert_clean_error(run_cli("verify", tiny_store), expected, 1)
    options = ["--views", "2", "--dtype", "float32", "--chunk-rows", "8", "--shard-rows", "16"]
    assert_clean_error(run_cli(*_extract_args(tiny_store, teacher_ckpt, *options)), expected, 1)
    assert manifest_of(tiny_store)["format_version"] == 99
    # A store litcache made (in another format) may be replaced on request.
    result = run_cli(*_extract_args(tiny_store, teacher_ckpt, *options, "--overwrite"))
    assert result.exit_code == 0, result.output
    assert manifest_of(tiny_store)["format_version"] == 1


def test_incomplete_store(tiny_recipe, teacher_ckpt, tmp_path):
    out = make_incomplete_store(tiny_recipe, tmp_path / "s", teacher_ckpt, TINY_STORE_OPTIONS, committed=2)
    result = run_cli("info", out)
    assert result.exit_code == 0, result.output
    assert "INCOMPLETE (2/6 shards; resume with --resume)" in result.output
    info = json.loads(run_cli("info", out, "--json").stdout)
    assert info["complete"] is False and info["committed_shards"] == 2
    assert_clean_error(run_cli("verify", out), f"Store '{out}' is incomplete (2 of 6 shards committed)", 1)


@pytest.mark.parametrize("args,starts", [
    (["--views", "0"], "Invalid value for '--views': 0 is not in the range x>=1."),
    (["--chunk-rows", "0"], "Invalid value for '--chunk-rows': 0 is not in the range x>=1."),
    (["--limit", "-1"], "Invalid value for '--limit': -1 is not in the range x>=1."),
    (["--limit", "0"], "Invalid value for '--limit': 0 is not in the range x>=1."),
    (["--batch-size", "0"], "Invalid value for '--batch-size': 0 is not in the range x>=1."),
    (["--dtype", "int8"], "Invalid value for '--dtype'"),
    (["--codec", "gzip"], "Invalid value for '--codec'"),
    (["--device", "tpu"], "Invalid value for '--device'"),
])
def test_extract_option_out_of_range(args, starts, teacher_ckpt, tmp_path):
    result = run_cli(*_extract_args(tmp_path / "s", teacher_ckpt, *args))
    assert_clean_error(result, starts, 2)
    assert not (tmp_path / "s").exists()


def test_shard_rows_not_multiple_of_chunk_rows(teacher_ckpt, tmp_path):
    result = run_cli(*_extract_args(tmp_path / "s", teacher_ckpt, "--chunk-rows", "8", "--shard-rows", "12"))
    assert_clean_error(result, "Expected --shard-rows to be a positive multiple of --chunk-rows (8), "
                               "got 12 instead.", 1)
    assert not (tmp_path / "s").exists()


def test_keep_bits_beyond_the_dtype(teacher_ckpt, tmp_path):
    result = run_cli(*_extract_args(tmp_path / "s", teacher_ckpt, "--dtype", "bfloat16", "--keep-bits", "7"))
    assert_clean_error(result, "Expected --keep-bits between 1 and 6 for --dtype bfloat16 (it has 7 mantissa bits), "
                               "got 7 instead.", 1)
    assert not (tmp_path / "s").exists()


def test_unknown_split(teacher_ckpt, tmp_path):
    result = run_cli(*_extract_args(tmp_path / "s", teacher_ckpt, "--split", "val"))
    assert_clean_error(result, "Expected a split of recipe 'tiny' (train, test), got 'val' instead.", 1)


def test_recipe_file_missing(teacher_ckpt, tmp_path):
    missing = tmp_path / "nope.py"
    result = run_cli("extract", missing, "--teacher", teacher_ckpt, "--out", tmp_path / "s")
    assert_clean_error(result, f"Expected a recipe file, but '{missing}' does not exist.", 1)


def test_recipe_file_raises(teacher_ckpt, tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import math\nraise ValueError('no data here')\n")
    result = run_cli("extract", bad, "--teacher", teacher_ckpt, "--out", tmp_path / "s")
    assert_clean_error(result, f"Recipe file '{bad}' failed to load: ValueError: no data here", 1)


def test_recipe_file_without_recipe(teacher_ckpt, tmp_path):
    empty = tmp_path / "empty.py"
    empty.write_text("RECIPE = None\n")
    result = run_cli("extract", empty, "--teacher", teacher_ckpt, "--out", tmp_path / "s")
    assert_clean_error(result, f"Expected '{empty}' to define recipe = litcache.Recipe(...), found nothing instead.", 1)


def test_checkpoint_of_other_architecture(tiny_recipe, tmp_path):
    student = tmp_path / "student.pt"
    save_atomic({"state_dict": tiny_recipe.student_builder("resnet8")().state_dict()}, student)
    result = run_cli(*_extract_args(tmp_path / "s", student))
    line = assert_clean_error(result, f"Checkpoint '{student}' does not fit the architecture:", 1)
    assert "missing (e.g. layer1.1.conv1.weight" in line and "Is it the recipe's teacher?" in line
    assert not (tmp_path / "s").exists()


def test_checkpoint_of_other_shapes(tmp_path):
    from litcache.models.resnet import cifar_resnet

    wide = tmp_path / "wide.pt"
    save_atomic(cifar_resnet(14, widths=(4, 8, 16), num_classes=4).state_dict(), wide)  # a bare state dict
    line = assert_clean_error(run_cli(*_extract_args(tmp_path / "s", wide)), f"Checkpoint '{wide}' does not fit", 1)
    assert "of another shape (e.g. layer3.0.conv1.weight (16, 8, 3, 3) (model has (8, 8, 3, 3))" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda(teacher_ckpt, tmp_path):
    result = run_cli(*_extract_args(tmp_path / "s", teacher_ckpt, "--limit", "8", "--device", "cuda"))
    assert_clean_error(result, "Expected a CUDA device for --device cuda, but torch sees none.", 1)


def test_checkpoint_missing(tmp_path):
    missing = tmp_path / "none.pt"
    result = run_cli(*_extract_args(tmp_path / "s", missing))
    assert_clean_error(result, f"Expected a checkpoint file at '{missing}', but there is none.", 1)


def test_checkpoint_not_given(tmp_path):
    result = run_cli("extract", TINY, "--out", tmp_path / "s", "-q")
    assert_clean_error(result, "Recipe 'tiny' names no teacher checkpoint. Give one with --teacher", 1)


@pytest.mark.parametrize("content,starts", [
    (b"definitely not a torch file", "Checkpoint '{path}' does not load as weights-only torch data ("),
    ("pickle-object", "Checkpoint '{path}' does not load as weights-only torch data ("),
    ("list", "Expected checkpoint '{path}' to hold a dict, found list."),
])
def test_checkpoint_unreadable(tmp_path, content, starts):
    path = tmp_path / "bad.pt"
    if content == "pickle-object":
        torch.save({"state_dict": argparse.Namespace(a=1)}, path)  # arbitrary objects are never unpickled
    elif content == "list":
        torch.save([1, 2], path)
    else:
        path.write_bytes(content)
    result = run_cli(*_extract_args(tmp_path / "s", path))
    assert_clean_error(result, starts.format(path=path), 1)
    assert len(result.output.strip().splitlines()) == 1, result.output  # torch's several-line text is cut
    assert "weights_only=False" not in result.output  # never advise unpickling untrusted code


# --- info ------------------------------------------------------------------------------------------


def test_info_json(tiny_store):
    result = run_cli("info", tiny_store, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["complete"] is True and info["committed_shards"] == 6
    expected_arrays = ({f"boundaries/{i}" for i in range(4)}
                       | {"logits", "labels", "source_index", "view", "view_params"})
    assert set(info["arrays"]) == expected_arrays
    for name, a in info["arrays"].items():
        on_disk = sum(f.stat().st_size for f in (tiny_store / name).rglob("*") if f.is_file())
        assert a["stored_bytes"] == on_disk > 0, name
        assert a["raw_bytes"] == int(np.prod(a["shape"])) * np.dtype(a["storage_dtype"]).itemsize, name
        assert a["ratio"] == pytest.approx(a["raw_bytes"] / a["stored_bytes"], abs=1e-3), name
    assert info["arrays"]["boundaries/0"]["raw_bytes"] == 96 * 4 * 8 * 8 * 4
    assert info["raw_bytes"] == sum(a["raw_bytes"] for a in info["arrays"].values())
    assert info["manifest"]["identity"]["views"] == 2


def test_info_text(tiny_store):
    result = run_cli("info", tiny_store)
    assert result.exit_code == 0, result.output
    assert "complete" in result.output and "INCOMPLETE" not in result.output
    assert "48 samples x 2 views = 96 rows" in result.output
    for name in ("boundaries/0", "boundaries/3", "logits", "view_params"):
        assert name in result.output


# --- verify ----------------------------------------------------------------------------------------


def test_verify_good_store(tiny_store):
    result = run_cli("verify", tiny_store)
    assert result.exit_code == 0, result.output
    assert f"{tiny_store}: 6 shards checked, 0 checksum failures" in result.output
    report = json.loads(run_cli("verify", tiny_store, "--json").stdout)
    assert report["ok"] is True and report["shards_checked"] == 6


def _flip_middle_byte(store: Path, array: str) -> int:
    """Flip one byte in the middle of a shard file of ``array``; returns that shard's index."""
    files = sorted(f for f in (store / array / "c").rglob("*") if f.is_file())
    target = files[len(files) // 2]
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    return int(target.relative_to(store / array / "c").parts[0])


@pytest.mark.parametrize("codec", ["zstd", "none"])
def test_verify_detects_flipped_byte(tiny_recipe, teacher_ckpt, tmp_path, codec):
    out = tmp_path / "s"
    args = _extract_args(out, teacher_ckpt, "--views", "2", "--chunk-rows", "8", "--shard-rows", "16", "--codec", codec)
    assert run_cli(*args).exit_code == 0
    shard = _flip_middle_byte(out, "boundaries/1")
    result = run_cli("verify", out)
    line = assert_clean_error(result, f"store {out} failed verification: array 'boundaries/1' shard {shard} ", 1)
    assert f"(rows {shard * 16}-{shard * 16 + 16})" in line
    assert "1 checksum failures" in result.output
    report = json.loads(run_cli("verify", out, "--json").stdout)  # the Error: line goes to stderr
    assert report["ok"] is False and len(report["checksum_failures"]) == 1


@pytest.mark.parametrize("store_fixture", ["tiny_store", "tiny_store_f16"])
def test_verify_replay(request, store_fixture, teacher_ckpt):
    store = request.getfixturevalue(store_fixture)
    result = run_cli("verify", store, "--replay", "8", "--recipe", TINY, "--teacher", teacher_ckpt)
    assert result.exit_code == 0, result.output
    assert "8 rows replayed, 0 differ" in result.output
    # Without --recipe and --teacher, the ones recorded in the store are used.
    result = run_cli("verify", store, "--replay", "4")
    assert result.exit_code == 0, result.output
    assert "4 rows replayed, 0 differ" in result.output


def test_verify_replay_unaugmented_split(teacher_ckpt, tmp_path):
    out = tmp_path / "test.zarr"
    refused = run_cli(*_extract_args(out, teacher_ckpt, "--split", "test", "--views", "2", "--chunk-rows", "8"))
    assert_clean_error(refused, "Split 'test' of recipe 'tiny' has no augmentation, "
                                "so --views 2 would store 2 identical", 1)
    assert run_cli(*_extract_args(out, teacher_ckpt, "--split", "test", "--chunk-rows", "8")).exit_code == 0
    result = run_cli("verify", out, "--replay", "16", "--recipe", TINY, "--teacher", teacher_ckpt)
    assert result.exit_code == 0, result.output
    assert "16 rows replayed, 0 differ" in result.output


def test_verify_replay_detects_values_the_teacher_does_not_give(tiny_store, teacher_ckpt):
    # Change stored logits and record matching checksums: only replaying the teacher can tell.
    group = zarr.open_group(str(tiny_store), mode="r+")
    logits = group["logits"]
    logits[:] = logits[:] * 1.01
    meta = tiny_store / "zarr.json"
    doc = json.loads(meta.read_text())
    for shard in doc["attributes"]["litcache"]["shards"]:
        start, stop = shard["rows"]
        shard["xxh3_64"]["logits"] = checksum(logits[start:stop])
    meta.write_text(json.dumps(doc))
    assert run_cli("verify", tiny_store).exit_code == 0
    result = run_cli("verify", tiny_store, "--replay", "3", "--recipe", TINY, "--teacher", teacher_ckpt)
    line = assert_clean_error(result, f"store {tiny_store} failed verification: row ", 1)
    assert "logits differs from the live teacher" in line
    assert "3 rows replayed, 3 differ" in result.output


def test_verify_replay_other_teacher(tiny_store, other_teacher_ckpt):
    result = run_cli("verify", tiny_store, "--replay", "2", "--recipe", TINY, "--teacher", other_teacher_ckpt)
    assert_clean_error(result, "Cannot replay: the store's teacher_hash is", 1)
