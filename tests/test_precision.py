"""--precision: what auto picks, what each command records, and that reduced precision stays faithful."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
from conftest import TINY, assert_clean_error, quiet, run_cli

from litcache import ExtractOptions, StoreDataset, extract, open_store
from litcache.errors import CheckpointError, OptionError
from litcache.extraction.replay import verify_store
from litcache.runtime.precision import resolve_compute
from litcache.training.blocks import BlockTrainOptions, train_blocks
from litcache.training.config import LossWeights, Phase
from litcache.training.online import OnlineTeacherDataset
from litcache.training.step import step_losses
from litcache.training.student import build_student

OPTIONS = ExtractOptions(views=2, dtype="float32", chunk_rows=8, shard_rows=16, batch_size=8)


def test_auto_follows_the_cpus_bf16_instructions(monkeypatch):
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    monkeypatch.setenv("LITCACHE_CPU_BF16", "1")
    assert resolve_compute("auto", "cpu", conv).precision == "bf16"
    monkeypatch.setenv("LITCACHE_CPU_BF16", "0")
    compute = resolve_compute("auto", "cpu", conv)
    assert compute.precision == "fp32" and compute.channels_last
    assert compute.describe() == "compute fp32, channels_last"
    # Only convolutional models change memory format.
    assert not resolve_compute("fp32", "cpu", nn.Linear(3, 4)).channels_last
    assert "emulated" in resolve_compute("bf16", "cpu", conv).describe()
    assert resolve_compute("bf16", "cpu", conv).describe().startswith("compute bf16 autocast, ")


def test_fp16_is_cuda_only(teacher_ckpt, tmp_path):
    with pytest.raises(OptionError, match="CUDA devices only"):
        resolve_compute("fp16", "cpu")
    out = tmp_path / "never.zarr"
    result = run_cli("extract", TINY, "--teacher", teacher_ckpt, "--out", out, "--precision", "fp16", "--device", "cpu")
    assert_clean_error(result, "--precision fp16 runs on CUDA devices only")
    assert not out.exists()


def test_input_is_float32_in_the_models_layout():
    compute = resolve_compute("bf16", "cpu", nn.Conv2d(3, 4, 3))
    x = compute.input(torch.zeros(2, 3, 8, 8, dtype=torch.float16))
    assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
    assert compute.input(torch.tensor([1, 2])).dtype == torch.int64


def test_a_bf16_store_records_its_precision_and_replays(tiny_recipe, teacher_ckpt, tmp_path):
    fp32, bf16 = tmp_path / "fp32.zarr", tmp_path / "bf16.zarr"
    extract(tiny_recipe, fp32, OPTIONS, teacher_checkpoint=teacher_ckpt, progress=False, log=quiet)
    extract(tiny_recipe, bf16, ExtractOptions(**{**OPTIONS.__dict__, "precision": "bf16"}),
            teacher_checkpoint=teacher_ckpt, progress=False, log=quiet)
    # A store without the key was computed in fp32 (as every store made before the option existed).
    assert "precision" not in open_store(fp32).manifest.identity and open_store(fp32).manifest.precision == "fp32"
    manifest = open_store(bf16).manifest
    assert manifest.identity.precision == "bf16" and manifest.compute.precision == "bf16"
    a = StoreDataset(open_store(fp32), ["boundaries/3"]).__getitems__(range(16))["boundaries/3"]
    b = StoreDataset(open_store(bf16), ["boundaries/3"]).__getitems__(range(16))["boundaries/3"]
    assert not torch.equal(a, b)  # a bf16 forward gives other activations...
    torch.testing.assert_close(b, a, rtol=0.05, atol=0.05 * float(a.abs().max()))  # ...close to the fp32 ones
    report = verify_store(bf16, replay=8, recipe=tiny_recipe, teacher_checkpoint=teacher_ckpt)
    assert report.ok and report.replayed_rows == 8, report
    # The precision is part of the identity: extracting the other way into the same store is refused.
    result = run_cli("extract", TINY, "--teacher", teacher_ckpt, "--out", fp32, "--views", "2", "--dtype", "float32",
                     "--chunk-rows", "8", "--shard-rows", "16", "--batch-size", "8", "--precision", "bf16", "-q")
    assert_clean_error(result, f"Store {str(fp32)!r} was extracted from something else "
                               "(precision: store has None, now 'bf16')")


def test_a_bf16_lit_step_from_a_float32_store_equals_the_online_step(tiny_recipe, teacher_ckpt, tiny_store):
    """The fidelity guard: at bf16, the cache still changes nothing but the cost."""
    store = open_store(tiny_store)
    rows = list(range(40, 56))
    fields = [*store.boundary_names, "logits", "labels"]
    cached = StoreDataset(store, fields).__getitems__(rows)
    online = OnlineTeacherDataset(tiny_recipe, store, teacher_ckpt, fields, "cpu", precision="fp32").__getitems__(rows)
    config = {"alpha": 0.95, "tau": 6.0, "beta": 0.75, "loss_scale": 0.5}
    results = []
    for batch in (cached, online):
        torch.manual_seed(0)
        model, split = build_student(tiny_recipe, "resnet8", store.module_state("stem"), store.module_state("head"))
        compute = resolve_compute("bf16", "cpu", model)
        compute.model(model).train()
        with compute.autocast():
            loss, parts = step_losses(split, {k: compute.input(v) for k, v in batch.items()}, Phase("lit"),
                                      LossWeights.from_record(config))
        assert loss.dtype == torch.float32  # losses stay float32 under autocast
        loss.backward()
        results.append((parts, {n: p.grad.clone() for n, p in split.sections.named_parameters()}))
        assert all(p.dtype == torch.float32 for p in model.parameters())
    (parts_a, grads_a), (parts_b, grads_b) = results
    for key in parts_a:
        assert float(parts_a[key]) == pytest.approx(float(parts_b[key]), rel=2e-2, abs=1e-4), key
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=5e-2,
                                   atol=5e-2 * float(grads_a[name].abs().max()) + 1e-6)


def test_training_records_precision_and_resume_refuses_a_change(tiny_recipe, tiny_store, tmp_path):
    options = BlockTrainOptions(epochs=1, batch_size=16, lr=0.02, evaluate=False, precision="bf16")
    [result] = train_blocks(tiny_recipe, tiny_store, ["resnet8"], tmp_path, options, log=quiet)
    assert result["config"]["precision"] == "bf16" and result["config"]["channels_last"]
    assert all(v.dtype == torch.float32 for v in torch.load(result["checkpoint"])["state_dict"].values()
               if v.is_floating_point())
    with pytest.raises(CheckpointError, match=r"precision 'bf16' -> 'fp32'"):
        train_blocks(tiny_recipe, tiny_store, ["resnet8"], tmp_path, BlockTrainOptions(epochs=2, batch_size=16, lr=0.02,
                     evaluate=False, precision="fp32"), resume=True, log=quiet)
    # --amp is the old spelling of bf16: the same run resumes.
    [again] = train_blocks(tiny_recipe, tiny_store, ["resnet8"], tmp_path,
                           BlockTrainOptions(epochs=2, batch_size=16, lr=0.02, evaluate=False, amp=True),
                           resume=True, log=quiet)
    assert len(again["history"]) == 2


def test_amp_contradicting_precision_is_refused(tiny_store, tmp_path):
    result = run_cli("train-blocks", TINY, "--store", tiny_store, "--student", "resnet8", "--out", tmp_path,
                     "--amp", "--precision", "fp32")
    assert_clean_error(result, "--amp is the old spelling of --precision bf16")


def test_train_teacher_and_evaluate_say_what_they_computed_in(tmp_path):
    out = tmp_path / "teacher.pt"
    result = run_cli("train-teacher", TINY, "--out", out, "--epochs", "1", "--precision", "bf16",
                     "--schedule", "onecycle", "--warmup", "0.3", "--nesterov")
    assert result.exit_code == 0, result.output
    assert "compute bf16 autocast, channels_last" in result.output
    config = torch.load(out, weights_only=True)["config"]
    assert (config["precision"], config["schedule"], config["nesterov"]) == ("bf16", "onecycle", True)
    result = run_cli("train-teacher", TINY, "--out", out, "--epochs", "2", "--precision", "fp32",
                     "--schedule", "onecycle", "--warmup", "0.3", "--nesterov", "--resume")
    assert_clean_error(result, f"Cannot resume {str(out)!r} with other settings (precision 'bf16' -> 'fp32')")
    result = run_cli("evaluate", TINY, "--teacher", out, "--precision", "bf16", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["teacher"]["compute"].startswith("compute bf16 autocast, channels_last")


def test_a_diverging_run_stops_with_one_error_line(tiny_store, tmp_path):
    result = run_cli("train-blocks", TINY, "--store", tiny_store, "--student", "resnet8", "--out", tmp_path / "blocks",
                     "--lr", "1e12", "--epochs", "3", "--batch-size", "16", "--no-eval")
    line = assert_clean_error(result, "resnet8: the loss became ")
    assert "in epoch 1; lower --lr" in line
    result = run_cli("train-teacher", TINY, "--out", tmp_path / "teacher.pt", "--lr", "1e12", "--epochs", "2")
    assert_clean_error(result, "teacher: the loss became ")
