"""Block libraries (``litcache library``, ``litcache search``): each section's candidates made once from one
store, scored on held-out stored rows and costed; mixes chosen under a budget by an exact dynamic
program, assembled into students that load, fine-tune and evaluate like any other."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import (
    TINY,
    TINY_STORE_OPTIONS,
    assert_clean_error,
    make_teacher_checkpoint,
    quiet,
    run_cli,
    subprocess_env,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import litcache.library.build as build
from litcache import extract, load_recipe, load_student, open_store
from litcache.errors import OptionError
from litcache.library import LibraryOptions, best_mixes, build_library, parse_budget, search
from litcache.library.candidates import fit_pointwise_map
from litcache.library.search import spearman
from litcache.recipe import mix_depths, mix_name
from litcache.sections import cut_sections
from litcache.training.metrics import model_stats
from litcache.training.student import read_student

OPTIONS = LibraryOptions(training={"epochs": 1, "batch_size": 16}, workers=1, score_rows=0, fit_rows=0, latency_rows=8)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """The tiny recipe's teacher (ResNet-14: 2 blocks per section), a training store (48 samples x 2 views) and
    a held-out store of the test split (16 rows)."""
    root = tmp_path_factory.mktemp("library")
    recipe = load_recipe(TINY)
    teacher = make_teacher_checkpoint(recipe, root / "teacher.pt")
    train, heldout = root / "train.zarr", root / "heldout.zarr"
    extract(recipe, train, TINY_STORE_OPTIONS, teacher_checkpoint=teacher, progress=False, log=quiet)
    extract(recipe, heldout, replace(TINY_STORE_OPTIONS, split="test", views=1), teacher_checkpoint=teacher,
            progress=False, log=quiet)
    return recipe, train, heldout


@pytest.fixture(scope="module")
def library(stores, tmp_path_factory):
    recipe, train, heldout = stores
    out = tmp_path_factory.mktemp("lib") / "lib"
    return out, build_library(recipe, train, heldout, out, OPTIONS, log=quiet)


# ---------------------------------------------------------------------------------------------
# The search's pieces.


def _brute_force(costs, losses, limit, top, base):
    mixes = []
    for picks in itertools.product(*(range(len(c)) for c in costs)):
        cost, loss = base, 0.0
        for i, j in enumerate(picks):  # summed in section order, as the dynamic program sums
            cost, loss = cost + costs[i][j], loss + losses[i][j]
        if cost <= limit:
            mixes.append((loss, cost, picks))
    return sorted(mixes)[:top]


@st.composite
def _instances(draw):
    sections = draw(st.integers(1, 4))
    sizes = [draw(st.integers(1, 4)) for _ in range(sections)]
    # Small integers make ties in cost and loss common, the cases a pruning rule gets wrong.
    value = st.one_of(st.integers(0, 6).map(float), st.floats(0, 10, allow_nan=False))
    costs = [[draw(value) for _ in range(n)] for n in sizes]
    losses = [[draw(value) for _ in range(n)] for n in sizes]
    return costs, losses, draw(st.floats(0, 30)), draw(st.integers(1, 5)), draw(st.integers(0, 3).map(float))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(_instances())
def test_the_dynamic_program_finds_the_brute_force_optimum(instance):
    costs, losses, limit, top, base = instance
    found = [(m.loss, m.cost, m.picks) for m in best_mixes(costs, losses, limit, top, base)]
    assert found == _brute_force(costs, losses, limit, top, base)


def test_budgets_parse_with_their_units():
    assert parse_budget("macs=41M").limit == 41e6 and parse_budget("macs=41M").key == "macs"
    assert parse_budget("params=0.27m").limit == 270000.0
    assert parse_budget("params=1200").limit == 1200.0
    assert parse_budget("latency=3.5ms").limit == 3.5
    for bad in ("flops=3M", "macs=3Q", "latency=3", "macs", "macs=-1", "latency=2s"):
        with pytest.raises(OptionError, match="Expected --budget as macs=X"):
            parse_budget(bad)


def test_spearman_takes_mean_ranks_of_ties():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833)  # scipy.stats.spearmanr
    assert spearman([1, 2], [2, 1]) != spearman([1, 2], [2, 1])  # NaN: too few pairs


def test_mixes_are_students_of_the_recipe(stores):
    recipe = stores[0]
    assert mix_name([3, 0, 5]) == "mix-3-0-5" and mix_depths("mix-3-0-5") == (3, 0, 5)
    assert mix_depths("resnet8") is None and mix_depths("mix-a-1") is None
    model = recipe.student_builder("mix-2-0-1")()
    assert [len(s) for s in cut_sections(model, recipe).sections] == [2, 1, 1]  # 0 blocks: one PointwiseMap
    with pytest.raises(Exception, match="give blocks for each of the 3 sections"):
        recipe.student_builder("mix-1-1")


# ---------------------------------------------------------------------------------------------
# The library.


def test_the_library_makes_scores_and_costs_each_candidate(stores, library):
    recipe, train, _ = stores
    out, lib = library
    table = {c["candidate"]: c for c in lib["candidates"]}
    # Per section: the training-free map (0), the student's depth (1) and the teacher's own section (2).
    assert sorted(table) == [f"s{i}-d{d}" for i in (1, 2, 3) for d in (0, 1, 2)]
    assert {table[f"s1-d{d}"]["kind"] for d in (0, 1, 2)} == {"linear-map", "trained", "teacher"}
    for i in (1, 2, 3):
        teacher = table[f"s{i}-d2"]  # the teacher's own section: exact on its stored boundaries
        assert teacher["boundary_mse"] == pytest.approx(0.0, abs=1e-10)
        assert teacher["swap_kl_delta"] == pytest.approx(0.0, abs=1e-6) and teacher["swap_accuracy_delta"] == 0
        assert table[f"s{i}-d1"]["train_seconds"] > 0 and table[f"s{i}-d0"]["train_seconds"] == 0
        assert table[f"s{i}-d0"]["params"] < table[f"s{i}-d1"]["params"] < teacher["params"]
        assert 0 < table[f"s{i}-d1"]["boundary_normalised"]
    # The whole teacher's cost, which every mix's predicted cost starts from, is the teacher's own.
    t = lib["teacher"]
    sample = recipe.load_split("test")[0][0][None]
    assert t["whole"]["macs"] == model_stats(recipe.build_teacher(), sample)["macs_per_sample"] > t["shared"]["macs"]
    assert all(c["latency_ms"] > 0 for c in lib["candidates"] if c["params"])
    assert (out / "library.csv").read_text().splitlines()[0].startswith("candidate,section,depth,kind,params,macs")
    assert json.loads((out / "library.json").read_text())["candidates"] == lib["candidates"]
    # A trained candidate is section I of its carrier, trained alone from the store (IR only).
    saved = read_student(out / table["s2-d1"]["checkpoint"])  # checkpoints are relative to the library
    assert saved["student"] == "mix-1-1-1" and saved["sections_trained"] == [2] and saved["config"]["mode"] == "ir"


def test_a_strided_linear_map_trains_on_one_thread_in_channels_last():
    """A strided 1x1 convolution's backward (channels_last, one thread, 4 -> 8 channels) crashes torch 2.14
    with a double free; the map subsamples first instead, the same function. Run apart: a crash is a failure."""
    code = """
