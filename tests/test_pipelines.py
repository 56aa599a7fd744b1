"""The paper's systems as recipes (pipelines/*.py), each run end to end at tiny size.

Every recipe reads its data locations and model sizes from environment variables when a split is
loaded or a model is built, so each test writes a small offline dataset into tmp_path, shrinks the
models with the documented variables, and runs check_sections -> extract -> train-blocks -> evaluate
through the library calls.
"""

from __future__ import annotations

import csv
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import REPO, quiet
from PIL import Image

import litcache
from litcache import BlockTrainOptions, ExtractOptions, load_recipe
from litcache.errors import OptionError, RecipeError
from litcache.runtime.checkpoint import save_atomic

PIPELINES = REPO / "pipelines"
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CELEBA_ATTRS = ("5_o_Clock_Shadow", "Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair", "Male", "Smiling", "Young")


# --- tiny offline data, made here --------------------------------------------------------------


def make_cifar_folder(root: Path, train_per_class: int = 2, test_per_class: int = 1) -> Path:
    """ImageFolder layout of 32x32 JPEGs: train/<class>/*.jpg, test/<class>/*.jpg."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for label, name in enumerate(CIFAR_CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                pixels[..., label % 3] //= 2  # classes differ a little
                Image.fromarray(pixels).save(folder / f"{i:04d}.jpg", quality=90)
    return root


def make_amazon_csv(path: Path, rows: int, seed: int) -> Path:
    """Zhang et al. format: label (1/2), title, text; with quotes, commas and non-ASCII text."""
    rng = np.random.default_rng(seed)
    words = ["great", "awful", "book", "works", "broke", "\"quoted\"", "comma, inside", "café", "5/5", "Not BAD!"]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, quoting=csv.QUOTE_ALL)
        for _ in range(rows):
            title = " ".join(rng.choice(words, 2))
            text = " ".join(rng.choice(words, int(rng.integers(3, 30))))
            writer.writerow([int(rng.integers(1, 3)), title, text])
    return path


def make_celeba(root: Path, count: int) -> tuple[Path, Path]:
    """A folder of 20x24 JPEG faces (random pixels) and a matching list_attr_celeba.txt."""
    rng = np.random.default_rng(0)
    images = root / "img_align_celeba"
    images.mkdir(parents=True)
    lines = [str(count), " ".join(CELEBA_ATTRS)]
    for i in range(count):
        name = f"{i + 1:06d}.jpg"
        Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)).save(images / name)
        lines.append(name + " " + " ".join(str(v) for v in rng.choice([-1, 1], len(CELEBA_ATTRS))))
    attrs = root / "list_attr_celeba.txt"
    attrs.write_text("\n".join(lines) + "\n")
    return images, attrs


# --- the pipeline run shared by every recipe --------------------------------------------------


def make_teacher(recipe, path: Path, seed: int = 0) -> Path:
    """A seeded, untrained teacher whose BatchNorm statistics are warmed on real inputs."""
    torch.manual_seed(seed)
    model = recipe.build_teacher()
    dataset = recipe.load_split("train")
    x = torch.stack([dataset[i][0] for i in range(min(8, len(dataset)))])
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(x)
    save_atomic({"state_dict": model.state_dict(), "recipe": recipe.name}, path)
    return path


def run_pipeline(recipe, student: str, tmp_path: Path, *, views: int, finetune: bool) -> dict:
    """check_sections -> extract -> train-blocks (lit, then finetune) -> evaluate; returns the report."""
    assert recipe.description
    ckpt = make_teacher(recipe, tmp_path / "teacher.pt")
    teacher, _, _ = litcache.load_teacher(recipe, ckpt)
    dataset = recipe.load_split("train")
    probe = torch.stack([dataset[i][0] for i in range(4)])
    litcache.check_sections(teacher, litcache.cut_sections(teacher, recipe), probe)

    store = tmp_path / "train.zarr"
    options = ExtractOptions(views=views, dtype="float32", chunk_rows=8, batch_size=8, device="cpu")
    result = litcache.extract(recipe, store, options, teacher_checkpoint=ckpt, progress=False, log=quiet)
    assert result.rows == len(dataset) * views

    # train-blocks scores each epoch by test top-1 for classifiers and skips it for generators.
    train = dict(epochs=1, batch_size=8, device="cpu")
    lit = litcache.train_blocks(recipe, store, [student], tmp_path / "lit", BlockTrainOptions(**train), log=quiet)[0]
    assert math.isfinite(lit["history"][-1]["loss"])
    checkpoint = lit["checkpoint"]
    if finetune:
        ft = litcache.train_blocks(recipe, store, [student], tmp_path / "ft",
                                   BlockTrainOptions(mode="finetune", init=checkpoint, **train), log=quiet)[0]
        checkpoint = ft["checkpoint"]
    report = litcache.evaluate(recipe, checkpoint, ckpt, device="cpu", batch_size=8)
    report["store"] = litcache.open_store(store)
    return report


def recipe_module(name: str):
    """The recipe file imported as a module, for its helper functions."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"test_pipelines_{name}", PIPELINES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load(name: str, monkeypatch, **env: str):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return load_recipe(PIPELINES / f"{name}.py")


