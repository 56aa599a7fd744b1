"""The section check: stem -> sections -> head must reproduce the teacher, or the recipe is refused."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
import torch
import torch.nn as nn
from conftest import assert_clean_error, quiet, run_cli, write_variant

from litcache import ExtractOptions, extract
from litcache.errors import LitcacheError, RecipeError, SectionsMismatchError
from litcache.extraction.teacher import load_teacher
from litcache.models.resnet import cifar_resnet
from litcache.sections import SectionedModel, check_sections, cut_sections


@pytest.fixture(scope="module")
def teacher(tiny_recipe, teacher_ckpt):
    return load_teacher(tiny_recipe, teacher_ckpt)[0]


@pytest.fixture(scope="module")
def probe():
    return torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(3))


def test_check_split_passes_on_tiny_teacher(tiny_recipe, teacher, probe):
    sectioned = cut_sections(teacher, tiny_recipe)
    assert isinstance(sectioned, SectionedModel) and len(sectioned.sections) == 3
    diff = check_sections(teacher, sectioned, probe)
    assert 0.0 <= diff <= 1e-5
    with torch.inference_mode():
        outs, logits = sectioned.boundaries(probe)
        expected = teacher(probe)
    assert [tuple(o.shape[1:]) for o in outs] == [(4, 8, 8), (4, 8, 8), (8, 4, 4), (8, 2, 2)]
    torch.testing.assert_close(logits, expected)
    # The sectioned model shares the teacher's parameters: it is a view of the model, not a copy.
    assert sectioned.stem is teacher.stem and sectioned.head is teacher.head


def test_check_split_restores_training_mode(tiny_recipe, probe):
    model = tiny_recipe.build_teacher().train()
    check_sections(model, cut_sections(model, tiny_recipe), probe)
    assert model.training


def _message_diff(message: str) -> float:
    m = re.search(r"max abs difference ([0-9.eE+-]+)", message)
    assert m, message
    return float(m.group(1))


def _true_diff(teacher, sectioned, probe) -> float:
    with torch.inference_mode():
        return (sectioned(probe) - teacher(probe)).abs().max().item()


@pytest.mark.parametrize("change", [
    {"sections": ("layer1", "layer2")},                      # skips layer3 entirely
    {"stem": "stem.0"},                                       # skips the stem's BatchNorm and ReLU
    {"stem": ("stem.0", "stem.1")},                           # skips the stem's ReLU
], ids=["missing-section", "stem-skips-bn-relu", "stem-skips-relu"])
def test_split_that_skips_code_refused(tiny_recipe, teacher, probe, change):
    sectioned = cut_sections(teacher, replace(tiny_recipe, **change))
    with pytest.raises(SectionsMismatchError) as info:
        check_sections(teacher, sectioned, probe)
    message = str(info.value)
    assert _message_diff(message) == pytest.approx(_true_diff(teacher, sectioned, probe), rel=1e-2)
    assert _message_diff(message) > 1e-3


def test_head_without_final_linear_refused(tiny_recipe, teacher, probe):
    sectioned = cut_sections(teacher, replace(tiny_recipe, head=lambda m: nn.Sequential(m.head[0], m.head[1])))
    with pytest.raises(SectionsMismatchError, match=r"output shape \(8, 4\), got \(8, 8\)"):
        check_sections(teacher, sectioned, probe)


def test_sections_in_wrong_order_refused_with_difference():
    # Equal widths, so the wrong order runs and only the values tell.
    torch.manual_seed(0)
    model = cifar_resnet(14, widths=(4, 4, 4), num_classes=3).eval()

    class R:  # the three fields cut_sections reads
        stem, head = "stem", "head"
        sections = ("layer1", "layer3", "layer2")

    probe = torch.randn(4, 3, 8, 8)
    sectioned = cut_sections(model, R)
    with pytest.raises(SectionsMismatchError) as info:
        check_sections(model, sectioned, probe)
    assert _message_diff(str(info.value)) == pytest.approx(_true_diff(model, sectioned, probe), rel=1e-2)
    R.sections = ("layer1", "layer2", "layer3")
    check_sections(model, cut_sections(model, R), probe)


def test_sections_in_wrong_order_that_cannot_run_refused(tiny_recipe, teacher, probe):
    sectioned = cut_sections(teacher, replace(tiny_recipe, sections=("layer1", "layer3", "layer2")))
    with pytest.raises(SectionsMismatchError):
        check_sections(teacher, sectioned, probe)


def test_cli_sections_in_wrong_order_clean_error(tmp_path, teacher_ckpt):
    recipe = write_variant(tmp_path, "wrong_order", 'recipe = replace(base, sections=("layer1", "layer3", "layer2"))')
    result = run_cli("extract", recipe, "--teacher", teacher_ckpt, "--out", tmp_path / "s", "-q")
    line = assert_clean_error(result, "stem -> sections -> head cannot run on a probe batch: ", 1)
    assert line.endswith("Check the order and names of the recipe's stem, sections and head."), line
    assert isinstance(result.exception, SystemExit)
    assert not (tmp_path / "s").exists()  # refused before anything is written


class _Inline(nn.Module):
    """A model with functional code between its modules, which forward hooks would miss."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.b = nn.Linear(6, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(torch.tanh(self.b(self.a(x))) * 3)


