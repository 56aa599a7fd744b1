"""Clean errors of the training commands: a recipe whose sections changed since the store was
extracted, and train-teacher on a recipe that is not a classifier."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch.nn as nn
from conftest import assert_clean_error, run_cli, write_variant

from litcache import open_store
from litcache.errors import CheckpointError, NotAClassifierError, StoreMismatchError
from litcache.sections import SectionedModel
from litcache.training.blocks import check_student_fits
from litcache.training.student import build_student
from litcache.training.teacher import train_teacher


def test_student_with_more_sections_than_the_store_is_refused(tiny_store, tmp_path):
    recipe = write_variant(tmp_path, "four_sections",
                           "recipe = replace(base, sections=(*base.sections, lambda model: nn.Identity()))")
    result = run_cli("train-blocks", recipe, "--store", tiny_store, "--student", "resnet8", "--out", tmp_path / "out",
                     "--epochs", "1", "--no-eval", "-q")
    line = assert_clean_error(result, "Expected student 'resnet8' to have one section per stored boundary pair",
                              exit_code=1)
    assert "the store's 3 sections, but it has 4" in line and "Extract a new store with this recipe" in line
    assert not (tmp_path / "out" / "resnet8" / "last.pt").exists()


def test_student_with_fewer_sections_is_refused_before_any_shape_check(tiny_recipe, tiny_store):
    _, sectioned = build_student(tiny_recipe, "resnet8")
    fewer = SectionedModel(sectioned.stem, list(sectioned.sections)[:2], sectioned.head)
    with pytest.raises(StoreMismatchError, match="the store's 3 sections, but it has 2"):
        check_student_fits(fewer, open_store(tiny_store), "resnet8")
    more = SectionedModel(sectioned.stem, [*sectioned.sections, nn.Identity()], sectioned.head)
    with pytest.raises(StoreMismatchError, match="the store's 3 sections, but it has 4"):  # was an IndexError
        check_student_fits(more, open_store(tiny_store), "resnet8")


def test_train_teacher_refuses_a_generation_recipe(tmp_path):
    recipe = write_variant(tmp_path, "generator", 'recipe = replace(base, task="generation")')
    result = run_cli("train-teacher", recipe, "--out", tmp_path / "t.pt", "--epochs", "1", "--device", "cpu")
    assert_clean_error(result, "train-teacher trains classifiers and language models with cross-entropy; "
                               "recipe 'tiny' is a generation task", exit_code=1)
    assert len([line for line in result.output.splitlines() if line.startswith("Error:")]) == 1
    assert not (tmp_path / "t.pt").exists()


def test_not_a_classifier_error_is_its_own_class(tiny_recipe, tmp_path):
    with pytest.raises(NotAClassifierError) as info:
        train_teacher(replace(tiny_recipe, task="generation"), tmp_path / "t.pt", log=lambda m: None)
    assert isinstance(info.value, ValueError) and not isinstance(info.value, CheckpointError)
