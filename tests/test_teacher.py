"""Teacher checkpoints and `litcache train-teacher`."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
import torch
from conftest import TINY, assert_clean_error, run_cli

from litcache import TrainConfig, load_teacher, train_teacher
from litcache.errors import CheckpointError
from litcache.runtime.checkpoint import load_checkpoint, save_atomic, weights_hash


def quiet(_msg):
    pass


def test_train_teacher_cli_then_resume(tiny_recipe, tmp_path):
    ckpt = tmp_path / "runs" / "teacher.pt"
    result = run_cli("train-teacher", TINY, "--out", ckpt, "--epochs", "1", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "epoch 1/1" in result.output
    m = re.search(r"teacher checkpoint (\S+): test accuracy ([0-9.]+), weights hash ([0-9a-f]{16})", result.output)
    assert m and m.group(1) == str(ckpt) and 0.0 <= float(m.group(2)) <= 1.0

    model, h, path = load_teacher(tiny_recipe, ckpt)
    assert h == m.group(3) == weights_hash(model) and path == str(ckpt) and not model.training
    saved = load_checkpoint(ckpt)
    assert saved["epoch"] == 1 and len(saved["history"]) == 1 and saved["recipe"] == "tiny"
    assert "optimizer" in saved and saved["config"]["epochs"] == 1
    assert [p.name for p in ckpt.parent.iterdir()] == ["teacher.pt"]  # no temporary files left

    # Without --resume an existing checkpoint is never overwritten.
    before = ckpt.read_bytes()
    result = run_cli("train-teacher", TINY, "--out", ckpt, "--epochs", "2", "--device", "cpu")
    assert_clean_error(result, f"'{ckpt}' already holds a training run. Pass --resume to continue it", 1)
    assert ckpt.read_bytes() == before

    result = run_cli("train-teacher", TINY, "--out", ckpt, "--epochs", "3", "--device", "cpu", "--resume")
    assert result.exit_code == 0, result.output
    assert "resuming from epoch 1 of 3" in result.output
    assert "epoch 1/3" not in result.output and "epoch 2/3" in result.output and "epoch 3/3" in result.output
    resumed = load_checkpoint(ckpt)
    assert resumed["epoch"] == 3
    assert [e["epoch"] for e in resumed["history"]] == [1, 2, 3]
    assert resumed["history"][0] == saved["history"][0]  # the saved epoch's record is kept as it was
    assert load_teacher(tiny_recipe, ckpt)[1] != h


@pytest.mark.parametrize("milestones", [(), (2,)])
def test_resumed_training_equals_uninterrupted(tiny_recipe, tmp_path, milestones):
    config = TrainConfig(epochs=3, batch_size=16, lr=0.05, milestones=milestones)
    whole = train_teacher(tiny_recipe, tmp_path / "whole.pt", config=config, device="cpu", log=quiet)
    train_teacher(tiny_recipe, tmp_path / "split.pt", config=replace(config, epochs=1), device="cpu", log=quiet)
    lines = []
    resumed = train_teacher(tiny_recipe, tmp_path / "split.pt", config=config, resume=True, device="cpu",
                            log=lines.append)
    assert lines[0] == "resuming from epoch 1 of 3"
    assert len(resumed["history"]) == 3
    assert resumed["weights_hash"] == whole["weights_hash"]
    assert [e["loss"] for e in resumed["history"]] == [e["loss"] for e in whole["history"]]
    lr = load_checkpoint(tmp_path / "split.pt")["optimizer"]["param_groups"][0]["lr"]
    assert lr == pytest.approx(0.05 * (0.1 if milestones else 1.0))


def test_resume_from_a_checkpoint_that_is_not_a_training_run(tiny_recipe, teacher_ckpt, tmp_path):
    # The conftest teacher holds weights only: no optimizer state to resume from.
    with pytest.raises(CheckpointError, match="is not a train-teacher checkpoint of recipe 'tiny'"):
        train_teacher(tiny_recipe, teacher_ckpt, config=TrainConfig(epochs=2, batch_size=16), resume=True,
                      device="cpu", log=quiet)


def test_resume_of_finished_training_does_nothing(tiny_recipe, tmp_path):
    config = TrainConfig(epochs=1, batch_size=16, lr=0.05)
    first = train_teacher(tiny_recipe, tmp_path / "t.pt", config=config, device="cpu", log=quiet)
    before = (tmp_path / "t.pt").read_bytes()
    again = train_teacher(tiny_recipe, tmp_path / "t.pt", config=config, resume=True, device="cpu", log=quiet)
    assert again["weights_hash"] == first["weights_hash"] and len(again["history"]) == 1
    assert (tmp_path / "t.pt").read_bytes() == before


def test_load_teacher_bare_state_dict(tiny_recipe, teacher_ckpt, tmp_path):
    model, h, _ = load_teacher(tiny_recipe, teacher_ckpt)
    bare = tmp_path / "bare.pt"
    save_atomic(model.state_dict(), bare)
    assert load_teacher(tiny_recipe, bare)[1] == h


def test_load_teacher_refuses(tiny_recipe, tmp_path):
    student = tmp_path / "student.pt"
    save_atomic({"state_dict": tiny_recipe.student_builder("resnet8")().state_dict()}, student)
    with pytest.raises(CheckpointError, match="does not fit the architecture: .* missing"):
        load_teacher(tiny_recipe, student)
    extra = tmp_path / "extra.pt"
    state = tiny_recipe.build_teacher().state_dict()
    state["head.extra"] = torch.zeros(1)
    save_atomic(state, extra)
    with pytest.raises(CheckpointError, match=r"1 unexpected \(e.g. head.extra\)"):
        load_teacher(tiny_recipe, extra)
    with pytest.raises(CheckpointError, match="Expected a checkpoint file at"):
        load_teacher(tiny_recipe, tmp_path / "none.pt")
    with pytest.raises(CheckpointError, match="names no teacher checkpoint"):
        load_teacher(tiny_recipe, None)


def test_weights_hash():
    torch.manual_seed(0)
    a = torch.nn.Linear(3, 2)
    b = torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert weights_hash(a) == weights_hash(b)
    with torch.no_grad():
        b.bias[0] += 1e-7
    assert weights_hash(a) != weights_hash(b)
    h = weights_hash(a)
    assert h != weights_hash(a.double())  # dtype is part of the hash


def test_each_seed_draws_its_own_epochs_of_data(tiny_recipe, tmp_path, monkeypatch):
    """Seeds are independent runs: seed 1's first epoch is not seed 0's second epoch shifted by one."""
    import litcache.training.teacher as tt

    orders: dict[int, list[list[int]]] = {}
    real = tt._batches

    def recording(dataset, augment, batch_size, seed):
        for x, y in real(dataset, augment, batch_size, seed):
            orders.setdefault(current, []).append(y.tolist())
            yield x, y

    monkeypatch.setattr(tt, "_batches", recording)
    config = TrainConfig(epochs=2, batch_size=16, lr=0.05)
    epochs = {}
    for current in (0, 1):
        train_teacher(tiny_recipe, tmp_path / f"s{current}.pt", config=config, seed=current, device="cpu", log=quiet)
        steps = len(orders[current]) // 2
        epochs[current] = [orders[current][:steps], orders[current][steps:]]
    assert epochs[1][0] != epochs[0][1] and epochs[1][0] != epochs[0][0]


def test_a_resume_draws_the_rest_of_its_own_seeds_stream(tiny_recipe, tmp_path):
    """Resuming with another --seed, or a seed >= 1 run from before per-seed streams, is refused:
    either would finish the run on another seed's data. Seed 0 was seeded the same way before."""
    config, longer = TrainConfig(epochs=1, batch_size=16, lr=0.05), TrainConfig(epochs=2, batch_size=16, lr=0.05)
    for seed in (0, 1):
        train_teacher(tiny_recipe, tmp_path / f"s{seed}.pt", config=config, seed=seed, device="cpu", log=quiet)
    with pytest.raises(CheckpointError, match="trained with --seed 1"):
        train_teacher(tiny_recipe, tmp_path / "s1.pt", config=longer, seed=2, resume=True, device="cpu", log=quiet)
    # A finished run trains nothing more: asking for it again under another seed just returns it
    # (a bench's one teacher serves every student seed).
    done = train_teacher(tiny_recipe, tmp_path / "s1.pt", config=config, seed=2, resume=True, device="cpu", log=quiet)
    assert [h["epoch"] for h in done["history"]] == [1]
    for seed in (0, 1):
        state = load_checkpoint(tmp_path / f"s{seed}.pt")
        del state["config"]["epoch_seeds"]
        save_atomic(state, tmp_path / f"s{seed}.pt")
    with pytest.raises(CheckpointError, match="started before litcache seeded each --seed's epochs"):
        train_teacher(tiny_recipe, tmp_path / "s1.pt", config=longer, seed=1, resume=True, device="cpu", log=quiet)
    resumed = train_teacher(tiny_recipe, tmp_path / "s0.pt", config=longer, seed=0, resume=True, device="cpu",
                            log=quiet)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
