"""A sweep skips a finished variant only when it was trained exactly as this run would train it:
same store and the whole resolved config (recipe schedule and optimizer included), not only the
swept options. A finished variant or ir section trained otherwise is refused, never reused."""

from __future__ import annotations

import pytest
from conftest import quiet, write_variant

from litcache import load_recipe
from litcache.sweeps import sweep

GRID = {"epochs": [1], "batch_size": [16]}


def _recipe_with(tmp_path, name: str, **lit) -> object:
    """The tiny recipe with other LIT-phase settings (not swept: the sweep's options stay the same)."""
    changes = ", ".join(f"{k}={v!r}" for k, v in lit.items())
    return load_recipe(write_variant(tmp_path, name,
                                     "recipe = replace(base, distill=replace(base.distill, "
                                     f"lit=replace(base.distill.lit, {changes})))"))


def test_finished_variant_with_another_recipe_schedule_is_not_skipped(tiny_recipe, tiny_store, tmp_path):
    out = tmp_path / "sweep"
    [first] = sweep(tiny_recipe, tiny_store, ["resnet8"], out, grid=GRID, workers=1, log=quiet).rows
    assert first["status"] == "trained"
    [same] = sweep(tiny_recipe, tiny_store, ["resnet8"], out, grid=GRID, workers=1, precision="fp32", log=quiet).rows
    assert same["status"] == "skipped"  # auto is fp32 here (conftest): the same training

    cosine = _recipe_with(tmp_path, "cosine", schedule="cosine")
    [again] = sweep(cosine, tiny_store, ["resnet8"], out, grid=GRID, workers=1, log=quiet).rows
    assert again["status"] == "failed" and again["accuracy"] is None
    assert "trained from another store or with other options (schedule 'multistep' -> 'cosine')" in again["error"]
    assert again["error"].endswith(f"Remove '{out / first['variant']}' or choose another --out.")


def test_explicit_precision_change_is_not_skipped(tiny_recipe, tiny_store, tmp_path):
    out = tmp_path / "sweep"
    [first] = sweep(tiny_recipe, tiny_store, ["resnet8"], out, grid=GRID, workers=1, log=quiet).rows
    assert first["status"] == "trained"
    [bf16] = sweep(tiny_recipe, tiny_store, ["resnet8"], out, grid=GRID, workers=1, precision="bf16", log=quiet).rows
    assert bf16["status"] == "failed" and "precision 'fp32' -> 'bf16'" in bf16["error"]


@pytest.mark.parametrize("lose", ["final", "final and one section"])
def test_ir_sections_of_another_recipe_schedule_are_not_reused(tiny_recipe, tiny_store, tmp_path, lose):
    out = tmp_path / "sweep"
    [first] = sweep(tiny_recipe, tiny_store, ["resnet8"], out, grid=GRID, mode="ir", workers=1, log=quiet).rows
    assert first["status"] == "trained"
    final = out / first["variant"] / "resnet8" / "student.pt"
    final.unlink()  # the sections stay: a rerun would assemble them again
    if lose != "final":
        (out / first["variant"] / "block2" / "resnet8" / "student.pt").unlink()

    lower = _recipe_with(tmp_path, "lower_lr", lr=0.0123)
    [again] = sweep(lower, tiny_store, ["resnet8"], out, grid=GRID, mode="ir", workers=1, log=quiet).rows
    assert again["status"] == "failed" and "block1" in again["error"] and "-> 0.0123" in again["error"]
    assert not final.exists()  # nothing assembled from sections trained with the old schedule


def test_variant_finished_by_an_earlier_release_is_still_skipped(tiny_recipe, tiny_store, tmp_path):
    # Checkpoints written before --precision and BatchNorm recalibration hold "amp" and lack the
    # newer keys: the same training all the same, so a rerun skips it rather than failing it.
    import torch

    from litcache.runtime.checkpoint import save_atomic

    out = tmp_path / "sweep"
    [first] = sweep(tiny_recipe, tiny_store, ["resnet8"], out, grid=GRID, workers=1, log=quiet).rows
    final = out / first["variant"] / "resnet8" / "student.pt"
    checkpoint = torch.load(final, weights_only=True)
    config = checkpoint["config"]
    for newer in ("precision", "recalibrate_bn", "online_teacher"):
        config.pop(newer, None)
    config["amp"] = False
    save_atomic(checkpoint, final)
    [again] = sweep(tiny_recipe, tiny_store, ["resnet8"], out, grid=GRID, workers=1, log=quiet).rows
    assert again["status"] == "skipped", again.get("error")
