"""Loading recipes, and refusing inconsistent ones."""

from __future__ import annotations

import shutil
import sys
from dataclasses import replace

import pytest
from conftest import REPO, TINY

from litcache import CropFlip, Recipe, TrainConfig, load_recipe
from litcache.errors import RecipeError
from litcache.recipe import recipe_code_hash


def test_load_tiny_records_source(tiny_recipe):
    assert isinstance(tiny_recipe, Recipe)
    assert tiny_recipe.name == "tiny" and tiny_recipe.source == TINY
    assert len(tiny_recipe.source_hash) == 16
    assert tiny_recipe.sections == ("layer1", "layer2", "layer3")
    assert isinstance(tiny_recipe.augment, CropFlip)
    assert tiny_recipe.augmentation_for("train") is tiny_recipe.augment
    assert tiny_recipe.augmentation_for("test") is None


def test_source_hash_follows_the_code_and_bytes_hash_the_file(tmp_path):
    copy = tmp_path / "copy.py"
    shutil.copy(TINY, copy)
    a = load_recipe(copy)
    assert a.source_hash == load_recipe(copy).source_hash and a.source_bytes_hash == load_recipe(copy).source_bytes_hash
    copy.write_text(copy.read_text() + "\n# changed\n")
    b = load_recipe(copy)
    assert b.source_hash == a.source_hash and b.source_bytes_hash != a.source_bytes_hash
    copy.write_text(copy.read_text() + "CHANGED = True\n")
    assert load_recipe(copy).source_hash != a.source_hash


def test_load_module_attr(tmp_path, monkeypatch):
    (tmp_path / "my_recipes.py").write_text(
        "from dataclasses import replace\nfrom litcache import load_recipe\n"
        f"base = load_recipe({TINY!r})\nsmall = replace(base, name='small')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    r = load_recipe("my_recipes:small")
    assert r.name == "small" and r.source == "my_recipes:small" and r.source_hash
    assert sys.modules["my_recipes"].small.source == TINY  # provenance goes on a copy, not the user's object
    with pytest.raises(RecipeError, match="Expected 'my_recipes:missing' to define missing = litcache.Recipe"):
        load_recipe("my_recipes:missing")
    with pytest.raises(RecipeError, match="Recipe module 'no_such_module_xyz' failed to import: ModuleNotFoundError"):
        load_recipe("no_such_module_xyz:recipe")


def test_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="Expected a recipe file, but .* does not exist"):
        load_recipe(tmp_path / "nope.py")


