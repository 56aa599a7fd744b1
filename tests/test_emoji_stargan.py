"""pipelines/emoji_stargan.py, its emoji reader (_emoji.py) and its StarGAN trainer (train_stargan.py).

A miniature npm archive of emoji-datasource-google is made here in the real layout (package/emoji.json and
package/img/google/64/*.png, RGBA), with emoji drawn in the six tones as coloured shapes, so the whole path
runs offline: StarGAN training -> extract -> train-blocks (IR only) -> evaluate -> classifier -> score.
"""

from __future__ import annotations

import io
import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, quiet
from PIL import Image
from test_pipelines import load

import litcache
from litcache import BlockTrainOptions, ExtractOptions
from litcache.errors import RecipeError
from litcache.recipe import import_beside

TONES = ("1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF")
SKIN = ((250, 200, 40), (247, 222, 206), (243, 210, 162), (213, 171, 136), (175, 126, 87), (124, 83, 62))
TINY = dict(LITCACHE_EMOJI_IMAGE_SIZE="8", LITCACHE_STARGAN_CONV_DIM="4")


def _emoji_module():
    return import_beside(str(REPO / "pipelines" / "emoji_stargan.py"), "_emoji")


def _codes(train: int, test: int) -> list[str]:
    """Code points of which ``test`` fall in the held-out split and ``train`` do not."""
    module, picked = _emoji_module(), {True: [], False: []}
    for n in range(0x1F600, 0x1F600 + 500):
        code = f"{n:X}"
        side = module.is_test_emoji(code)
        if len(picked[side]) < (test if side else train):
            picked[side].append(code)
    return picked[False] + picked[True]


