"""Learning-rate schedules, batched augmentation, the LIT phase's loss scale, the frozen fine-tune
head, BatchNorm recalibration, --views K and online fresh views."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import quiet

from litcache import ChunkShuffleSampler, CropFlip, StoreDataset, TrainConfig, open_store
from litcache.errors import OptionError, RecipeError
from litcache.runtime.precision import resolve_compute
from litcache.store.layout import RowLayout
from litcache.training.blocks import BlockTrainOptions, recalibrate_batchnorm, train_blocks
from litcache.training.config import LossWeights, Phase
from litcache.training.dataset import make_loader
from litcache.training.online import OnlineTeacherDataset
from litcache.training.step import step_losses
from litcache.training.student import build_student, load_student


def _torch_schedule(make, epochs: int, steps: int, lr: float, momentum: float = 0.9):
    opt = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=lr, momentum=momentum)
    sched = make(opt)
    got = []
    for _ in range(epochs * steps):
        got.append((opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"]))
        opt.step()
        sched.step()
    return got


def test_onecycle_is_torchs_one_cycle():
    config = TrainConfig(epochs=3, lr=0.2, schedule="onecycle", warmup=0.25, nesterov=True)
    ours = [config.schedule_at(e, s, 13) for e in range(3) for s in range(13)]
    theirs = _torch_schedule(lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.2, total_steps=39,
                                                                           pct_start=0.25),
                             3, 13, 0.2)
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-12)


def test_multistep_and_cosine_schedules():
    multistep = TrainConfig(epochs=4, lr=0.1, milestones=(1, 3), gamma=0.1)
    assert [round(multistep.schedule_at(e, 5, 10)[0], 6) for e in range(4)] == [0.1, 0.01, 0.01, 0.001]
    cosine = TrainConfig(epochs=2, lr=0.1, schedule="cosine", warmup=0.25)
    lrs = [cosine.schedule_at(e, s, 10)[0] for e in range(2) for s in range(10)]
    assert lrs[:5] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1])  # linear warm-up over 5 of 20 steps
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:])) and lrs[-1] < 0.002
    with pytest.raises(RecipeError, match="onecycle"):
        TrainConfig(schedule="onecycle")
    with pytest.raises(RecipeError, match="nesterov"):
        TrainConfig(nesterov=True, momentum=0.0)


@pytest.mark.parametrize("fill", [None, (0.5, -1.0, 2.0)])
def test_batched_crop_flip_equals_per_sample(fill):
    augment = CropFlip(padding=3, fill=fill)
    x = torch.randn(32, 3, 10, 10)
    params = augment.sample_batch(torch.Generator().manual_seed(0), 32)
    assert set(params[:, 2].tolist()) == {0.0, 1.0} and params[:, :2].max() <= 6
    batched = augment.apply_batch(x, params)
    assert torch.equal(batched, torch.stack([augment.apply(x[i], params[i].tolist()) for i in range(32)]))
    corner = augment.apply(x[0], (0.0, 0.0, 0.0))[:, 0, 0]
    assert corner.tolist() == (list(fill) if fill else [0.0, 0.0, 0.0])
    assert ("fill" in augment.describe()) == (fill is not None)


def test_the_lit_loss_scale_scales_the_whole_lit_loss(tiny_recipe, tiny_store):
    store = open_store(tiny_store)
    batch = StoreDataset(store, [*store.boundary_names, "logits", "labels"]).__getitems__(range(16))
    _, split = build_student(tiny_recipe, "resnet8", store.module_state("stem"), store.module_state("head"))
    split.eval()
    config = {"alpha": 0.95, "tau": 6.0, "beta": 0.75}
    full, parts = step_losses(split, batch, Phase("lit"), LossWeights.from_record({**config, "loss_scale": 1.0}))
    half, _ = step_losses(split, batch, Phase("lit"), LossWeights.from_record({**config, "loss_scale": 0.5}))
    assert float(half.detach()) == pytest.approx(float(full.detach()) / 2)
    assert float(full.detach()) == pytest.approx(0.75 * float(parts["kd"])
                                                 + 0.25 * sum(float(parts[f"ir{i}"]) for i in (1, 2, 3)))


def test_finetune_keeps_the_teachers_head_frozen_and_records_the_scale(tiny_recipe, tiny_store, tmp_path):
    options = dict(batch_size=16, lr=0.05, evaluate=False)
    [lit] = train_blocks(tiny_recipe, tiny_store, ["resnet8"], tmp_path / "lit",
                         BlockTrainOptions(mode="lit", epochs=1, loss_scale=0.5, **options), log=quiet)
    assert lit["config"]["loss_scale"] == 0.5
    [ft] = train_blocks(tiny_recipe, tiny_store, ["resnet8"], tmp_path / "ft",
                        BlockTrainOptions(mode="finetune", epochs=2, init=lit["checkpoint"], **options), log=quiet)
    before, after = load_student(lit["checkpoint"]), load_student(ft["checkpoint"])
    for (name, a), b in zip(before.head.state_dict().items(), after.head.state_dict().values()):
        assert torch.equal(a, b), name
    assert not all(torch.equal(a, b) for a, b in zip(before.layer1.parameters(), after.layer1.parameters()))
    assert ft["config"]["loss_scale"] == 1.0  # the scale belongs to the LIT phase only


def test_recalibration_estimates_statistics_along_the_students_own_path(tiny_recipe, tiny_store, tmp_path):
    store = open_store(tiny_store)
    model, split = build_student(tiny_recipe, "resnet8", store.module_state("stem"), store.module_state("head"))
    compute = resolve_compute("fp32", "cpu", model)
    loader = make_loader(StoreDataset(store, ["boundaries/0"]), ChunkShuffleSampler.for_store(store, 16))
    rows = recalibrate_batchnorm(split, loader, compute)
    assert rows == store.manifest.layout.samples  # one view of every sample
    # The running mean of section 2's first BatchNorm is the mean of its input over the student's path.
    inputs = torch.cat([split.sections[1][0].conv1(split.sections[0](b["boundaries/0"])).detach() for b in loader])
    bn = split.sections[1][0].bn1
    torch.testing.assert_close(bn.running_mean, inputs.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert bn.momentum == 0.1 and not split.stem.training  # momentum restored; frozen parts stay in eval


def test_views_k_reads_only_the_first_k_views():
    layout = RowLayout(samples=40, views=4, chunk_rows=8)
    sampler = ChunkShuffleSampler(layout, 8, views=2, seed=3)
    seen = set()
    for epoch in range(6):
        sampler.set_epoch(epoch)
        rows = [r for batch in sampler for r in batch]
        assert sorted(layout.locate(r)[0] for r in rows) == list(range(40))  # every sample once per epoch
        seen |= {layout.locate(r)[1] for r in rows}
    assert seen == {0, 1}
    with pytest.raises(ValueError, match="between 1 and the store's 4"):
        ChunkShuffleSampler(layout, 8, views=5)


def test_views_above_the_stores_are_refused(tiny_recipe, tiny_store, tmp_path):
    with pytest.raises(OptionError, match="at most the store's 2 views"):
        train_blocks(tiny_recipe, tiny_store, ["resnet8"], tmp_path, BlockTrainOptions(views=3, evaluate=False),
                     log=quiet)


def test_fresh_views_differ_per_epoch_and_from_the_stored_ones(tiny_recipe, tiny_store, teacher_ckpt):
    store = open_store(tiny_store)
    fields = ["boundaries/0", "labels", "source_index", "view"]
    fresh = OnlineTeacherDataset(tiny_recipe, store, teacher_ckpt, fields, fresh_views=True)
    replay = OnlineTeacherDataset(tiny_recipe, store, teacher_ckpt, fields)
    rows = list(range(16))
    stored = StoreDataset(store, fields).__getitems__(rows)
    torch.testing.assert_close(replay.__getitems__(rows)["boundaries/0"], stored["boundaries/0"])
    epochs = []
    for epoch in (0, 1, 0):
        fresh.set_epoch(epoch)
        epochs.append(fresh.__getitems__(rows))
    assert torch.equal(epochs[0]["boundaries/0"], epochs[2]["boundaries/0"])  # deterministic
    assert not torch.equal(epochs[0]["boundaries/0"], epochs[1]["boundaries/0"])
    assert not torch.equal(epochs[0]["boundaries/0"], stored["boundaries/0"])
    assert (torch.equal(epochs[0]["source_index"], stored["source_index"])
            and torch.equal(epochs[0]["labels"], stored["labels"]))
    assert epochs[1]["view"].unique().tolist() == [store.manifest.layout.views + 1]


def test_fresh_views_need_an_online_teacher(tiny_recipe, tiny_store, tmp_path):
    with pytest.raises(OptionError, match="needs --online-teacher"):
        BlockTrainOptions(fresh_views=True)


def test_batched_rows_equal_rows_one_by_one(tiny_recipe):
    """Extraction reads rows a batch at a time (ViewRows.get_batch): the same views, bit for bit."""
    from litcache.extraction.rows import ViewRows

    rows = ViewRows(tiny_recipe.load_split("train"), RowLayout(48, 3, 8), seed=5, augment=tiny_recipe.augment)
    picks = [0, 7, 8, 50, 100, 143, 120]
    batch = rows.get_batch(picks)
    singles = [rows[r] for r in picks]
    assert torch.equal(batch[0], torch.stack([s[0] for s in singles]))
    assert batch[1].tolist() == [s[1] for s in singles] and batch[2].tolist() == [s[2] for s in singles]
    assert batch[3].tolist() == [s[3] for s in singles]
    assert torch.equal(batch[4], torch.stack([s[4] for s in singles]))


def test_many_epochs_over_few_views_are_warned_about(tiny_recipe, tiny_store, tmp_path):
    lines = []
    train_blocks(tiny_recipe, tiny_store, ["resnet8"], tmp_path / "a",
                 BlockTrainOptions(epochs=9, views=2, batch_size=48, evaluate=False), log=lines.append)
    assert any(line.startswith("warning: 9 epochs over 2 stored views") for line in lines), lines
    lines.clear()
    train_blocks(tiny_recipe, tiny_store, ["resnet8"], tmp_path / "b",
                 BlockTrainOptions(epochs=8, views=2, batch_size=48, evaluate=False), log=lines.append)
    assert not any(line.startswith("warning:") for line in lines), lines
