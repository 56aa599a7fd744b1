"""Stage 2: training students from a store (faithfulness, modes, blocks, resume, refusals)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import RECIPES

from litcache import BlockTrainOptions, StoreDataset, assemble, load_student, open_store, train_blocks
from litcache.cli import main
from litcache.errors import CheckpointError, CorruptStoreError, OptionError, StoreMismatchError
from litcache.extraction.rows import ViewRows
from litcache.extraction.teacher import load_teacher
from litcache.recipe import load_recipe
from litcache.sections import cut_sections
from litcache.training.config import LossWeights, Phase
from litcache.training.step import step_losses
from litcache.training.student import build_student

QUIET = {"log": lambda m: None}


def _options(**kw) -> BlockTrainOptions:
    base = dict(epochs=2, batch_size=16, lr=0.05, evaluate=False)
    return BlockTrainOptions(**{**base, **kw})


def _student_from_store(recipe, store, seed=0):
    torch.manual_seed(seed)
    _, sectioned = build_student(recipe, "resnet8", store.module_state("stem"), store.module_state("head"))
    return sectioned


def test_lit_step_from_store_equals_online_teacher_step(tiny_recipe, teacher_ckpt, tiny_store):
    """The cache changes nothing but the cost: same losses and gradients as running the teacher online."""
    store = open_store(tiny_store)
    rows = list(range(40, 56))  # spans both views and two chunks
    fields = [*store.boundary_names, "logits", "labels"]
    cached = StoreDataset(store, fields).__getitems__(rows)

    teacher, _, _ = load_teacher(tiny_recipe, teacher_ckpt)
    teacher_split = cut_sections(teacher, tiny_recipe).eval()
    ident = store.manifest.identity
    views = ViewRows.from_identity(tiny_recipe.load_split("train"), ident, tiny_recipe.augment)
    x = torch.stack([views[r][0] for r in rows])
    with torch.no_grad():
        outs, logits = teacher_split.boundaries(x)
    online = {**{f"boundaries/{i}": t for i, t in enumerate(outs)}, "logits": logits,
              "labels": torch.tensor([views[r][1] for r in rows])}

    config = {"alpha": 0.95, "tau": 6.0, "beta": 0.75}
    results = []
    for batch in (cached, online):
        student = _student_from_store(tiny_recipe, store).train()
        loss, parts = step_losses(student, batch, Phase("lit"), LossWeights.from_record(config))
        loss.backward()
        results.append((parts, {n: p.grad.clone() for n, p in student.sections.named_parameters()}))
    (parts_a, grads_a), (parts_b, grads_b) = results
    assert torch.equal(cached["labels"], online["labels"])
    for key in parts_a:
        assert float(parts_a[key]) == pytest.approx(float(parts_b[key]), rel=1e-5, abs=1e-7), key
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", ["lit", "ir", "kd", "hints"])
def test_each_mode_decreases_its_loss(tiny_recipe, tiny_store, tmp_path, mode):
    epochs = 6 if mode == "hints" else 4
    [result] = train_blocks(tiny_recipe, tiny_store, ["resnet8"], tmp_path, _options(mode=mode, epochs=epochs, lr=0.02),
                            **QUIET)
    history = result["history"]
    key = "hint" if mode == "hints" else "loss"
    first, last = history[0][key], history[(epochs // 2 - 1) if mode == "hints" else -1][key]
    assert last < first, history
    metrics = json.loads((tmp_path / "resnet8" / "metrics.json").read_text())
    assert metrics["mode"] == mode and len(metrics["history"]) == epochs
    model = load_student(result["checkpoint"])
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 4)


def test_finetune_continues_a_lit_student_and_needs_init(tiny_recipe, tiny_store, tmp_path):
    with pytest.raises(OptionError, match="--init"):
        _options(mode="finetune")
    [lit] = train_blocks(tiny_recipe, tiny_store, ["resnet8"], tmp_path / "lit", _options(), **QUIET)
    [ft] = train_blocks(tiny_recipe, tiny_store, ["resnet8"], tmp_path / "ft",
                        _options(mode="finetune", epochs=6, lr=0.05, init=lit["checkpoint"]), **QUIET)
    kd = [h["kd"] for h in ft["history"]]
    assert sum(kd[-2:]) < sum(kd[:2]), kd
    assert ft["config"]["lr"] == 0.05 and ft["config"]["mode"] == "finetune"


def _head_is_the_teachers(checkpoint, recipe, store) -> bool:
    head = cut_sections(load_student(checkpoint), recipe).head.state_dict()
    return all(torch.equal(head[k], v) for k, v in store.module_state("head").items())


def test_the_head_trains_where_its_mode_does_unless_told(tiny_recipe, tiny_store, tmp_path):
    """lit and finetune keep the teacher's head (as the released LIT code), kd trains it; --train-head
    and --freeze-head say otherwise, and the choice is recorded, so a resume cannot change it."""
    store = open_store(tiny_store)
    [lit] = train_blocks(tiny_recipe, tiny_store, ["resnet8"], tmp_path / "lit", _options(epochs=1), **QUIET)
    assert lit["config"]["train_head"] is False and _head_is_the_teachers(lit["checkpoint"], tiny_recipe, store)
    [ft] = train_blocks(tiny_recipe, tiny_store, ["resnet8"], tmp_path / "ft",
                        _options(mode="finetune", epochs=1, init=lit["checkpoint"], train_head=True), **QUIET)
    assert ft["config"]["train_head"] is True and not _head_is_the_teachers(ft["checkpoint"], tiny_recipe, store)
    [kd] = train_blocks(tiny_recipe, tiny_store, ["resnet8"], tmp_path / "kd", _options(mode="kd", epochs=1), **QUIET)
    assert kd["config"]["train_head"] is True and not _head_is_the_teachers(kd["checkpoint"], tiny_recipe, store)
    [frozen] = train_blocks(tiny_recipe, tiny_store, ["resnet8"], tmp_path / "kd-frozen",
                            _options(mode="kd", epochs=1, train_head=False), **QUIET)
    assert _head_is_the_teachers(frozen["checkpoint"], tiny_recipe, store)
    with pytest.raises(CheckpointError, match=r"train_head False -> True"):
        train_blocks(tiny_recipe, tiny_store, ["resnet8"], tmp_path / "kd-frozen", _options(mode="kd", epochs=2),
                     resume=True, **QUIET)
    with pytest.raises(OptionError, match="never runs the head"):
        _options(mode="ir", train_head=True)


def test_a_checkpoint_from_before_train_head_resumes(tiny_recipe, tiny_store, tmp_path):
    """Its mode's default is what it did: a kd run trained the head, and resumes as such."""
    train_blocks(tiny_recipe, tiny_store, ["resnet8"], tmp_path, _options(mode="kd", epochs=1), **QUIET)
    last = tmp_path / "resnet8" / "last.pt"
    state = torch.load(last, weights_only=False)
    del state["config"]["train_head"]
    torch.save(state, last)
    [resumed] = train_blocks(tiny_recipe, tiny_store, ["resnet8"], tmp_path, _options(mode="kd", epochs=2), resume=True,
                             **QUIET)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]


