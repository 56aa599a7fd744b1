"""Golden fixtures made by litcache 0.1 (af0f002, tests/golden/make_golden.py): the store formats 1 and 2
and the checkpoints of that release must still open, verify, train, resume and load.

It uses only the public API (litcache.*) and the CLI
(litcache.cli.main), and works on a copy of the fixtures in tmp_path (never writes into tests/golden);
the working directory is that copy, since the fixtures record paths relative to tests/golden
(format1/tiny.py, format1/store.zarr, ...). The frozen recipes (format1/tiny.py, format2/text_gpt.py
with _text.py and _data.py beside it) import litcache.zoo, litcache.gpt and litcache.recipe.import_beside:
those names must keep working, or the recipes must be refrozen (which changes each store's recipe_hash).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from litcache import (
    BlockTrainOptions,
    TrainConfig,
    load_recipe,
    load_student,
    open_store,
    store_info,
    sweep,
    train_blocks,
    train_teacher,
    verify_store,
)
from litcache.cli import main

GOLDEN = Path(os.environ.get("LITCACHE_GOLDEN_DIR", Path(__file__).parent / "golden"))
MANIFEST = json.loads((GOLDEN / "MANIFEST.json").read_text())
EXPECTED = json.loads((GOLDEN / "expected.json").read_text())
DATA = ("format1", "format2", "checkpoints")
F1, F1_STORE, F1_TEACHER = "format1/tiny.py", "format1/store.zarr", "format1/teacher.pt"
F2, F2_STORE, F2_TEACHER = "format2/text_gpt.py", "format2/store.zarr", "format2/teacher.pt"
LIT, FT = "checkpoints/lit/resnet8", "checkpoints/ft/resnet8"
OLD_TEACHER = "checkpoints/teacher/teacher.pt"
SWEEP_VARIANT = "resnet8_seed0_epochs1_batch-size8"

torch.set_num_threads(1)  # the fixtures were made on one thread; training compares numbers with them


def quiet(_msg: str) -> None:
    pass


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def command(prefix: str) -> list[str]:
    """The arguments of the one MANIFEST command that starts with ``prefix`` (after ``litcache ``)."""
    found = [c.split()[1:] for c in MANIFEST["commands"] if c.startswith("litcache " + prefix)]
    assert len(found) == 1, (prefix, found)
    return found[0]


def probe() -> torch.Tensor:
    p = EXPECTED["probe"]
    return torch.randn(*p["shape"], generator=torch.Generator().manual_seed(p["seed"]))


def history_losses(history: list[dict]) -> list[dict]:
    """The deterministic entries of a training history (not its seconds or rates)."""
    return [{k: v for k, v in h.items() if k not in ("seconds", "rows_per_s", "img_per_s")} for h in history]


def assert_same_losses(got: list[dict], want: list[dict], rel: float = 1e-5) -> None:
    got, want = history_losses(got), history_losses(want)
    assert len(got) == len(want) and all(g == pytest.approx(w, rel=rel) for g, w in zip(got, want)), (got, want)


def saved(path) -> dict:
    return torch.load(path, weights_only=True)


@pytest.fixture
def golden(tmp_path, monkeypatch) -> Path:
    """A copy of the fixtures, as the working directory, with the environment the recipes read."""
    work = tmp_path / "golden"
    for sub in DATA:
        shutil.copytree(GOLDEN / sub, work / sub)
    monkeypatch.chdir(work)
    monkeypatch.setenv("LITCACHE_CPU_BF16", "0")  # --precision auto = fp32, as when they were made
    for key, value in MANIFEST["env"].items():
        if key.startswith("LITCACHE_"):
            monkeypatch.setenv(key, value)  # the tiny GPT's size and its corpus (format2/corpus)
    monkeypatch.setenv("LITCACHE_CACHE_DIR", str(tmp_path / "text-cache"))  # not beside the corpus
    return work


def test_fixture_checksums():
    files = MANIFEST["files"]
    for rel, want in files.items():
        data = (GOLDEN / rel).read_bytes()
        assert len(data) == want["size"] and hashlib.sha256(data).hexdigest() == want["sha256"], rel
    on_disk = {p.relative_to(GOLDEN).as_posix() for sub in DATA for p in (GOLDEN / sub).rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert on_disk <= set(files), sorted(on_disk - set(files))
    assert MANIFEST["litcache_commit"].startswith("af0f002")


def test_format1_store_opens_verifies_and_replays(golden):
    want = EXPECTED["stores"][F1_STORE]
    store = open_store(F1_STORE)
    manifest = store.manifest
    assert manifest.format_version == 1 == want["format_version"]
    assert store.rows == want["rows"] == 40 and len(store.shards) == want["shards"] == 3
    assert manifest.identity.to_dict() == want["identity"]
    # the frozen copy is the recipe it was made from (0.1 hashed the file's bytes; later releases its code)
    assert load_recipe(F1).source_bytes_hash == manifest.identity.recipe_hash
    assert ({k: list(a.row_shape) for k, a in manifest.arrays.items()}
            == {k: a["row_shape"] for k, a in want["arrays"].items()})
    for name, total in want["first_rows_sums"].items():
        assert float(store.read(name, 0, 4).double().sum()) == pytest.approx(total, rel=1e-6, abs=1e-6), name
    assert store_info(F1_STORE)
    assert verify_store(F1_STORE).ok
    report = verify_store(F1_STORE, replay=8, recipe=load_recipe(F1), teacher_checkpoint=F1_TEACHER)
    assert report.ok and report.replayed_rows == 8, report
    result = cli("verify", F1_STORE, F1, "--replay", "8", "--teacher", F1_TEACHER)
    assert (result.exit_code == 0
            and "3 shards checked, 0 checksum failures; 8 rows replayed, 0 differ" in result.output), result.output
    result = cli("info", F1_STORE, "--json")
    assert result.exit_code == 0, result.output
    # Its recipe_hash is of the recipe file's bytes: with the file unchanged it is still the same store.
    before = (Path(F1_STORE) / "zarr.json").read_bytes()
    result = cli("extract", F1, "--out", F1_STORE, "--teacher", F1_TEACHER, "--views", 2, "--limit", 20,
                 "--precision", "fp32", "--dtype", "float16", "--codec", "zstd", "--chunk-rows", 8, "--shard-rows", 16,
                 "--resume")
    assert result.exit_code == 0 and "already complete" in result.output, result.output
    assert (Path(F1_STORE) / "zarr.json").read_bytes() == before


def test_format2_store_opens_verifies_and_replays(golden):
    want = EXPECTED["stores"][F2_STORE]
    store = open_store(F2_STORE)
    manifest = store.manifest
    assert manifest.format_version == 2 == want["format_version"]
    assert manifest.identity.to_dict() == want["identity"] and manifest.identity.logit_topk == 5
    assert "logits" not in manifest.arrays and {"topk_values", "topk_indices", "lengths"} <= set(manifest.arrays)
    assert ({k: list(a.row_shape) for k, a in manifest.arrays.items()}
            == {k: a["row_shape"] for k, a in want["arrays"].items()})
    assert store.rows == want["rows"] and len(store.shards) == want["shards"]
    for name, total in want["first_rows_sums"].items():
        assert float(store.read(name, 0, 4).double().sum()) == pytest.approx(total, rel=1e-6, abs=1e-6), name
    assert load_recipe(F2).source_bytes_hash == manifest.identity.recipe_hash
    assert store_info(F2_STORE)
    result = cli("verify", F2_STORE, F2, "--replay", "4", "--teacher", F2_TEACHER)
    assert result.exit_code == 0 and "4 rows replayed, 0 differ" in result.output, result.output


def test_train_one_epoch_from_each_store(golden):
    # format1 with the options of checkpoints/lit: the same losses and weights as the old run
    recipe = load_recipe(F1)
    [result] = train_blocks(recipe, F1_STORE, ["resnet8"], "new-lit",
                            BlockTrainOptions(epochs=1, batch_size=8, device="cpu"), log=quiet)
    assert_same_losses(result["history"], saved(f"{LIT}/last.pt")["history"])
    with torch.no_grad():
        logits = load_student("new-lit/resnet8/student.pt", recipe)(probe())
    torch.testing.assert_close(logits, torch.tensor(EXPECTED["students"][f"{LIT}/student.pt"]["logits"]),
                               rtol=1e-5, atol=1e-5)
    # format2 (tokens, top-k logits), through the CLI
    result = cli("train-blocks", F2, "--store", F2_STORE, "--student", "gpt2", "--out", "new-gpt", "--epochs", "1",
                 "--batch-size", "16", "--device", "cpu", "-q")
    assert result.exit_code == 0, result.output
    history = saved("new-gpt/gpt2/last.pt")["history"]
    assert len(history) == 1 and torch.isfinite(torch.tensor(history[0]["kd"])) and "test_perplexity" in history[0]


@pytest.mark.parametrize("name, relative", [(f"{LIT}/student.pt", True), (f"{FT}/student.pt", True),
                                            (f"checkpoints/sweep/{SWEEP_VARIANT}/resnet8/student.pt", False)])
def test_old_students_load_and_give_the_old_logits(golden, name, relative):
    want = torch.tensor(EXPECTED["students"][name]["logits"])
    models = [load_student(name, load_recipe(F1))]
    if relative:  # train-blocks recorded recipe_source "format1/tiny.py"; the sweep an absolute path that is gone
        models.append(load_student(name))
    for model in models:
        with torch.no_grad():
            torch.testing.assert_close(model(probe()), want, rtol=1e-5, atol=1e-6)


def test_evaluate_old_student_and_teacher(golden):
    result = cli("evaluate", F1, "--student-checkpoint", f"{LIT}/student.pt", "--teacher", F1_TEACHER,
                 "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    for role, want in EXPECTED["evaluate_lit"].items():
        assert report[role]["accuracy"] == pytest.approx(want["accuracy"]) and report[role]["params"] == want["params"]


def test_resume_old_lit_and_finetune_runs(golden):
    old_lit, old_ft = saved(f"{LIT}/last.pt"), saved(f"{FT}/last.pt")
    # finetune first: its --init is the old LIT student.pt, which the LIT resume below rewrites
    result = cli(*command("train-blocks format1/tiny.py --store format1/store.zarr --student resnet8 "
                          "--out checkpoints/ft"),
                 "--epochs", "2", "--resume")  # the later --epochs wins over the recorded --epochs 1
    assert result.exit_code == 0, result.output
    ft = saved(f"{FT}/last.pt")
    assert ft["epoch"] == 2 and ft["config"]["data_epoch_offset"] == old_ft["config"]["data_epoch_offset"] == 1
    assert history_losses(ft["history"][:1]) == history_losses(old_ft["history"])
    # LIT, through the API
    [result] = train_blocks(load_recipe(F1), F1_STORE, ["resnet8"], "checkpoints/lit",
                            BlockTrainOptions(epochs=2, batch_size=8, device="cpu"), resume=True, log=quiet)
    lit = saved(f"{LIT}/last.pt")
    assert lit["epoch"] == 2 and len(result["history"]) == 2
    assert history_losses(lit["history"][:1]) == history_losses(old_lit["history"])
    assert lit["store"]["identity"] == old_lit["store"]["identity"] == open_store(F1_STORE).manifest.identity.to_dict()
    # all epochs done: nothing to train, still fine
    [again] = train_blocks(load_recipe(F1), F1_STORE, ["resnet8"], "checkpoints/lit",
                           BlockTrainOptions(epochs=2, batch_size=8, device="cpu"), resume=True, log=quiet)
    assert len(again["history"]) == 2


def test_rerun_sweep_skips_the_old_variant(golden):
    before = {p: p.read_bytes() for p in Path(f"checkpoints/sweep/{SWEEP_VARIANT}").rglob("*.pt")}
    result = cli(*command("sweep"), "--json")
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)["variants"]
    assert row["variant"] == SWEEP_VARIANT and row["status"] == "skipped", row
    result = sweep(load_recipe(F1), F1_STORE, ["resnet8"], "checkpoints/sweep", grid={"epochs": [1], "batch_size": [8]},
                   workers=1, device="cpu", log=quiet)
    assert [r["status"] for r in result.rows] == ["skipped"] and not result.failed
    assert {p: p.read_bytes() for p in before} == before  # nothing retrained
    # The old sweep recorded absolute paths under /tmp/litcache-golden-af0f002 (result.json's checkpoint,
    # the checkpoints' store path and recipe_source), which do not exist here: only the store identity
    # and the training settings decide, so the copy is still skipped.


def test_resume_old_train_teacher_checkpoint(golden):
    old = saved(OLD_TEACHER)
    assert old["epoch"] == 1
    history = train_teacher(load_recipe(F1), OLD_TEACHER, config=TrainConfig(epochs=2, batch_size=16, lr=0.05),
                            resume=True, device="cpu", log=quiet)["history"]
    assert len(history) == 2 and history_losses(history[:1]) == history_losses(old["history"])
    assert saved(OLD_TEACHER)["epoch"] == 2
    result = cli(*command("train-teacher"), "--epochs", "3", "--resume")
    assert result.exit_code == 0, result.output
    assert saved(OLD_TEACHER)["epoch"] == 3
