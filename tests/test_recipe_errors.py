"""A recipe reference that is not a recipe: one clean Error: line, through the command line."""

from __future__ import annotations

import pytest
from conftest import assert_clean_error, run_cli

from litcache import load_recipe
from litcache.errors import RecipeError


@pytest.mark.parametrize("command", ["extract", "show", "train-teacher"])
def test_a_file_that_is_not_python(command, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("these are notes, not a recipe\n")
    out = tmp_path / "s.zarr"
    result = run_cli(command, notes, *(["--out", out] if command != "show" else []))
    line = assert_clean_error(result, f"Expected a recipe as a .py file or module:attr, got '{notes}', a file that is "
                                      "not Python (.py) instead.", 1)
    assert "pipelines/mnist_resnet.py" in line  # what to give instead
    assert not out.exists() and notes.read_text() == "these are notes, not a recipe\n"


def test_a_directory(tmp_path):
    assert_clean_error(run_cli("show", tmp_path), f"Expected a recipe as a .py file or module:attr, got '{tmp_path}', "
                                                  "a directory, instead.", 1)


def test_library_raises_recipe_error(tmp_path):
    notes = tmp_path / "notes.md"
    notes.write_text("# notes\n")
    with pytest.raises(RecipeError, match=r"a file that is not Python \(\.py\)"):
        load_recipe(notes)
    with pytest.raises(RecipeError, match="got 'no_such_recipe' instead"):
        load_recipe("no_such_recipe")