# --- CIFAR-10: ResNet and ResNeXt -----------------------------------------------------------------


@pytest.fixture
def cifar_dir(tmp_path, monkeypatch) -> Path:
    folder = make_cifar_folder(tmp_path / "cifar10")
    monkeypatch.delenv("LITCACHE_CIFAR10_ROOT", raising=False)
    monkeypatch.delenv("LITCACHE_CACHE_DIR", raising=False)
    monkeypatch.setenv("LITCACHE_CIFAR10_DIR", str(folder))
    return folder


def test_cifar10_resnet_pipeline(cifar_dir, tmp_path, monkeypatch):
    recipe = load("cifar10_resnet", monkeypatch, LITCACHE_CIFAR_TEACHER="32", LITCACHE_CIFAR_WIDTHS="4,8,8")
    assert set(recipe.students) == {"resnet20", "resnet32", "resnet44", "resnet56"}
    report = run_pipeline(recipe, "resnet20", tmp_path, views=2, finetune=True)
    student = report["student"]
    assert 0.0 <= student["accuracy"] <= 1.0 and student["samples"] == 10
    assert student["depth"] == 20 and student["compression_by_depth"] == pytest.approx(32 / 20, abs=1e-3)
    assert report["store"].manifest.arrays["boundaries/3"].row_shape == (8, 8, 8)


def test_cifar10_defaults_are_the_papers(monkeypatch):
    for var in ("LITCACHE_CIFAR_TEACHER", "LITCACHE_CIFAR_WIDTHS"):
        monkeypatch.delenv(var, raising=False)
    recipe = load("cifar10_resnet", monkeypatch)
    assert recipe.build_teacher().depth == 110 and recipe.students["resnet56"]().depth == 56
    d = recipe.distill
    assert (d.lit.epochs, d.lit.lr, d.lit.milestones, d.lit.batch_size) == (175, 0.1, (100,), 32)
    assert (d.finetune.epochs, d.finetune.lr, d.finetune.milestones) == (125, 0.01, (55,))
    assert (d.alpha, d.tau, d.beta, d.loss_scale) == (0.95, 6.0, 0.75, 0.5)  # the released code halves the LIT loss
    # Crops padded with black pixels, as the shared teacher's uint8 crops are: -mean/std after normalising.
    black = [-m / s for m, s in zip((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))]
    assert recipe.augment.describe() == {"type": "CropFlip", "padding": 4, "flip": True, "fill": black}
    monkeypatch.setenv("LITCACHE_CIFAR_TEACHER", "56")
    assert recipe.build_teacher().depth == 56  # read when the model is built