def test_accuracy_gives_each_module_its_own_mode_back(tiny_recipe):
    """Per-epoch test accuracy runs in eval mode, then every module gets its own mode back: the
    frozen stem and head keep the teacher's BatchNorm statistics while the sections train on."""
    from litcache.training.metrics import accuracy

    model, sectioned = build_student(tiny_recipe, "resnet8")
    sectioned.eval()
    sectioned.sections.train()
    accuracy(model, tiny_recipe.load_split("test"))
    assert all(m.training for m in sectioned.sections.modules())
    assert not any(m.training for part in (sectioned.stem, sectioned.head) for m in part.modules())


def test_block_training_then_assembly_gives_the_trained_sections(tiny_recipe, tiny_store, tmp_path):
    parts = []
    for block in (1, 2, 3):
        [r] = train_blocks(tiny_recipe, tiny_store, ["resnet8"], tmp_path / f"b{block}",
                           _options(mode="ir", section=block), **QUIET)
        parts.append(r["checkpoint"])
    with pytest.raises(CheckpointError, match=r"sections \[3\]"):
        assemble(parts[:2], tmp_path / "partial.pt")
    assemble(parts, tmp_path / "student.pt")
    model = load_student(tmp_path / "student.pt")
    sectioned = cut_sections(model, tiny_recipe)
    for block, path in enumerate(parts, start=1):
        donor = cut_sections(load_student(path), tiny_recipe)
        for a, b in zip(sectioned.sections[block - 1].parameters(), donor.sections[block - 1].parameters()):
            assert torch.equal(a, b)
    store = open_store(tiny_store)
    # The assembled student carries the teacher's stem and head.
    for key, value in store.module_state("head").items():
        assert torch.equal(sectioned.head.state_dict()[key], value)
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 4)


