"""Cut a model into stem -> sections -> head, and check the cut is faithful.

The teacher is run section by section rather than with forward hooks: hooks miss
functional code between modules (an inline ReLU, a flatten before the head).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .errors import NonFiniteOutputError, RecipeError, SectionsMismatchError
from .recipe import ModuleRef, Recipe
from .runtime.eval_mode import evaluating

__all__ = ["SectionedModel", "cut_sections", "check_sections", "SplitModel", "split_model", "check_split"]


class SectionedModel(nn.Module):
    """A model as stem, sections and head; ``forward`` runs them in order."""

    def __init__(self, stem: nn.Module, sections: Sequence[nn.Module], head: nn.Module) -> None:
        super().__init__()
        self.stem = stem
        self.sections = nn.ModuleList(sections)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.run_sections(self.stem(x))[-1])

    def run_sections(self, z: torch.Tensor, start: int = 0) -> list[torch.Tensor]:
        """Outputs of sections ``start..`` given the input of section ``start``."""
        outputs = []
        for section in self.sections[start:]:
            z = section(z)
            outputs.append(z)
        return outputs

    def boundaries(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """[stem output, each section's output] and the logits."""
        z0 = self.stem(x)
        outs = [z0, *self.run_sections(z0)]
        return outs, self.head(outs[-1])


def _module_names(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_modules() if name]


def _resolve(model: nn.Module, ref: ModuleRef, role: str) -> nn.Module:
    if isinstance(ref, str):
        try:
            return model.get_submodule(ref)
        except AttributeError:
            names = _module_names(model)
            shown = ", ".join(n for n in names if "." not in n) or "(none)"
            raise RecipeError(
                f"The recipe's {role} names module {ref!r}, which {type(model).__name__} does not have. "
                f"Top-level modules: {shown}."
            ) from None
    if callable(ref) and not isinstance(ref, nn.Module):
        module = ref(model)
        if not isinstance(module, nn.Module):
            raise RecipeError(f"Expected the recipe's {role} callable to return an nn.Module, got "
                              f"{type(module).__name__} instead.")
        return module
    if isinstance(ref, (list, tuple)) and ref and all(isinstance(r, str) for r in ref):
        return nn.Sequential(*(_resolve(model, r, role) for r in ref))
    raise RecipeError(f"Expected the recipe's {role} to be a module name, a list of names or a callable, got "
                      f"{ref!r} instead.")


def cut_sections(model: nn.Module, recipe: Recipe) -> SectionedModel:
    """Cut ``model`` (teacher or student) where the recipe says. Shares parameters with ``model``."""
    stem = _resolve(model, recipe.stem, "stem")
    sections = [_resolve(model, ref, f"section {i + 1}") for i, ref in enumerate(recipe.sections)]
    head = _resolve(model, recipe.head, "head")
    return SectionedModel(stem, sections, head)


@torch.inference_mode()
def check_sections(model: nn.Module, sectioned: SectionedModel, probe: torch.Tensor, rtol: float = 1e-4,
                   atol: float = 1e-5) -> float:
    """Refuse sections whose stem -> sections -> head differs from ``model(probe)``; return the max difference."""
    with evaluating(model):
        expected = model(probe)
        bad = ~torch.isfinite(expected.float()).flatten(1).all(1)
        if bad.any():
            raise NonFiniteOutputError(
                f"The teacher's own output holds NaN or Inf at row {bad.nonzero().flatten().tolist()[:5]} of the "
                "section-check probe (the first rows of the dataset split); nothing was extracted. Check the teacher "
                "checkpoint and the data."
            )
        try:
            got = sectioned(probe)
        except RuntimeError as exc:
            raise SectionsMismatchError(
                f"stem -> sections -> head cannot run on a probe batch: {str(exc).splitlines()[0]}. "
                "Check the order and names of the recipe's stem, sections and head."
            ) from None
    if got.shape != expected.shape:
        raise SectionsMismatchError(
            f"Expected stem -> sections -> head to give the model's output shape {tuple(expected.shape)}, "
            f"got {tuple(got.shape)} instead. Check the recipe's stem, sections and head."
        )
    diff = (got.float() - expected.float()).abs().max().item()
    if not torch.allclose(got.float(), expected.float(), rtol=rtol, atol=atol):
        raise SectionsMismatchError(
            f"stem -> sections -> head does not reproduce the model's output on a probe batch: "
            f"max abs difference {diff:.3g} (allowed rtol={rtol}, atol={atol}). "
            "The cut probably skips code the model runs between modules; use a callable for that piece."
        )
    return diff


# The names of earlier releases, before "split" came to mean only a dataset split (still exported by
# ``litcache``; see CHANGELOG.md).
SplitModel = SectionedModel
split_model = cut_sections
check_split = check_sections
