"""LIT on a Vision Transformer (pipelines/cifar10_vit.py): boundaries are the residual stream
(tokens, hidden), sections are runs of encoder blocks, students have fewer blocks per section and
may start from the teacher's blocks. A tiny ViT goes through the whole CLI, and a LIT step from a
float32 store equals the step with the teacher online."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from conftest import REPO, assert_clean_error, run_cli
from test_pipelines import make_cifar_folder, make_teacher

from litcache import ExtractOptions, extract, load_recipe, open_store
from litcache.errors import RecipeError, StoreMismatchError
from litcache.models.vit import cifar_vit
from litcache.recipe import TrainConfig
from litcache.sections import cut_sections
from litcache.store.manifest import read_manifest, write_manifest
from litcache.training.blocks import BlockTrainOptions, train_blocks
from litcache.training.config import LossWeights, Phase
from litcache.training.dataset import StoreDataset
from litcache.training.losses import ir_loss
from litcache.training.metrics import model_stats
from litcache.training.online import OnlineTeacherDataset
from litcache.training.step import step_losses
from litcache.training.student import block_picks, build_student, read_student

VIT = REPO / "pipelines" / "cifar10_vit.py"
TINY_VIT = {"LITCACHE_VIT_DEPTH": "4", "LITCACHE_VIT_SECTIONS": "2", "LITCACHE_VIT_WIDTH": "16",
            "LITCACHE_VIT_HEADS": "2", "LITCACHE_VIT_MLP": "32"}


def quiet(_msg: str) -> None:
    pass


@pytest.fixture
def vit_recipe(tmp_path, monkeypatch):
    """The ViT recipe at tiny size (4 blocks in 2 sections of 2; students vit2 = 1 block per section)."""
    folder = make_cifar_folder(tmp_path / "cifar10", train_per_class=2, test_per_class=1)
    monkeypatch.delenv("LITCACHE_CIFAR10_ROOT", raising=False)
    monkeypatch.delenv("LITCACHE_CACHE_DIR", raising=False)
    monkeypatch.setenv("LITCACHE_CIFAR10_DIR", str(folder))
    for key, value in TINY_VIT.items():
        monkeypatch.setenv(key, value)
    return load_recipe(VIT)


@pytest.fixture
def vit_store(vit_recipe, tmp_path):
    teacher = make_teacher(vit_recipe, tmp_path / "teacher.pt")
    store = tmp_path / "train.zarr"
    extract(vit_recipe, store, ExtractOptions(views=2, dtype="float32", chunk_rows=8, batch_size=8, device="cpu"),
            teacher_checkpoint=teacher, progress=False, log=quiet)
    return store, teacher


def test_vit_defaults_and_split():
    recipe = load_recipe(VIT)
    teacher = recipe.build_teacher()
    assert len(teacher.encoder.layers) == 8 and teacher.hidden_dim == 192 and len(recipe.sections) == 4
    sectioned = cut_sections(teacher.eval(), recipe)
    assert [len(s) for s in sectioned.sections] == [2, 2, 2, 2]
    x = torch.randn(2, 3, 32, 32)
    outs, logits = sectioned.boundaries(x)
    assert [tuple(z.shape) for z in outs] == [(2, 65, 192)] * 5  # the residual stream at every boundary
    assert torch.equal(logits, teacher(x))
    assert [len(s) for s in cut_sections(recipe.students["vit4"](), recipe).sections] == [1, 1, 1, 1]
    assert recipe.student_init == "teacher-blocks" and recipe.teacher_training.optimizer == "adamw"


def test_a_student_too_shallow_for_the_sections_is_refused():
    recipe = load_recipe(VIT)  # 4 sections: a 2-block student cannot have one block per section
    with pytest.raises(RecipeError,
                       match="Expected a transformer depth divisible by the recipe's 4 sections, got 2 blocks"):
        cut_sections(recipe.students["vit2"](), recipe)


def test_vit_macs_count_attention_and_depth_counts_blocks():
    stats = model_stats(cifar_vit(), torch.randn(1, 3, 32, 32))
    tokens, width, mlp, blocks = 65, 192, 384, 8
    per_block = 4 * tokens * width * width + 2 * tokens * tokens * width + 2 * tokens * width * mlp
    patches = 64 * width * 3 * 4 * 4
    assert stats["macs_per_sample"] == blocks * per_block + patches + width * 10
    assert stats["depth"] == 8


def test_block_picks_take_every_other_block():
    assert block_picks(2, 1) == [0] and block_picks(4, 2) == [0, 2] and block_picks(8, 4) == [0, 2, 4, 6]
    assert block_picks(3, 3) == [0, 1, 2]


def test_cosine_ir_loss():
    a = torch.randn(4, 65, 16)  # a residual stream: the features are the last axis
    assert float(ir_loss(a, a, "cosine", feature_axis=-1)) == pytest.approx(0.0, abs=1e-6)
    scaled = a * torch.rand(4, 65, 1)  # each token's vector rescaled: the same directions
    assert float(ir_loss(scaled, a, "cosine", feature_axis=-1)) == pytest.approx(0.0, abs=1e-5)  # unlike MSE
    assert float(ir_loss(scaled, a, "cosine", feature_axis=1)) > 0.01  # along the wrong axis it is not
    assert float(ir_loss(-a, a, "cosine", feature_axis=-1)) == pytest.approx(2.0, abs=1e-5)
    maps = torch.randn(2, 8, 4, 4)  # a feature map: cosine along the channels
    expected = (1 - torch.nn.functional.cosine_similarity(maps, maps.flip(0), dim=1)).mean()
    assert float(ir_loss(maps, maps.flip(0), "cosine")) == pytest.approx(float(expected))


def test_adamw_is_an_optimizer():
    optimizer = TrainConfig(optimizer="adamw", lr=1e-3, weight_decay=0.05).make_optimizer(
        [torch.nn.Parameter(torch.ones(2))])
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.param_groups[0]["weight_decay"] == 0.05


def test_vit_through_the_cli(vit_recipe, vit_store, tmp_path):
    """extract -> verify --replay -> train-blocks (lit; ir --block; finetune) -> assemble -> evaluate."""
    store, teacher = vit_store
    manifest = open_store(store).manifest
    assert manifest.arrays["boundaries/2"].row_shape == (65, 16)
    assert set(manifest.teacher_modules) == {"stem", "head", "section1", "section2"}

    result = run_cli("verify", store, str(VIT), "--replay", "6", "--teacher", teacher)
    assert result.exit_code == 0, result.output

    common = ["--store", store, "--student", "vit2", "--epochs", "1", "--batch-size", "8", "--device", "cpu", "-q"]
    lit = run_cli("train-blocks", str(VIT), *common, "--out", tmp_path / "lit")
    assert lit.exit_code == 0, lit.output
    config = read_student(tmp_path / "lit" / "vit2" / "student.pt")["config"]
    assert config["student_init"] == "teacher-blocks" and config["ir_loss"] == "mse" and config["optimizer"] == "adamw"

    parts = []
    for block in (1, 2):
        out = tmp_path / f"ir{block}"
        result = run_cli("train-blocks", str(VIT), *common, "--mode", "ir", "--block", str(block),
                         "--ir-loss", "cosine", "--out", out)
        assert result.exit_code == 0, result.output
        parts.append(out / "vit2" / "student.pt")
    assert read_student(parts[0])["config"]["ir_loss"] == "cosine"
    assembled = tmp_path / "assembled.pt"
    result = run_cli("assemble", *parts, "--out", assembled)
    assert result.exit_code == 0, result.output

    ft = run_cli("train-blocks", str(VIT), *common, "--mode", "finetune", "--init", assembled, "--out", tmp_path / "ft")
    assert ft.exit_code == 0, ft.output
    result = run_cli("evaluate", str(VIT), "--student-checkpoint", tmp_path / "ft" / "vit2" / "student.pt",
                     "--teacher", teacher, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["student"]["depth"] == 2 and report["teacher"]["depth"] == 4
    assert 0 <= report["student"]["accuracy"] <= 1 and report["student"]["params"] < report["teacher"]["params"]
    assert report["student"]["macs_per_sample"] < report["teacher"]["macs_per_sample"]


def test_students_start_from_every_other_teacher_block(vit_recipe, vit_store, tmp_path):
    store, teacher = vit_store
    options = BlockTrainOptions(epochs=1, batch_size=8, device="cpu", evaluate=False, lr=1e-12, weight_decay=0.0)
    lines = []
    [result] = train_blocks(vit_recipe, store, ["vit2"], tmp_path / "init", options, log=lines.append)
    assert any("sections start from the teacher's blocks [[0], [2]]" in line for line in lines)
    student = read_student(result["checkpoint"])["state_dict"]
    stored = open_store(store)
    for section in (1, 2):  # teacher section I holds blocks 2I-2, 2I-1; the student's block I-1 starts as the first
        for key, value in stored.module_state(f"section{section}").items():
            if key.startswith("0."):
                torch.testing.assert_close(student[f"encoder.layers.encoder_layer_{section - 1}.{key[2:]}"], value,
                                           rtol=0, atol=1e-6)  # lr 1e-12: one step changes nothing visible

    scratch = BlockTrainOptions(epochs=1, batch_size=8, device="cpu", evaluate=False, student_init="scratch")
    [result] = train_blocks(vit_recipe, store, ["vit2"], tmp_path / "scratch", scratch, log=quiet)
    assert read_student(result["checkpoint"])["config"]["student_init"] == "scratch"


def test_teacher_blocks_from_a_store_without_section_weights_is_refused(vit_recipe, vit_store, tmp_path):
    store, _ = vit_store
    manifest = read_manifest(store)  # as a store extracted before the sections' weights were kept
    kept = {part: tensors for part, tensors in manifest.teacher_modules.items() if not part.startswith("section")}
    write_manifest(store, replace(manifest, teacher_modules=kept))
    with pytest.raises(StoreMismatchError, match="holds no weights of the teacher's sections"):
        train_blocks(vit_recipe, store, ["vit2"], tmp_path / "lit", BlockTrainOptions(epochs=1, device="cpu"),
                     log=quiet)
    result = run_cli("train-blocks", str(VIT), "--store", store, "--student", "vit2", "--out", tmp_path / "cli",
                     "--epochs", "1", "--device", "cpu", "-q")
    assert_clean_error(result, f"Store {str(store)!r} holds no weights of the teacher's sections")
    [ok] = train_blocks(vit_recipe, store, ["vit2"], tmp_path / "scratch",
                        BlockTrainOptions(epochs=1, batch_size=8, device="cpu", evaluate=False, student_init="scratch"),
                        log=quiet)
    assert ok["history"]


def test_vit_lit_step_from_a_float32_store_equals_the_online_step(vit_recipe, vit_store):
    """The cache changes nothing but the cost, for residual streams too."""
    store_path, teacher = vit_store
    store = open_store(store_path)
    rows = list(range(0, 16))
    fields = [*store.boundary_names, "logits", "labels"]
    cached = StoreDataset(store, fields).__getitems__(rows)
    online = OnlineTeacherDataset(vit_recipe, store, teacher, fields, "cpu", precision="fp32").__getitems__(rows)
    assert_same_lit_step(vit_recipe, "vit2", store, cached, online,
                         {"alpha": 0.95, "tau": 6.0, "beta": 0.75, "loss_scale": 1.0, "ir_loss": "mse"})


def assert_same_lit_step(recipe, student: str, store, cached: dict, online: dict, config: dict) -> None:
    """One float32 LIT step of the same fresh student on both batches: equal losses and gradients."""
    results = []
    for batch in (cached, online):
        torch.manual_seed(0)
        _, sectioned = build_student(recipe, student, store.module_state("stem"), store.module_state("head"))
        sectioned.train()
        loss, parts = step_losses(sectioned, batch, Phase("lit"), LossWeights.from_record(config))
        loss.backward()
        results.append((parts, {n: p.grad.clone() for n, p in sectioned.sections.named_parameters()}))
    (parts_a, grads_a), (parts_b, grads_b) = results
    for key in parts_a:
        assert float(parts_a[key]) == pytest.approx(float(parts_b[key]), rel=1e-4, abs=1e-6), key
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-3, atol=1e-5)