def test_block_training_leaves_other_sections_untouched(tiny_recipe, tiny_store, tmp_path):
    [r] = train_blocks(tiny_recipe, tiny_store, ["resnet8"], tmp_path, _options(mode="ir", section=2), **QUIET)
    torch.manual_seed(0)
    fresh = cut_sections(tiny_recipe.students["resnet8"](), tiny_recipe)
    trained = cut_sections(load_student(r["checkpoint"]), tiny_recipe)
    assert all(torch.equal(a, b) for a, b in zip(fresh.sections[0].parameters(), trained.sections[0].parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(fresh.sections[1].parameters(), trained.sections[1].parameters()))


def test_resume_continues_where_it_stopped(tiny_recipe, tiny_store, tmp_path):
    [straight] = train_blocks(tiny_recipe, tiny_store, ["resnet8"], tmp_path / "a", _options(epochs=4), **QUIET)
    train_blocks(tiny_recipe, tiny_store, ["resnet8"], tmp_path / "b", _options(epochs=2), **QUIET)
    with pytest.raises(CheckpointError, match="--resume"):
        train_blocks(tiny_recipe, tiny_store, ["resnet8"], tmp_path / "b", _options(epochs=4), **QUIET)
    with pytest.raises(CheckpointError, match=r"with other settings \(lr 0.05 -> 0.1\)"):
        train_blocks(tiny_recipe, tiny_store, ["resnet8"], tmp_path / "b", _options(epochs=4, lr=0.1), resume=True,
                     **QUIET)
    [resumed] = train_blocks(tiny_recipe, tiny_store, ["resnet8"], tmp_path / "b", _options(epochs=4), resume=True,
                             **QUIET)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3, 4]
    a = load_student(straight["checkpoint"]).state_dict()
    b = load_student(resumed["checkpoint"]).state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_student_that_does_not_fit_the_store_is_refused(tiny_store, tmp_path):
    recipe = load_recipe(RECIPES / "tiny_wide_student.py")
    with pytest.raises(StoreMismatchError, match=r"section 3 maps \(8, 4, 4\) to \(16, 2, 2\), "
                                                 r"but the store's boundary 3 is \(8, 2, 2\)"):
        train_blocks(recipe, tiny_store, ["wide"], tmp_path, _options(), **QUIET)
    assert not (tmp_path / "wide").exists()


def test_corrupt_store_is_refused_unless_verification_is_skipped(tiny_recipe, tiny_store, tmp_path):
    shard = sorted((Path(tiny_store) / "boundaries" / "2").rglob("*"))
    target = [p for p in shard if p.is_file() and p.name != "zarr.json"][0]
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    verified, skipped = [], []
    with pytest.raises(CorruptStoreError, match=r"is corrupt: array 'boundaries/2' shard 0 \(rows 0-16\)"):
        train_blocks(tiny_recipe, tiny_store, ["resnet8"], tmp_path / "verified", _options(), log=verified.append)
    assert verified == [] and not (tmp_path / "verified").exists()  # refused before training starts
    # Skipped: training starts, and the damaged chunk is still named when a batch reads it.
    with pytest.raises(CorruptStoreError, match=r"Cannot read shard 0 of 'boundaries/2'"):
        train_blocks(tiny_recipe, tiny_store, ["resnet8"], tmp_path / "skipped", _options(verify=False),
                     log=skipped.append)
    # It started (the log line), failed at its first read of the damaged chunk, and left no folder: it wrote nothing.
    assert skipped[0].startswith("resnet8: lit, ") and not (tmp_path / "skipped" / "resnet8").exists()