def test_cifar10_images_are_decoded_once(cifar_dir, monkeypatch):
    recipe = load("cifar10_resnet", monkeypatch)
    first = recipe.load_split("train")
    assert len(first) == 20 and first[0][0].shape == (3, 32, 32) and first[0][0].dtype == torch.float32
    assert sorted({first[i][1] for i in range(20)}) == list(range(10))
    # A second load reads the cache: decoding anything now would fail.
    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("decoded the JPEGs again"))
    again = recipe.load_split("train")
    assert torch.equal(first[3][0], again[3][0])
    assert list((cifar_dir / ".litcache").glob("cifar10-train-*/done"))


def test_cifar10_train_subset_is_class_balanced(cifar_dir, monkeypatch):
    recipe = load("cifar10_resnet", monkeypatch, LITCACHE_CIFAR10_TRAIN_SUBSET="10")
    subset = recipe.load_split("train")
    assert len(subset) == 10 and sorted(subset[i][1] for i in range(10)) == list(range(10))
    assert len(recipe.load_split("test")) == 10  # the test split is never subset
    # "val": class-balanced training images the subset leaves out (the fake data has 2 per class).
    monkeypatch.setenv("LITCACHE_CIFAR10_VAL", "10")
    val = recipe.load_split("val")
    assert len(val) == 10 and sorted(val[i][1] for i in range(10)) == list(range(10))
    train_images = {subset[i][0].numpy().tobytes() for i in range(10)}
    assert not train_images & {val[i][0].numpy().tobytes() for i in range(10)}
    monkeypatch.setenv("LITCACHE_CIFAR10_TRAIN_SUBSET", "0")
    with pytest.raises(RecipeError, match="outside LITCACHE_CIFAR10_TRAIN_SUBSET"):
        recipe.load_split("val")


def test_cifar10_without_data_says_how_to_get_it(tmp_path, monkeypatch):
    for var in ("LITCACHE_CIFAR10_ROOT", "LITCACHE_CIFAR10_DIR"):
        monkeypatch.delenv(var, raising=False)
    recipe = load("cifar10_resnet", monkeypatch)
    with pytest.raises(RecipeError, match="LITCACHE_CIFAR10_ROOT") as info:
        recipe.load_split("train")
    assert ("LITCACHE_CIFAR10_DIR" in str(info.value)
            and "tar -xzf ../shared/data/cifar10-jpeg.tar.gz -C DIR" in str(info.value))
    monkeypatch.setenv("LITCACHE_CIFAR10_ROOT", str(tmp_path / "no-cifar-here"))
    with pytest.raises(RecipeError, match="cifar-10-batches-py"):
        recipe.load_split("test")


def test_cifar10_resnext_pipeline(cifar_dir, tmp_path, monkeypatch):
    recipe = load("cifar10_resnext", monkeypatch, LITCACHE_RESNEXT_TEACHER="29", LITCACHE_RESNEXT_CARDINALITY="2",
                  LITCACHE_RESNEXT_BASE_WIDTH="2", LITCACHE_RESNEXT_WIDTHS="8,16,16")
    report = run_pipeline(recipe, "resnext20", tmp_path, views=2, finetune=False)
    assert (report["student"]["depth"] == 20
            and report["student"]["compression_by_depth"] == pytest.approx(29 / 20, abs=1e-3))


def test_resnext_cpu_size(monkeypatch):
    for var in ("LITCACHE_RESNEXT_TEACHER", "LITCACHE_RESNEXT_CARDINALITY", "LITCACHE_RESNEXT_BASE_WIDTH",
                "LITCACHE_RESNEXT_WIDTHS"):
        monkeypatch.delenv(var, raising=False)
    recipe = load("cifar10_resnext", monkeypatch, LITCACHE_RESNEXT_SIZE="cpu")
    teacher, student = recipe.build_teacher(), recipe.students["resnext20"]()
    count = sum(p.numel() for p in teacher.parameters())
    assert count == 420_914 and sum(p.numel() for p in student.parameters()) == 75_954
    monkeypatch.setenv("LITCACHE_RESNEXT_SIZE", "tiny")
    with pytest.raises(RecipeError, match=r"LITCACHE_RESNEXT_SIZE to be one of \['cpu', 'paper'\]"):
        recipe.build_teacher()