import torch
from litcache.models.resnet import PointwiseMap
torch.set_num_threads(1)
torch.manual_seed(0)
layer = PointwiseMap(4, 8, 2).to(memory_format=torch.channels_last)
strided = torch.nn.Conv2d(4, 8, 1, 2)
strided.load_state_dict(layer.conv.state_dict())
for _ in range(5):
    x = torch.randn(16, 4, 32, 32).to(memory_format=torch.channels_last).requires_grad_(True)
    layer(x).sum().backward()
assert torch.allclose(layer(x), strided(x), atol=1e-6)
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=subprocess_env())
    assert done.returncode == 0 and done.stdout.strip() == "ok", (done.returncode, done.stderr[-2000:])


def test_the_linear_map_is_the_least_squares_fit(stores, tmp_path):
    recipe, train, _ = stores
    store = open_store(train)
    model = recipe.student_builder("mix-1-0-1")()
    section = cut_sections(model, recipe).sections[1]
    fit_pointwise_map(section, store, 2, rows=0, batch_size=7)  # batches that do not divide the rows
    names = store.boundary_names
    x = torch.from_numpy(store.group[names[1]][...]).double()[:, :, ::2, ::2]
    y = torch.from_numpy(store.group[names[2]][...]).double()
    a = torch.cat([x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]), torch.ones(x.numel() // x.shape[1], 1,
                                                                              dtype=torch.float64)], 1)
    expected = torch.linalg.lstsq(a, y.permute(0, 2, 3, 1).reshape(-1, y.shape[1])).solution
    conv = section[0].conv
    torch.testing.assert_close(conv.weight.flatten(1).double(), expected[:-1].T, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(conv.bias.double(), expected[-1], rtol=1e-4, atol=1e-5)


def _mtimes(out: Path) -> dict[str, float]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in (out / "candidates").rglob("student.pt")}