def test_several_students_and_cli_end_to_end(tiny_store, teacher_ckpt, tmp_path):
    runner = CliRunner()
    tiny = str(RECIPES / "tiny.py")
    result = runner.invoke(main, ["train-blocks", tiny, "--store", str(tiny_store), "--student", "resnet8",
                                  "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "16", "-q"])
    assert result.exit_code == 0, result.output
    ckpt = tmp_path / "run" / "resnet8" / "student.pt"
    assert ckpt.is_file()
    result = runner.invoke(main, ["evaluate", tiny, "--student", str(ckpt), "--teacher", str(teacher_ckpt), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["student"]["depth"] == 8 and report["teacher"]["depth"] == 14
    assert report["student"]["compression_by_depth"] == pytest.approx(14 / 8, rel=1e-3)
    assert 0.0 <= report["student"]["accuracy"] <= 1.0 and report["student"]["samples"] == 16

    result = runner.invoke(main, ["train-blocks", tiny, "--store", str(tiny_store), "--student", "nope",
                                  "--out", str(tmp_path / "x")])
    assert (result.exit_code == 1
            and result.output.startswith("Error: Expected a student of recipe 'tiny' (resnet8, or mixes such as "
                                         "'mix-1-1-1'), got 'nope'"))
    result = runner.invoke(main, ["train-blocks", tiny, "--store", str(tiny_store), "--student", "resnet8", "--out",
                                  str(tmp_path / "y"), "--mode", "lit", "--block", "1"])
    assert result.exit_code == 1 and "Error: --block trains one section alone" in result.output
    assert "Traceback" not in result.output


def test_optimizer_choice_follows_the_recipe(tiny_store, tmp_path):
    from dataclasses import replace

    from litcache.errors import RecipeError
    from litcache.recipe import DistillConfig, TrainConfig

    adam = TrainConfig(epochs=1, batch_size=16, lr=1e-3, optimizer="adam", betas=(0.5, 0.999), weight_decay=0.0)
    assert isinstance(adam.make_optimizer([torch.nn.Parameter(torch.zeros(1))]), torch.optim.Adam)
    with pytest.raises(RecipeError, match="optimizer in"):
        TrainConfig(optimizer="lbfgs")
    recipe = replace(load_recipe(RECIPES / "tiny.py"), distill=DistillConfig(lit=adam, finetune=adam))
    [r] = train_blocks(recipe, tiny_store, ["resnet8"], tmp_path, BlockTrainOptions(evaluate=False), **QUIET)
    assert r["config"]["optimizer"] == "adam" and r["config"]["betas"] == [0.5, 0.999]
    state = torch.load(tmp_path / "resnet8" / "last.pt", weights_only=True)["optimizer"]
    assert "exp_avg" in next(iter(state["state"].values()))  # Adam's moment estimates


def test_online_run_matches_the_cached_run(tiny_recipe, teacher_ckpt, tiny_store, tmp_path, monkeypatch):
    """Online LIT (teacher every batch) is the cached run's baseline: same rows, order, initial
    weights and losses, so after an epoch the weights agree to float32 rounding. The teacher runs
    on batches of 16 online and of 8 in the extraction; CPU kernels may round a batch's rows by
    its size in the last bit (~1e-7 relative), which three SGD steps amplify little: 1e-5 allows
    that (the runs measured bit-identical here) and is far below what another row or order gives."""
    from litcache.store.arrays import Store

    [cached] = train_blocks(tiny_recipe, tiny_store, ["resnet8"], tmp_path / "cached", _options(epochs=1), **QUIET)
    [memory] = train_blocks(tiny_recipe, tiny_store, ["resnet8"], tmp_path / "memory",
                            _options(epochs=1, in_memory=True), **QUIET)

    def no_reads(self, name, *args):
        raise AssertionError(f"the online run read store array {name}")

    for reader in ("array", "read", "read_chunk"):  # the store gives its manifest only
        if hasattr(Store, reader):
            monkeypatch.setattr(Store, reader, no_reads)
    [online] = train_blocks(tiny_recipe, tiny_store, ["resnet8"], tmp_path / "online",
                            _options(epochs=1, online_teacher=str(teacher_ckpt)), **QUIET)
    monkeypatch.undo()

    weights = {name: load_student(r["checkpoint"]).state_dict() for name, r in
               (("cached", cached), ("memory", memory), ("online", online))}
    for key, value in weights["cached"].items():
        assert torch.equal(weights["memory"][key], value), key  # the same bytes, read beforehand
        torch.testing.assert_close(weights["online"][key], value, rtol=1e-5, atol=1e-5)
    for a, b in zip(cached["history"], online["history"]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["kd"] == pytest.approx(a["kd"], rel=1e-5)
    metrics = json.loads((tmp_path / "online" / "resnet8" / "metrics.json").read_text())
    assert metrics["online"] is True and metrics["config"]["online_teacher"] == str(teacher_ckpt)
    assert json.loads((tmp_path / "cached" / "resnet8" / "metrics.json").read_text())["online"] is False


def test_a_finetune_draws_new_views_not_the_lit_phases_again(tiny_recipe, teacher_ckpt, tiny_store, tmp_path,
                                                             monkeypatch):
    """LIT then fine-tune with fresh views is one stream of distinct views: the fine-tune's epochs
    continue after the LIT phase's (views and row orders) instead of replaying its first ones, and a
    resumed fine-tune continues its own stream."""
    from litcache.training.dataset import ChunkShuffleSampler

    views, orders = [], []
    make_view = ViewRows.make_view
    monkeypatch.setattr(ViewRows, "make_view",
                        lambda self, index, view: (views.append(view), make_view(self, index, view))[1])
    monkeypatch.setattr(ChunkShuffleSampler, "__iter__", lambda self: iter(orders.append(b := self._batches()) or b))
    fresh = dict(online_teacher=str(teacher_ckpt), fresh_views=True, batch_size=48)
    [lit] = train_blocks(tiny_recipe, tiny_store, ["resnet8"], tmp_path / "lit", _options(epochs=2, **fresh), **QUIET)
    lit_views, lit_orders = set(views), list(orders)
    views.clear(), orders.clear()
    [ft] = train_blocks(tiny_recipe, tiny_store, ["resnet8"], tmp_path / "ft",
                        _options(mode="finetune", epochs=2, init=lit["checkpoint"], **fresh), **QUIET)
    assert len(lit_views) == 2 and len(set(views)) == 2 and not set(views) & lit_views, (lit_views, set(views))
    assert orders[0] != lit_orders[0]
    assert ft["config"]["data_epoch_offset"] == 2
    ft_views = set(views)
    views.clear()
    train_blocks(tiny_recipe, tiny_store, ["resnet8"], tmp_path / "ft",
                 _options(mode="finetune", epochs=3, init=lit["checkpoint"], **fresh), resume=True, **QUIET)
    assert set(views) == {max(ft_views) + 1}
    # A fine-tune from before data_epoch_offset replayed the LIT phase's stream: it resumes on that
    # stream (offset 0, not one recomputed from --init) and says so.
    last = tmp_path / "ft" / "resnet8" / "last.pt"
    state = torch.load(last, weights_only=False)
    del state["config"]["data_epoch_offset"]
    torch.save(state, last)
    views.clear()
    said = []
    train_blocks(tiny_recipe, tiny_store, ["resnet8"], tmp_path / "ft",
                 _options(mode="finetune", epochs=4, init=lit["checkpoint"], **fresh), resume=True, log=said.append)
    assert set(views) == {min(ft_views) + 1}  # data epoch 3, where the offset 2 would give 5
    assert any("before litcache recorded data_epoch_offset" in line for line in said), said


def test_online_teacher_of_other_weights_is_refused(tiny_recipe, tiny_store, other_teacher_ckpt, tmp_path):
    store_hash = open_store(tiny_store).manifest.identity.teacher_hash
    other_hash = load_teacher(tiny_recipe, other_teacher_ckpt)[1]
    with pytest.raises(StoreMismatchError, match=f"weights hash {other_hash}.*weights hash {store_hash}"):
        train_blocks(tiny_recipe, tiny_store, ["resnet8"], tmp_path, _options(online_teacher=str(other_teacher_ckpt)),
                     **QUIET)
    assert not (tmp_path / "resnet8").exists()
    with pytest.raises(OptionError, match="--online-teacher"):
        _options(online_teacher=str(other_teacher_ckpt), in_memory=True)


def test_online_teacher_flag_and_resume(tiny_store, teacher_ckpt, other_teacher_ckpt, tmp_path):
    from conftest import assert_clean_error, run_cli

    tiny = str(RECIPES / "tiny.py")
    args = ["train-blocks", tiny, "--store", tiny_store, "--student", "resnet8", "--out", tmp_path / "run",
            "--batch-size", "16", "--no-eval", "-q"]
    result = run_cli(*args, "--epochs", "1", "--online-teacher", teacher_ckpt)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "resnet8" / "metrics.json").read_text())["online"] is True
    # Online and cached runs are different runs: one does not continue the other.
    result = run_cli(*args, "--epochs", "2", "--resume")
    assert "online True -> False" in assert_clean_error(result, "Cannot resume")
    result = run_cli(*args, "--epochs", "2", "--resume", "--online-teacher", teacher_ckpt)
    assert result.exit_code == 0, result.output
    result = run_cli(*args, "--epochs", "1", "--online-teacher", other_teacher_ckpt, "--out", tmp_path / "other")
    assert_clean_error(result, "Online teacher")

    # A checkpoint from before the online option resumes as the cached run it was.
    run_cli(*args, "--epochs", "1", "--out", tmp_path / "old")
    last = tmp_path / "old" / "resnet8" / "last.pt"
    state = torch.load(last, weights_only=True)
    del state["config"]["online"]
    torch.save(state, last)
    result = run_cli(*args, "--epochs", "2", "--resume", "--out", tmp_path / "old")
    assert result.exit_code == 0, result.output