def test_resnext_grouped_bottlenecks():
    from litcache.models.resnext import cifar_resnext
    from litcache.training.metrics import depth

    model = cifar_resnext(110, base_width=4, widths=(16, 32, 64))  # the default cardinality 8, narrower
    assert model.depth == 110 and depth(model) == 110  # projection shortcuts are not counted
    block = model.layer2[0]  # stage 2: 8 groups of 2 * 4 channels, stride 2
    assert block.conv_group.groups == 8 and block.conv_group.in_channels == 8 * 8 and block.conv_group.stride == (2, 2)
    with pytest.raises(ValueError, match="9n \\+ 2"):
        cifar_resnext(21)


# --- Amazon reviews: VDCNN -------------------------------------------------------------------------


@pytest.fixture
def amazon_csvs(tmp_path, monkeypatch):
    train = make_amazon_csv(tmp_path / "train.csv", 24, seed=0)
    test = make_amazon_csv(tmp_path / "test.csv", 8, seed=1)
    monkeypatch.delenv("LITCACHE_CACHE_DIR", raising=False)
    monkeypatch.setenv("LITCACHE_AMAZON_CSV", str(train))
    monkeypatch.setenv("LITCACHE_AMAZON_TEST_CSV", str(test))
    return train, test


VDCNN_TINY = dict(LITCACHE_AMAZON_SEQ_LEN="64", LITCACHE_VDCNN_TEACHER="17", LITCACHE_VDCNN_WIDTHS="4,8,8,8",
                  LITCACHE_VDCNN_HIDDEN="16", LITCACHE_AMAZON_CLASSES="2")


def test_amazon_vdcnn_pipeline(amazon_csvs, tmp_path, monkeypatch):
    recipe = load("amazon_vdcnn", monkeypatch, **VDCNN_TINY)
    x, y = recipe.load_split("train")[0]
    assert x.dtype == torch.int64 and x.shape == (64,) and y in (0, 1)  # integer inputs reach the stem
    report = run_pipeline(recipe, "vdcnn9", tmp_path, views=1, finetune=True)
    arrays = report["store"].manifest.arrays
    assert arrays["boundaries/0"].row_shape == (4, 64) and arrays["boundaries/4"].row_shape == (8, 8)
    assert arrays["logits"].row_shape == (2,)
    assert report["student"]["compression_by_depth"] == pytest.approx((17 + 3) / (9 + 3), abs=1e-3)


def test_amazon_vdcnn_defaults_and_encoding(monkeypatch):
    for var in VDCNN_TINY:
        monkeypatch.delenv(var, raising=False)
    recipe = load("amazon_vdcnn", monkeypatch)
    module = recipe_module("amazon_vdcnn")
    assert module.VOCAB_SIZE == 69
    tokens = module.encode("Ab é\n", 8).tolist()
    assert tokens == [2, 3, module.ALPHABET.index(" ") + 2, 1, 1, 0, 0, 0]  # a, b, space, unknown x2, padding
    assert recipe.build_teacher().depth == 29 and recipe.students["vdcnn17"]().depth == 17
    d = recipe.distill
    assert ((d.beta, d.lit.epochs, d.lit.lr, d.lit.milestones, d.lit.gamma, d.lit.batch_size)
            == (0.05, 15, 0.01, (3, 6, 9, 12), 0.5, 128))
    assert (d.finetune.epochs, d.finetune.lr) == (10, 0.001) and recipe.augment is None
    monkeypatch.delenv("LITCACHE_AMAZON_CSV", raising=False)
    with pytest.raises(RecipeError, match="LITCACHE_AMAZON_CSV"):
        recipe.load_split("train")


