"""A block library's candidates: per section, the depths to try, and how each one comes to be.

A candidate is one section at one depth, named ``s2-d3`` (section 2 with 3 blocks). Each is section I
of a *carrier* student, the mix with D blocks there and one block in every other section, whose other
sections are never used:

- ``trained``: D blocks trained alone from the store (``--mode ir --block I``), IR-only;
- ``teacher``: the teacher's own section (D = the teacher's blocks), copied, nothing trained;
- ``linear-map``: 0 blocks where the family's empty section holds weights (a CIFAR ResNet stage:
  ``PointwiseMap``, a 1x1 convolution), fitted by least squares on stored boundaries;
- ``skip``: 0 blocks where the empty section has no weights (a decoder's residual stream passes on).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn as nn
import xxhash

from ..baselines import StoredBoundaries
from ..errors import OptionError, RecipeError
from ..models.resnet import PointwiseMap
from ..recipe import Recipe, mix_name
from ..sections import cut_sections
from ..store.arrays import Store

__all__ = ["KINDS", "Candidate", "teacher_depths", "parse_depths", "plan_candidates", "candidate_key",
           "candidate_section", "fit_pointwise_map"]

KINDS = ("trained", "teacher", "linear-map", "skip")


@dataclass(frozen=True)
class Candidate:
    section: int  # from 1
    depth: int
    kind: str

    @property
    def name(self) -> str:
        return f"s{self.section}-d{self.depth}"

    def carrier(self, sections: int) -> str:
        """The student whose section ``self.section`` this candidate is: D blocks there, 1 elsewhere."""
        return mix_name([self.depth if i == self.section else 1 for i in range(1, sections + 1)])


def _blocks(section: nn.Module) -> int | None:
    return len(section) if isinstance(section, nn.Sequential) else None


def teacher_depths(recipe: Recipe) -> list[int]:
    """Blocks in each of the teacher's sections (its architecture only; no weights are read)."""
    counts = [_blocks(s) for s in cut_sections(recipe.build_teacher(), recipe).sections]
    if any(c is None for c in counts):
        raise RecipeError(f"Expected recipe {recipe.name!r}'s teacher sections to be runs of blocks (nn.Sequential), "
                          "so that a library can give each section fewer of them.")
    return counts


def parse_depths(specs: Sequence[str], sections: int) -> dict[int, list[int]]:
    """``--depths`` values: "1,2,3" for every section, "2:1,3" for section 2 (later values win)."""
    chosen: dict[int, list[int]] = {}
    for spec in specs:
        where, _, values = spec.rpartition(":")
        try:
            depths = sorted({int(v) for v in values.split(",")})
            targets = [int(where)] if where else list(range(1, sections + 1))
        except ValueError:
            raise OptionError(f"Expected --depths like '1,2,3' (every section) or '2:1,3' (section 2), got {spec!r}.") \
                from None
        for section in targets:
            if not 1 <= section <= sections:
                raise OptionError(f"--depths {spec!r} names section {section}, but the recipe has sections 1 to "
                                  f"{sections}.")
            chosen[section] = depths
    return chosen


def _free_kind(recipe: Recipe, section: int, sections: int) -> str | None:
    """What the family's section of 0 blocks is at ``section``: a fitted map, a skip, or None if it has none."""
    try:
        carrier = recipe.student_builder(mix_name([0 if i == section else 1 for i in range(1, sections + 1)]))()
    except (RecipeError, ValueError, TypeError, RuntimeError):  # the family builds no section of 0 blocks there
        return None
    module = cut_sections(carrier, recipe).sections[section - 1]
    if not any(True for _ in module.parameters()):
        return "skip"
    return "linear-map" if any(isinstance(m, PointwiseMap) for m in module.modules()) else None