def test_a_rerun_keeps_what_is_made_and_a_changed_config_trains_anew(stores, tmp_path):
    recipe, train, heldout = stores
    out = tmp_path / "lib"
    build_library(recipe, train, heldout, out, replace(OPTIONS, depths=("1",)), log=quiet)
    before = _mtimes(out)
    lines = []
    build_library(recipe, train, heldout, out, replace(OPTIONS, depths=("1",)), log=lines.append)
    assert _mtimes(out) == before and sum("kept" in line for line in lines) == 3
    changed = build_library(recipe, train, heldout, out,
                            replace(OPTIONS, depths=("1",), training={**OPTIONS.training, "lr": 0.01}), log=quiet)
    after = _mtimes(out)
    assert set(before) < set(after) and len(after) == 6  # three new candidates beside the three old ones
    assert all(after[k] == v for k, v in before.items())
    assert all(c["checkpoint"] not in before for c in changed["candidates"])


def test_a_killed_library_resumes(stores, tmp_path, monkeypatch):
    recipe, train, heldout = stores
    out = tmp_path / "lib"
    real, calls = build.candidate_task, []

    def dies_on_the_third(*args):
        calls.append(args[3].name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(build, "candidate_task", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        build_library(recipe, train, heldout, out, replace(OPTIONS, depths=("0,1",)), log=quiet)
    assert not (out / "library.json").exists()
    monkeypatch.setattr(build, "candidate_task", real)
    made = _mtimes(out)
    lines = []
    lib = build_library(recipe, train, heldout, out, replace(OPTIONS, depths=("0,1",)), log=lines.append)
    assert sum("kept" in line for line in lines) == 2 and len(lib["candidates"]) == 6
    assert all(_mtimes(out)[k] == v for k, v in made.items())


def test_candidates_train_as_dask_tasks_with_the_weights_of_one_process(stores, tmp_path):
    """On a local cluster of 2 workers, each candidate is the one this process makes: one torch thread in every
    task, whichever runs it."""
    from litcache.extraction.distributed import dask_client

    recipe, train, heldout = stores
    options = replace(OPTIONS, depths=("0,1",))
    alone = build_library(recipe, train, heldout, tmp_path / "alone", options, log=quiet)
    with dask_client(2, None) as client:
        spread = build_library(recipe, train, heldout, tmp_path / "spread",
                               replace(options, workers=None, scheduler=client.scheduler.address), log=quiet)
    for a, b in zip(alone["candidates"], spread["candidates"]):
        assert a["candidate"] == b["candidate"] and a["swap_kl"] == pytest.approx(b["swap_kl"], rel=1e-6)
        wa = read_student(tmp_path / "alone" / a["checkpoint"])["state_dict"]
        wb = read_student(tmp_path / "spread" / b["checkpoint"])["state_dict"]
        for key in wa:
            torch.testing.assert_close(wa[key], wb[key], rtol=1e-6, atol=1e-7, msg=key)


def test_a_candidate_killed_mid_training_resumes_from_its_last_epoch(stores, tmp_path, monkeypatch):
    import litcache.training.blocks as blocks

    recipe, train, heldout = stores
    out = tmp_path / "lib"
    options = replace(OPTIONS, depths=("0", "2:1"), training={**OPTIONS.training, "epochs": 2})  # one trained
    real = blocks.save_student

    def dies_after_the_first_epoch(path, *args, **kwargs):
        real(path, *args, **kwargs)
        if Path(path).name == "last.pt":
            raise KeyboardInterrupt

    monkeypatch.setattr(blocks, "save_student", dies_after_the_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        build_library(recipe, train, heldout, out, options, log=quiet)
    [last] = (out / "candidates").glob("s2-d1-*/mix-1-1-1/last.pt")
    first_epoch = read_student(last)["history"]
    assert [h["epoch"] for h in first_epoch] == [1]
    monkeypatch.setattr(blocks, "save_student", real)
    lib = build_library(recipe, train, heldout, out, options, log=quiet)
    [candidate] = [c for c in lib["candidates"] if c["candidate"] == "s2-d1"]
    history = read_student(out / candidate["checkpoint"])["history"]
    assert [h["epoch"] for h in history] == [1, 2] and history[0] == first_epoch[0]  # epoch 1 was not trained again


def test_other_scoring_settings_score_again_without_training_again(stores, tmp_path):
    recipe, train, heldout = stores
    out = tmp_path / "lib"
    first = build_library(recipe, train, heldout, out, replace(OPTIONS, depths=("1",)), log=quiet)
    made = _mtimes(out)
    again = build_library(recipe, train, heldout, out, replace(OPTIONS, depths=("1",), score_rows=8), log=quiet)
    assert _mtimes(out) == made  # nothing trained again
    assert again["heldout"]["rows"] == 8 and first["heldout"]["rows"] == 16
    assert [c["swap_kl"] for c in again["candidates"]] != [c["swap_kl"] for c in first["candidates"]]
    assert all(json.loads((out / Path(c["checkpoint"]).parents[1] / "record.json").read_text())["scored_on"]
               ["score_rows"] == 8 for c in again["candidates"])


# ---------------------------------------------------------------------------------------------
# The search.


def test_search_picks_under_the_budget_and_measures_what_it_predicts(stores, library, tmp_path):
    recipe, train, _ = stores
    out, lib = library
    whole = lib["teacher"]["whole"]["macs"]
    result = search(out, f"macs={int(whole * 0.8)}", top=3, out=tmp_path / "search", log=quiet)
    rows = {r["student"]: r for r in result["students"]}
    searched = [r for r in result["students"] if r["kind"] == "searched"]
    assert [r["rank"] for r in searched] == [1, 2, 3]
    assert [r["predicted_loss"] for r in searched] == sorted(r["predicted_loss"] for r in searched)
    for r in result["students"]:
        assert r["macs"] == r["predicted_macs"] and r["params"] == r["predicted_params"]  # costs add up exactly
    assert all(r["macs"] <= whole * 0.8 for r in searched)
    assert {"mix-0-0-0", "mix-1-1-1", "mix-2-2-2"} <= set(rows)  # the uniform mixes compared with
    teacher_mix = rows["mix-2-2-2"]  # every section the teacher's: the teacher's own accuracy
    assert teacher_mix["predicted_loss"] == pytest.approx(0.0, abs=1e-6)
    # An assembled student is a plain student checkpoint: each section is its candidate's.
    best = searched[0]
    model = load_student(best["checkpoint"], recipe)
    picks = read_student(best["checkpoint"])["config"]["library_picks"]
    table = {c["candidate"]: c for c in lib["candidates"]}
    for i, (section, pick) in enumerate(zip(cut_sections(model, recipe).sections, picks), start=1):
        donor = load_student(out / table[pick]["checkpoint"], recipe)
        expected = cut_sections(donor, recipe).sections[i - 1].state_dict()
        for key, value in section.state_dict().items():
            torch.testing.assert_close(value, expected[key])
    saved = json.loads((tmp_path / "search" / "search.json").read_text())
    assert saved["students"] == result["students"] and (tmp_path / "search" / "pareto.png").read_bytes()[:4] == \
        b"\x89PNG"
    assert (tmp_path / "search" / "search.csv").read_text().startswith("student,kind,rank,predicted_loss")


def test_search_fine_tunes_the_picks_with_kd_from_the_store(library, tmp_path):
    out, _ = library
    result = search(out, "params=1G", top=1, finetune_epochs=1, uniform=False, out=tmp_path / "ft", log=quiet)
    [row] = result["students"]
    saved = read_student(row["checkpoint"])
    assert saved["mode"] == "finetune" and saved["epoch"] == 1 and saved["student"] == row["student"]


def test_a_moved_library_and_store_are_found_with_store(stores, library, tmp_path):
    import shutil

    recipe, train, _ = stores
    out, _ = library
    moved, store = tmp_path / "moved-lib", tmp_path / "moved.zarr"
    shutil.copytree(out, moved)
    shutil.copytree(train, store)
    found = search(moved, "macs=1G", top=1, uniform=False, out=tmp_path / "s", store=store, log=quiet)
    assert found["students"][0]["student"] == "mix-2-2-2"
    shutil.move(str(train), str(tmp_path / "elsewhere.zarr"))  # the recorded store is gone: --store is needed
    try:
        with pytest.raises(Exception, match="If it moved, give it with --store"):
            search(moved, "macs=1G", out=tmp_path / "s2", log=quiet)
    finally:
        shutil.move(str(tmp_path / "elsewhere.zarr"), str(train))


def test_a_rerun_search_fine_tunes_anew_when_its_settings_change(library, tmp_path):
    out, _ = library
    common = dict(top=1, uniform=False, out=tmp_path / "s", log=quiet)
    two = search(out, "latency=1e9ms", finetune_epochs=2, **common)["students"][0]
    one = search(out, "latency=1e9ms", finetune_epochs=1, **common)["students"][0]
    assert read_student(two["checkpoint"])["epoch"] == 2 and read_student(one["checkpoint"])["epoch"] == 1
    assert one["checkpoint"] != two["checkpoint"]
    assert one["latency_ms"] > 0 and one["predicted_latency_ms"] > 0  # a latency budget works end to end


# ---------------------------------------------------------------------------------------------
# Bad input: one Error line, nothing written.


def test_bad_library_and_search_input_is_refused_cleanly(stores, library, tmp_path):
    recipe, train, heldout = stores
    out, lib = library
    cheapest = lib["teacher"]["shared"]["macs"] + sum(
        min(c["macs"] for c in lib["candidates"] if c["section"] == i) for i in (1, 2, 3))
    before = sorted(p.name for p in out.iterdir())

    def search_cli(*args):
        return run_cli("search", str(out), "--out", str(tmp_path / "s"), *args)

    error = assert_clean_error(search_cli("--budget", f"macs={cheapest - 1}"), "No mix meets --budget")
    assert f"the cheapest, mix-0-0-0, has macs {cheapest:,}" in error
    assert_clean_error(search_cli("--budget", "flops=3M"), "Expected --budget as macs=X")
    assert_clean_error(search_cli("--budget", "macs=1G", "--store", str(heldout)),
                       f"Library {str(out)!r} was made from store")
    assert not (tmp_path / "s").exists() and sorted(p.name for p in out.iterdir()) == before

    new = tmp_path / "new"
    common = ["library", TINY, "--store", str(train), "--heldout", str(heldout), "--epochs", "1", "--workers", "1"]
    assert_clean_error(run_cli(*common, "--out", str(new), "--depths", "4:1"),
                       "--depths '4:1' names section 4, but the recipe has sections 1 to 3")
    assert_clean_error(run_cli(*common, "--out", str(new), "--depths", "3"), "Expected depths of section 1 between 0")
    assert_clean_error(run_cli(*common[:5], str(train), *common[6:], "--out", str(new)),
                       f"--heldout {str(train)!r} holds the same rows as --store")
    assert not new.exists()
    # A library made from another store: the held-out store as the training store, into the library above.
    result = run_cli("library", TINY, "--store", str(heldout), "--heldout", str(train), "--out", str(out),
                     "--epochs", "1", "--workers", "1")
    assert_clean_error(result, f"Library {str(out)!r} was made from another recipe or store")
    assert sorted(p.name for p in out.iterdir()) == before


def test_the_library_cli_writes_the_table(stores, tmp_path):
    recipe, train, heldout = stores
    out = tmp_path / "lib"
    result = run_cli("library", TINY, "--store", str(train), "--heldout", str(heldout), "--out", str(out),
                     "--depths", "0,2", "--workers", "1", "--json", "-q")
    assert result.exit_code == 0, result.output
    lib = json.loads(result.stdout)
    assert [c["candidate"] for c in lib["candidates"]] == ["s1-d0", "s1-d2", "s2-d0", "s2-d2", "s3-d0", "s3-d2"]
    result = run_cli("search", str(out), "--budget", "macs=1G", "--no-uniform", "--json", "-q")
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert [r["student"] for r in found["students"]] == ["mix-2-2-2"]  # the teacher's own sections lose nothing
    assert os.path.isdir(found["out"]) and Path(found["out"]).parent == out / "search"