def test_amazon_labels_out_of_range_are_refused(tmp_path, monkeypatch):
    path = tmp_path / "full.csv"
    path.write_text('"5","title","text"\n')
    recipe = load("amazon_vdcnn", monkeypatch, LITCACHE_AMAZON_CSV=str(path), LITCACHE_AMAZON_CLASSES="2",
                  LITCACHE_AMAZON_SEQ_LEN="64")
    with pytest.raises(RecipeError, match="LITCACHE_AMAZON_CLASSES=5"):
        recipe.load_split("train")


# --- CelebA: StarGAN generator (generation task) ---------------------------------------------------


STARGAN_TINY = dict(LITCACHE_CELEBA_IMAGE_SIZE="8", LITCACHE_CELEBA_CROP="16", LITCACHE_CELEBA_TEST_IMAGES="4",
                    LITCACHE_STARGAN_CONV_DIM="4", LITCACHE_STARGAN_TEACHER="6")


@pytest.fixture
def celeba(tmp_path, monkeypatch):
    images, attrs = make_celeba(tmp_path / "celeba", 20)
    monkeypatch.setenv("LITCACHE_CELEBA_IMAGES", str(images))
    monkeypatch.setenv("LITCACHE_CELEBA_ATTRS", str(attrs))
    return images, attrs


def test_celeba_stargan_pipeline(celeba, tmp_path, monkeypatch):
    recipe = load("celeba_stargan", monkeypatch, **STARGAN_TINY)
    assert recipe.task == "generation" and recipe.distill.beta == 0.0 and recipe.sections == ("blocks",)
    x, y = recipe.load_split("train")[0]
    assert x.shape == (3 + 5, 8, 8) and y == 0 and len(recipe.load_split("test")) == 4
    report = run_pipeline(recipe, "blocks2", tmp_path, views=2, finetune=False)
    assert report["store"].manifest.arrays["logits"].row_shape == (3, 8, 8)  # the teacher's image
    student = report["student"]
    assert student["mse_vs_teacher"] >= 0 and math.isfinite(student["mse_vs_teacher"])
    assert student["psnr_vs_teacher_db"] is None or math.isfinite(student["psnr_vs_teacher_db"])
    assert "accuracy" not in student and student["samples"] == 4
    assert student["compression_by_depth"] == pytest.approx(18 / 10, abs=1e-3)  # the paper's 1.8x
    with Image.open(student["samples_png"]) as png:  # 4 rows of (input, teacher, student), 2-pixel gaps
        assert png.size == (3 * 8 + 2 * 2, 4 * 8 + 3 * 2)