def _png(tone: int, shape: int) -> bytes:
    image = np.zeros((64, 64, 4), np.uint8)  # transparent
    size = 32 + 4 * shape  # the centre keeps its colour at 8x8; the corners stay clear
    image[32 - size // 2:32 + size // 2, 32 - size // 2:32 + size // 2] = (*SKIN[tone], 255)
    out = io.BytesIO()
    Image.fromarray(image, "RGBA").save(out, format="PNG")
    return out.getvalue()


def make_archive(path: Path, codes: list[str]) -> Path:
    meta, files = [], {}
    for shape, code in enumerate(codes):
        entry = {"unified": code, "image": f"{code.lower()}.png", "has_img_google": True, "sort_order": shape,
                 "category": "People & Body", "skin_variations": {}}
        files[entry["image"]] = _png(0, shape % 4)
        for tone, modifier in enumerate(TONES, 1):
            name = f"{code.lower()}-{modifier.lower()}.png"
            entry["skin_variations"][modifier] = {"unified": f"{code}-{modifier}", "image": name}
            files[name] = _png(tone, shape % 4)
        meta.append(entry)
    meta.append({"unified": "1F600", "image": "1f600.png", "has_img_google": True, "sort_order": 99})  # no tones
    files["1f600.png"] = _png(0, 0)
    with tarfile.open(path, "w:gz") as tgz:
        for name, data in [("package/emoji.json", json.dumps(meta).encode())] + [
                (f"package/img/google/64/{n}", d) for n, d in files.items()]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tgz.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def emoji(tmp_path, monkeypatch) -> Path:
    path = make_archive(tmp_path / "emoji-datasource-google-16.0.0.tgz", _codes(train=6, test=2))
    monkeypatch.setenv("LITCACHE_EMOJI_ARCHIVE", str(path))
    monkeypatch.delenv("LITCACHE_EMOJI_ATTRIBUTE", raising=False)
    monkeypatch.delenv("LITCACHE_CACHE_DIR", raising=False)
    for key, value in TINY.items():
        monkeypatch.setenv(key, value)
    return path


def test_emoji_are_read_in_every_tone_and_held_out_whole(emoji):
    module = _emoji_module()
    train, test = module.load_emoji("train"), module.load_emoji("test")
    assert train["images"].shape == (36, 8, 8, 3) and test["images"].shape == (12, 8, 8, 3)
    assert train["tones"].tolist() == [0, 1, 2, 3, 4, 5] * 6  # every emoji in all six tones, none without
    assert not set(train["emoji"].tolist()) & set(test["emoji"].tolist())
    centre = train["images"][:6, 4, 4].astype(int)  # the drawn square in its tone's colour (Lanczos rings a little)
    nearest = np.abs(centre[:, None] - np.array(SKIN)[None]).sum(-1).argmin(1)
    assert nearest.tolist() == [0, 1, 2, 3, 4, 5] and np.abs(centre - np.array(SKIN)).max() <= 12
    assert (train["images"][:, 0, 0] > 200).all()  # transparent corners became white, not black


def test_rows_pair_each_image_with_every_other_tone(emoji, monkeypatch):
    recipe = load("emoji_stargan", monkeypatch)
    dataset = recipe.load_split("train")
    assert len(dataset) == 36 * 5
    x, label = dataset[7]  # image 1 (tone 1), its 3rd other tone: 3
    assert x.shape == (3 + 6, 8, 8) and label == 0
    assert dataset.target(7) == 3 and x[3 + 3].eq(1).all() and x[3:].sum() == 64
    assert sorted(dataset.target(r) for r in range(5, 10)) == [0, 2, 3, 4, 5]


def test_stargan_teacher_lit_student_and_scores(emoji, tmp_path, monkeypatch):
    train_stargan = import_beside(str(REPO / "pipelines" / "train_stargan.py"), "train_stargan")
    recipe = load("emoji_stargan", monkeypatch)
    teacher = tmp_path / "teacher"
    common = ["--iterations", "4", "--n-critic", "2", "--batch-size", "4", "--log-every", "2"]
    assert train_stargan.main(["train", "--out", str(teacher), "--save-every", "2", *common]) == 0
    log = json.loads((teacher / "log.json").read_text())
    assert [r["iteration"] for r in log["log"]] == [2, 4] and math.isfinite(log["log"][-1]["g_rec"])
    assert not (teacher / "state.pt").exists()  # the resumable state is gone once generator.pt is written
    scratch = tmp_path / "scratch2"
    assert train_stargan.main(["train", "--out", str(scratch), "--blocks", "2", *common]) == 0

    store = tmp_path / "train.zarr"
    litcache.extract(recipe, store, ExtractOptions(dtype="float32", chunk_rows=16, batch_size=16, device="cpu"),
                     teacher_checkpoint=teacher / "generator.pt", progress=False, log=quiet)
    [lit] = litcache.train_blocks(recipe, store, ["blocks2"], tmp_path / "lit", BlockTrainOptions(
        mode="ir", epochs=1, batch_size=16, device="cpu", evaluate=False), log=quiet)
    report = litcache.evaluate(recipe, lit["checkpoint"], teacher / "generator.pt", device="cpu", batch_size=16)
    student = report["student"]
    assert 0 < student["ssim_vs_teacher"] <= 1 and student["mse_vs_teacher"] > 0
    assert Path(student["samples_png"]).is_file()

    judge = tmp_path / "classifier.pt"
    assert train_stargan.main(["classifier", "--out", str(judge), "--epochs", "1"]) == 0
    out = tmp_path / "scores.json"
    assert train_stargan.main(["score", "--teacher", str(teacher / "generator.pt"), "--classifier", str(judge),
                               "--generator", f"lit={lit['checkpoint']}",
                               "--generator", f"scratch={scratch / 'generator.pt'}", "--out", str(out)]) == 0
    scores = json.loads(out.read_text())
    assert scores["rows"] == 12 * 5 and scores["held_out_emoji"] == 2
    assert scores["lit"]["mse_vs_teacher"] == pytest.approx(student["mse_vs_teacher"], rel=1e-4)
    assert scores["lit"]["ssim_vs_teacher"] == pytest.approx(student["ssim_vs_teacher"], abs=1e-4)
    assert 0 <= scores["scratch"]["tone_accuracy"] <= 1 and 0 <= scores["teacher"]["tone_accuracy"] <= 1
    assert Image.open(scores["grid"]).size[0] > 4 * 8  # input, teacher, lit, scratch side by side


def test_a_killed_stargan_run_resumes(emoji, tmp_path, monkeypatch, capsys):
    train_stargan = import_beside(str(REPO / "pipelines" / "train_stargan.py"), "train_stargan")
    load("emoji_stargan", monkeypatch)
    args = ["train", "--iterations", "4", "--n-critic", "2", "--batch-size", "4", "--save-every", "2"]
    assert train_stargan.main([*args, "--out", str(tmp_path / "whole")]) == 0
    whole = torch.load(tmp_path / "whole" / "generator.pt", weights_only=False)
    # A run killed after iteration 2 left its state; the rerun continues from it and ends where the whole run did.
    half = _state_after(train_stargan, args, tmp_path / "killed", stop_after=2)
    assert (half / "state.pt").exists()
    capsys.readouterr()
    assert train_stargan.main([*args, "--out", str(half)]) == 0
    out = capsys.readouterr().out
    assert "resuming at iteration 2" in out and "it 3/4" not in out.split("resuming")[0]
    resumed = torch.load(half / "generator.pt", weights_only=False)
    for key, value in whole["state_dict"].items():
        assert torch.allclose(value, resumed["state_dict"][key], atol=1e-5), key
    # A finished run is not trained again, nor replaced by a run of other settings.
    assert train_stargan.main([*args, "--out", str(half)]) == 0
    assert "trained already" in capsys.readouterr().out
    finished = (half / "generator.pt").read_bytes()
    assert train_stargan.main([*args, "--out", str(half), "--seed", "1"]) == 1
    assert "finished run" in capsys.readouterr().err and (half / "generator.pt").read_bytes() == finished
    # A killed run asked to continue with other settings is refused, its state kept.
    other = _state_after(train_stargan, args, tmp_path / "other", stop_after=2)
    before = (other / "state.pt").read_bytes()
    capsys.readouterr()
    assert train_stargan.main([*args[:2], "6", *args[3:], "--out", str(other)]) == 1
    assert "Error: Expected" in capsys.readouterr().err and (other / "state.pt").read_bytes() == before


def _state_after(train_stargan, args, out: Path, stop_after: int) -> Path:
    """Run ``args`` into ``out`` and kill it (an exception from the logger) once ``stop_after`` iterations are saved."""
    import builtins

    real_print = builtins.print

    def killing_print(*a, **k):
        real_print(*a, **k)
        if a and str(a[0]).startswith(f"it {stop_after + 1}/"):
            raise KeyboardInterrupt

    builtins.print = killing_print
    try:
        with pytest.raises(KeyboardInterrupt):
            train_stargan.main([*args, "--out", str(out), "--log-every", "1"])
    finally:
        builtins.print = real_print
    return out


# --- bad input --------------------------------------------------------------------------------------------


def test_missing_archive_names_the_make_target(tmp_path, monkeypatch):
    recipe = load("emoji_stargan", monkeypatch, LITCACHE_EMOJI_ARCHIVE=str(tmp_path / "none.tgz"))
    with pytest.raises(RecipeError, match=r"missing\. Run `make emoji-data`"):
        recipe.load_split("train")


def test_damaged_archive_is_refused(emoji, monkeypatch):
    emoji.write_bytes(emoji.read_bytes()[:300])
    recipe = load("emoji_stargan", monkeypatch)
    with pytest.raises(RecipeError, match="damaged.*make emoji-data"):
        recipe.load_split("train")


def test_unknown_attribute_is_refused(emoji, monkeypatch):
    recipe = load("emoji_stargan", monkeypatch, LITCACHE_EMOJI_ATTRIBUTE="hair_colour")
    with pytest.raises(RecipeError, match=r"LITCACHE_EMOJI_ATTRIBUTE to be one of \['skin_tone'\]; got 'hair_colour'"):
        recipe.load_split("train")


def test_ssim_matches_scikit_image():
    from litcache.evaluation import ssim

    torch.manual_seed(0)
    a = torch.rand(3, 3, 32, 32) * 2 - 1
    b = (a + 0.2 * torch.randn_like(a)).clamp(-1, 1)
    # skimage.metrics.structural_similarity(a[i], b[i], channel_axis=0, data_range=2, gaussian_weights=True,
    # sigma=1.5, use_sample_covariance=False), scikit-image 0.26
    assert ssim(a, b).tolist() == pytest.approx([0.7399, 0.77301, 0.73549], abs=2e-5)
    assert ssim(a, a).tolist() == pytest.approx([1.0] * 3)


def test_the_cli_says_one_error_line_and_writes_nothing(tmp_path, monkeypatch):
    from conftest import assert_clean_error, run_cli

    recipe = load("emoji_stargan", monkeypatch, LITCACHE_EMOJI_ARCHIVE=str(tmp_path / "none.tgz"), **TINY)
    torch.save({"state_dict": recipe.build_teacher().state_dict()}, tmp_path / "t.pt")
    out = tmp_path / "store.zarr"
    result = run_cli("extract", REPO / "pipelines" / "emoji_stargan.py", "--teacher", tmp_path / "t.pt", "--out", out)
    assert_clean_error(result, "Expected the emoji archive")
    assert "make emoji-data" in result.output and not out.exists()
    train_stargan = import_beside(str(REPO / "pipelines" / "train_stargan.py"), "train_stargan")
    assert train_stargan.main(["train", "--out", str(tmp_path / "g"), "--iterations", "1"]) == 1
    assert not (tmp_path / "g" / "generator.pt").exists()
