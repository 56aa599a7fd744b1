"""``TrainConfig(precise_bn=True)``: after every epoch the BatchNorm running statistics are re-estimated
over the training rows, so the checkpoint a run leaves normalises its training data as its weights do."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conftest import TINY_STORE_OPTIONS, quiet

from litcache import ChunkShuffleSampler, StoreDataset, TrainConfig, extract, open_store, train_teacher
from litcache.errors import CheckpointError
from litcache.runtime.checkpoint import load_checkpoint
from litcache.training.blocks import BlockTrainOptions, train_blocks
from litcache.training.dataset import make_loader
from litcache.training.loop import reestimate_batchnorm
from litcache.training.student import load_student


def _first_bn_gap(model: torch.nn.Module, rows: torch.Tensor) -> float:
    """Largest |running mean - mean of the input| of ``model``'s first BatchNorm over ``rows`` (its
    input depends on no other BatchNorm, so an eval-mode forward gives it exactly)."""
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    seen = []
    handle = bn.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    model.eval()
    with torch.no_grad():
        model(rows)
    handle.remove()
    return (bn.running_mean - seen[0].mean(dim=(0, 2, 3))).abs().max().item()


def _train_rows(recipe) -> torch.Tensor:
    data = recipe.load_split("train")
    return torch.stack([data[i][0] for i in range(len(data))])


@pytest.mark.parametrize("precise", [True, False])
def test_a_teacher_trained_with_precise_bn_keeps_its_training_datas_statistics(tiny_recipe, tmp_path, precise):
    recipe = replace(tiny_recipe, augment=None)  # the statistics are of the rows as stored, not of random views
    config = TrainConfig(epochs=2, batch_size=16, lr=0.05, precise_bn=precise)
    result = train_teacher(recipe, tmp_path / "t.pt", config=config, device="cpu", log=quiet)
    model = recipe.build_teacher()
    model.load_state_dict(load_checkpoint(tmp_path / "t.pt")["state_dict"])
    gap = _first_bn_gap(model, _train_rows(recipe))
    if precise:
        assert gap < 1e-4
        assert all(e["precise_bn_seconds"] >= 0 for e in result["history"])
    else:  # the running average of 2 epochs of changing weights is not the population's
        assert gap > 1e-2 and "precise_bn_seconds" not in result["history"][0]


def test_a_resume_keeps_the_precise_bn_setting(tiny_recipe, tmp_path):
    config = TrainConfig(epochs=1, batch_size=16, lr=0.05)
    train_teacher(tiny_recipe, tmp_path / "t.pt", config=config, device="cpu", log=quiet)
    with pytest.raises(CheckpointError, match="precise_bn"):
        train_teacher(tiny_recipe, tmp_path / "t.pt", config=replace(config, epochs=2, precise_bn=True), resume=True,
                      device="cpu", log=quiet)


def test_train_blocks_with_precise_bn_estimates_along_the_students_path(tiny_recipe, teacher_ckpt, tmp_path):
    one_view = tmp_path / "one-view.zarr"  # every epoch then reads every stored row once
    extract(tiny_recipe, one_view, replace(TINY_STORE_OPTIONS, views=1), teacher_checkpoint=teacher_ckpt,
            progress=False, log=quiet)
    distill = tiny_recipe.distill
    recipe = replace(tiny_recipe, distill=replace(distill, lit=replace(distill.lit, precise_bn=True)))
    # 48 rows in 3 equal batches: a cumulative average weighs each batch the same.
    options = BlockTrainOptions(mode="kd", epochs=2, lr=0.05, batch_size=16, evaluate=False, verify=False)
    [result] = train_blocks(recipe, one_view, ["resnet8"], tmp_path / "kd", options, log=quiet)
    assert all(e["precise_bn_seconds"] >= 0 for e in result["history"])
    student = load_student(result["checkpoint"], recipe)
    store = open_store(one_view)
    loader = make_loader(StoreDataset(store, ["boundaries/0"]), ChunkShuffleSampler.for_store(store, 16))
    boundary0 = torch.cat([batch["boundaries/0"] for batch in loader])
    assert len(boundary0) == store.manifest.layout.samples
    # The sections' first BatchNorm: its input, conv1 of the stored boundary 0, depends on no other one.
    block = student.layer1[0]
    with torch.no_grad():
        inputs = block.conv1(boundary0)
    torch.testing.assert_close(block.bn1.running_mean, inputs.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)


def test_reestimate_batchnorm_restores_momentum_and_leaves_eval_mode():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4, momentum=0.3))
    batches = [torch.randn(8, 3, 6, 6) + i for i in range(3)]
    rows = reestimate_batchnorm(model, batches, model)
    bn = model[1]
    assert rows == 24 and bn.momentum == 0.3 and not model.training and bn.num_batches_tracked.item() == 3
    with torch.no_grad():
        expected = torch.stack([model[0](b).mean(dim=(0, 2, 3)) for b in batches]).mean(0)
    torch.testing.assert_close(bn.running_mean, expected)