def test_generation_trains_with_ir_only_and_evaluates_in_text(celeba, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from litcache.cli import main

    recipe = load("celeba_stargan", monkeypatch, **STARGAN_TINY)
    ckpt = make_teacher(recipe, tmp_path / "teacher.pt")
    store = tmp_path / "s.zarr"
    litcache.extract(recipe, store, ExtractOptions(dtype="float32", chunk_rows=8), teacher_checkpoint=ckpt,
                     progress=False, log=quiet)
    assert litcache.open_store(store).manifest.arrays["logits"].row_shape == (3, 8, 8)
    for mode, extra in (("kd", {}), ("lit", {"beta": 0.5})):
        with pytest.raises(OptionError, match="IR losses only"):
            litcache.train_blocks(recipe, store, ["blocks2"], tmp_path / mode,
                                  BlockTrainOptions(mode=mode, epochs=1, **extra), log=quiet)
    [ir] = litcache.train_blocks(recipe, store, ["blocks2"], tmp_path / "ir", BlockTrainOptions(mode="ir", epochs=1),
                                 log=quiet)
    recipe_file = str(PIPELINES / "celeba_stargan.py")
    result = CliRunner().invoke(main, ["evaluate", recipe_file, "--student", ir["checkpoint"], "--teacher", str(ckpt),
                                       "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    assert "student  MSE vs teacher" in result.output and "samples:" in result.output


def test_celeba_targets_follow_stargan(celeba, monkeypatch):
    recipe = load("celeba_stargan", monkeypatch, **STARGAN_TINY)
    test = recipe.load_split("test")
    for i in range(4):
        original = test.rows[i][1]  # Black_Hair, Blond_Hair, Brown_Hair, Male, Young as 0/1
        k = i % 5
        expected = original.clone()
        if k < 3:  # a hair colour: set it, clear the other two
            expected[:3] = torch.tensor([float(j == k) for j in range(3)])
        else:  # male or young: flipped
            expected[k] = 1 - expected[k]
        maps = test[i][0][3:]
        assert torch.equal(maps, expected.view(5, 1, 1).expand(5, 8, 8))


def test_generation_evaluate_needs_the_teacher(celeba, monkeypatch):
    recipe = replace(load("celeba_stargan", monkeypatch, **STARGAN_TINY), teacher_checkpoint=None)
    with pytest.raises(OptionError, match="--teacher"):
        litcache.evaluate(recipe, student="student.pt")


def test_celeba_without_data_says_which_variable(monkeypatch):
    monkeypatch.delenv("LITCACHE_CELEBA_IMAGES", raising=False)
    monkeypatch.setenv("LITCACHE_CELEBA_ATTRS", "list_attr_celeba.txt")
    recipe = load("celeba_stargan", monkeypatch)
    with pytest.raises(RecipeError, match="LITCACHE_CELEBA_IMAGES .*is not set"):
        recipe.load_split("train")


class _OriginalResidualBlock(nn.Module):
    """StarGAN's own layout, to check the checkpoint conversion."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(dim, dim, 3, 1, 1, bias=False), nn.InstanceNorm2d(dim, affine=True, track_running_stats=True),
            nn.ReLU(inplace=True), nn.Conv2d(dim, dim, 3, 1, 1, bias=False),
            nn.InstanceNorm2d(dim, affine=True, track_running_stats=True))

    def forward(self, x):
        return x + self.main(x)


def _original_stargan(conv_dim: int, c_dim: int, blocks: int) -> nn.Sequential:
    def norm(c):
        return nn.InstanceNorm2d(c, affine=True, track_running_stats=True)

    layers, d = [nn.Conv2d(3 + c_dim, conv_dim, 7, 1, 3, bias=False), norm(conv_dim), nn.ReLU(inplace=True)], conv_dim
    for _ in range(2):
        layers += [nn.Conv2d(d, d * 2, 4, 2, 1, bias=False), norm(d * 2), nn.ReLU(inplace=True)]
        d *= 2
    layers += [_OriginalResidualBlock(d) for _ in range(blocks)]
    for _ in range(2):
        layers += [nn.ConvTranspose2d(d, d // 2, 4, 2, 1, bias=False), norm(d // 2), nn.ReLU(inplace=True)]
        d //= 2
    layers += [nn.Conv2d(d, 3, 7, 1, 3, bias=False), nn.Tanh()]
    return nn.Sequential(*layers)


def test_stargan_checkpoint_conversion_reproduces_the_original():
    from litcache.models.stargan import convert_stargan_state, stargan_generator

    torch.manual_seed(0)
    original = nn.Module()
    original.main = _original_stargan(4, 5, 3)
    for p in original.parameters():  # non-trivial affine InstanceNorm parameters
        p.data.normal_(0, 0.5)
    ours = stargan_generator(3, conv_dim=4, c_dim=5)
    ours.load_state_dict(convert_stargan_state(original.state_dict(), residual_blocks=3))
    x = torch.randn(2, 8, 8, 8)
    original.train()  # how StarGAN and the LIT code run it: per-image statistics
    ours.eval()  # how litcache runs a teacher
    with torch.no_grad():
        assert torch.allclose(ours(x), original.main(x), atol=1e-5)


def test_recipe_task_is_validated(tiny_recipe):
    assert tiny_recipe.task == "classification"
    with pytest.raises(RecipeError, match="task"):
        replace(tiny_recipe, task="segmentation")