def test_file_that_raises(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('broken recipe')\n")
    with pytest.raises(RecipeError, match="failed to load: RuntimeError: broken recipe"):
        load_recipe(bad)
    bad.write_text("def oops(:\n")
    with pytest.raises(RecipeError, match="failed to load: SyntaxError"):
        load_recipe(bad)


def test_file_without_recipe(tmp_path):
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(RecipeError, match="to define recipe = litcache.Recipe\\(...\\), found nothing instead"):
        load_recipe(empty)
    empty.write_text("recipe = 3\n")
    with pytest.raises(RecipeError, match="found int instead"):
        load_recipe(empty)


def test_reference_that_is_neither():
    with pytest.raises(RecipeError, match="as a .py file or module:attr"):
        load_recipe("just_a_name")


@pytest.mark.parametrize("change,match", [
    ({"name": ""}, "Recipe.name"),
    ({"build_teacher": None}, "build_teacher"),
    ({"students": {}}, "Recipe.students"),
    ({"students": {"s": 3}}, r"Recipe.students\['s'\]"),
    ({"sections": ["layer1"]}, "Recipe.sections"),
    ({"sections": ()}, "Recipe.sections"),
    ({"load_split": None}, "load_split"),
    ({"num_classes": 0}, "num_classes"),
    ({"augment": object()}, "Recipe.augment"),
    ({"augment_splits": ("val",)}, "'val'"),
])
def test_inconsistent_recipe_refused(tiny_recipe, change, match):
    with pytest.raises(RecipeError, match=match):
        replace(tiny_recipe, **change)


@pytest.mark.parametrize("kwargs,match", [
    ({"epochs": 0}, "epochs >= 1"),
    ({"batch_size": 0}, "batch_size >= 1"),
    ({"lr": 0.0}, "lr > 0"),
])
def test_train_config_refused(kwargs, match):
    with pytest.raises(RecipeError, match=match):
        TrainConfig(**kwargs)


def test_split_and_student_names(tiny_recipe):
    tiny_recipe.check_split_name("train")
    with pytest.raises(RecipeError, match=r"Expected a split of recipe 'tiny' \(train, test\), got 'val' instead"):
        tiny_recipe.check_split_name("val")
    assert callable(tiny_recipe.student_builder("resnet8"))
    with pytest.raises(RecipeError, match=r"\(resnet8, or mixes such as 'mix-1-1-1'\), got 'resnet99'"):
        tiny_recipe.student_builder("resnet99")


def test_shipped_mnist_recipe_loads():
    r = load_recipe(REPO / "pipelines" / "mnist_resnet.py")  # only loads: the data is read lazily
    assert r.name == "mnist_resnet" and r.num_classes == 10 and r.augment.flip is False


@pytest.mark.parametrize("kwargs, match", [
    ({"mode": "finetune"}, r"DistillConfig.mode in \('lit', 'kd', 'ir'\), got 'finetune'"),
    ({"ir_loss": "l1"}, "DistillConfig.ir_loss"),
    ({"ir_feature_axis": 0}, "name a feature axis"),
    ({"beta": 1.5}, r"DistillConfig.beta in \[0, 1\]"),
    ({"tau": 0}, "DistillConfig.tau > 0"),
])
def test_distill_config_refused(kwargs, match):
    from litcache import DistillConfig

    with pytest.raises(RecipeError, match=match):
        DistillConfig(**kwargs)


def test_train_blocks_runs_the_recipes_default_mode(tiny_store, teacher_ckpt, tmp_path):
    """Without --mode, train-blocks trains what the recipe's DistillConfig.mode says (lit unless it says kd)."""
    from conftest import run_cli, write_variant

    from litcache.training.student import read_student

    variant = write_variant(tmp_path, "tiny_kd_default", "recipe = replace(base, distill=replace(base.distill, "
                                                         "mode='kd'))")
    common = ["--store", str(tiny_store), "--student", "resnet8", "--epochs", "1", "--batch-size", "16", "-q",
              "--no-eval"]
    for recipe, expected in ((TINY, "lit"), (variant, "kd")):
        out = tmp_path / expected
        result = run_cli("train-blocks", str(recipe), *common, "--out", str(out))
        assert result.exit_code == 0, result.output
        assert read_student(out / "resnet8" / "student.pt")["config"]["mode"] == expected


def test_recipe_code_hash_leaves_out_prose_only():
    base = b'"""Doc."""\nimport os\n\nX = "a"  # note\nY = f"{X}"\n\n\ndef f():\n    """Why."""\n    return X\n'
    same = [
        base.replace(b"Doc.", b"Other words,\nover two lines."),
        base.replace(b"  # note", b"    # another note"),
        base.replace(b"\n\n\n", b"\n\n# between\n\n"),
        base.replace(b'"""Why."""', b"'Why' 'not'"),  # implicitly joined strings: still a docstring
        base + b"\n\n",
        b"# -*- coding: utf-8 -*-\n" + base,
    ]
    other = [
        base.replace(b'X = "a"', b'X = "b"'),  # a string in code is code
        base.replace(b"return X", b"return Y"),
        base.replace(b"    return X", b"    f'{X}'\n    return X"),  # an f-string statement is code (it runs)
        base.replace(b"def f():", b"def g():"),
    ]
    assert {recipe_code_hash(v) for v in same} == {recipe_code_hash(base)}
    assert recipe_code_hash(base) not in {recipe_code_hash(v) for v in other}
    assert len({recipe_code_hash(v) for v in other}) == len(other)