def test_inline_functional_code_needs_callable():
    torch.manual_seed(0)
    model = _Inline().eval()
    probe = torch.randn(5, 6)

    class R:
        stem, sections, head = "a", ("b",), "head"

    with pytest.raises(SectionsMismatchError, match="use a callable"):
        check_sections(model, cut_sections(model, R), probe)

    class Scale(nn.Module):
        def forward(self, x):
            return torch.tanh(x) * 3

    R.head = lambda m: nn.Sequential(Scale(), m.head)
    assert check_sections(model, cut_sections(model, R), probe) < 1e-6


def test_unknown_module_name_lists_existing(tiny_recipe, teacher):
    with pytest.raises(RecipeError) as info:
        cut_sections(teacher, replace(tiny_recipe, sections=("layer1", "layer9", "layer3")))
    message = str(info.value)
    assert "section 2" in message and "'layer9'" in message
    assert "Top-level modules: stem, layer1, layer2, layer3, head." in message


def test_module_ref_forms(tiny_recipe, teacher, probe):
    # A list of names runs them in order; a callable returns a module; both give the same sections.
    merged = replace(tiny_recipe, sections=(("layer1", "layer2"), lambda m: m.layer3))
    sectioned = cut_sections(teacher, merged)
    assert len(sectioned.sections) == 2
    check_sections(teacher, sectioned, probe)
    with pytest.raises(RecipeError, match="callable to return an nn.Module, got int"):
        cut_sections(teacher, replace(tiny_recipe, head=lambda m: 3))
    with pytest.raises(RecipeError, match="module name, a list of names or a callable"):
        cut_sections(teacher, replace(tiny_recipe, stem=3))
    with pytest.raises(RecipeError, match="'nope'"):
        cut_sections(teacher, replace(tiny_recipe, stem=["stem", "nope"]))


def test_extract_refuses_bad_split(tiny_recipe, teacher_ckpt, tmp_path):
    with pytest.raises(SectionsMismatchError, match="max abs difference"):
        extract(replace(tiny_recipe, sections=("layer1", "layer2")), tmp_path / "s", ExtractOptions(limit=8),
                teacher_checkpoint=teacher_ckpt, progress=False, log=quiet)
    assert not (tmp_path / "s").exists()  # refused before anything is written


def test_cli_unknown_module_clean_error(tmp_path, teacher_ckpt):
    recipe = write_variant(tmp_path, "bad_stem", 'recipe = replace(base, stem="stm")')
    result = run_cli("extract", recipe, "--teacher", teacher_ckpt, "--out", tmp_path / "s", "-q")
    line = assert_clean_error(result, "The recipe's stem names module 'stm'")
    assert "Top-level modules: stem, layer1, layer2, layer3, head" in line


def test_litcache_errors_are_builtin_subclasses():
    assert issubclass(SectionsMismatchError, ValueError) and issubclass(SectionsMismatchError, LitcacheError)
    assert issubclass(RecipeError, ValueError)