def plan_candidates(recipe: Recipe, depths: Mapping[int, Sequence[int]] | None = None) -> list[Candidate]:
    """Each section's candidates: the ``depths`` given for it, else the depths of the recipe's students
    there, the teacher's own depth and 0 where the family has a training-free section."""
    if recipe.student_depths is None:
        raise OptionError(f"Recipe {recipe.name!r} cannot build students of mixed depths (Recipe.student_depths is not "
                          "set), which a block library needs to assemble its candidates.")
    teacher = teacher_depths(recipe)
    sections = len(teacher)
    depths = depths or {}
    defaults: dict[int, set[int]] = {i: {teacher[i - 1]} for i in range(1, sections + 1)}
    for name in recipe.students:
        for i, module in enumerate(cut_sections(recipe.student_builder(name)(), recipe).sections, start=1):
            if _blocks(module) is not None and 1 <= _blocks(module) <= teacher[i - 1]:
                defaults[i].add(_blocks(module))
    planned = []
    for i in range(1, sections + 1):
        free = _free_kind(recipe, i, sections)
        wanted = set(depths[i]) if i in depths else defaults[i] | ({0} if free else set())
        for d in sorted(wanted):
            if d > teacher[i - 1] or d < 0:
                raise OptionError(f"Expected depths of section {i} between 0 and its teacher's {teacher[i - 1]} "
                                  f"blocks, got {d}.")
            if d == 0 and free is None:
                raise OptionError(f"Section {i} has no training-free candidate of 0 blocks in recipe {recipe.name!r} "
                                  "(its family builds none there). Leave 0 out of --depths for it.")
            kind = free if d == 0 else "teacher" if d == teacher[i - 1] else "trained"
            planned.append(Candidate(i, d, kind))
    return planned


def candidate_key(candidate: Candidate, store_identity: Mapping, config: Mapping | None, fit_rows: int) -> str:
    """What a candidate's result depends on, hashed: its section and depth, the store, and its training
    config (trained) or the rows its map was fitted on (linear-map). The candidate's folder carries it,
    so a changed config or store trains a new candidate beside the old one and never over it."""
    what = {"candidate": candidate.name, "kind": candidate.kind, "store": dict(store_identity),
            "config": dict(config) if config is not None else None,
            "fit_rows": fit_rows if candidate.kind == "linear-map" else None}
    return xxhash.xxh3_64_hexdigest(json.dumps(what, sort_keys=True, default=str).encode())[:12]


def candidate_section(recipe: Recipe, saved: dict, section: int) -> nn.Module:
    """Section ``section`` (from 1) of a saved student checkpoint (a carrier's), in eval mode."""
    model = recipe.student_builder(saved["student"])()
    model.load_state_dict(saved["state_dict"])
    return cut_sections(model, recipe).sections[section - 1].eval()


@torch.inference_mode()
def fit_pointwise_map(module: nn.Module, store: Store, section: int, rows: int, batch_size: int = 64) -> dict:
    """Fit the ``PointwiseMap`` of a 0-block section by least squares, ``min ||W x + b - y||^2`` over every
    (strided) pixel of ``rows`` stored rows, x the section's stored input and y its stored output.
    ``[x 1]^T [x 1]`` and ``[x 1]^T y`` accumulate in float64, so the fit streams over the store."""
    [pointwise] = [m for m in module.modules() if isinstance(m, PointwiseMap)]
    conv = pointwise.conv
    stride = pointwise.stride
    batches = StoredBoundaries(store, section - 1, rows, batch_size)
    gram = cross = None
    for x, y, _ in batches:
        x, y = x.double()[:, :, ::stride, ::stride], y.double()
        x = torch.cat([x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]), torch.ones(x.numel() // x.shape[1], 1,
                                                                                    dtype=torch.float64)], 1)
        y = y.permute(0, 2, 3, 1).reshape(-1, y.shape[1])
        gram = x.T @ x if gram is None else gram + x.T @ x
        cross = x.T @ y if cross is None else cross + x.T @ y
    solution = torch.linalg.lstsq(gram, cross).solution  # minimum norm where a channel is constant
    conv.weight.copy_(solution[:-1].T.reshape(conv.weight.shape).float())
    conv.bias.copy_(solution[-1].float())
    return {"fit_rows": batches.rows}

