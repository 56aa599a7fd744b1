"""Students: built from the recipe with the teacher's frozen stem and head, saved standalone,
loaded back as plain modules, and assembled from sections trained separately."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch.nn as nn

from ..errors import CheckpointError, OptionError, RecipeError
from ..recipe import Recipe, load_recipe
from ..runtime.checkpoint import load_checkpoint, save_atomic
from ..sections import SectionedModel, cut_sections
from .outputs import check_output, claim_output

__all__ = ["STUDENT_KIND", "build_student", "adopt_teacher_parts", "adopt_teacher_blocks", "block_picks",
           "save_student", "read_student", "load_student", "assemble"]

STUDENT_KIND = "litcache-student"
STUDENT_FORMAT_VERSION = 1


def build_student(recipe: Recipe, name: str, stem_state: dict | None = None,
                  head_state: dict | None = None) -> tuple[nn.Module, SectionedModel]:
    """The recipe's student ``name``, cut into sections; with the teacher's stem and head weights copied in if given."""
    model = recipe.student_builder(name)()
    sectioned = cut_sections(model, recipe)
    if stem_state is not None and head_state is not None:
        adopt_teacher_parts(sectioned, name, stem_state, head_state)
    return model, sectioned


def adopt_teacher_parts(sectioned: SectionedModel, name: str, stem_state: dict, head_state: dict) -> None:
    """Copy the teacher's stem and head into a student (LIT students share them, frozen)."""
    for part, module, state in (("stem", sectioned.stem, stem_state), ("head", sectioned.head, head_state)):
        try:
            module.load_state_dict(state)
        except RuntimeError as exc:
            raise RecipeError(
                f"Student {name!r} cannot take the teacher's {part}: LIT students share the teacher's stem and head, "
                f"but they differ ({str(exc).splitlines()[0]})."
            ) from None


def block_picks(teacher_blocks: int, student_blocks: int) -> list[int]:
    """Evenly spaced teacher blocks for a student section of ``student_blocks``, the first one first:
    2 -> 1 picks [0], 4 -> 2 picks [0, 2] (every other block, as DistilBERT initialises its layers)."""
    return [j * teacher_blocks // student_blocks for j in range(student_blocks)]


def _teacher_blocks(state: dict, section: int, name: str) -> int:
    """Blocks in a stored teacher section: an ``nn.Sequential``'s state keys start with the block's position."""
    heads = {key.split(".", 1)[0] for key in state}
    if not heads or not all(h.isdigit() for h in heads):
        raise RecipeError("--student-init teacher-blocks copies blocks of the teacher's sections, but its section "
                          f"{section} is not a run of blocks (an nn.Sequential). Use --student-init scratch for "
                          f"student {name!r}.")
    return max(int(h) for h in heads) + 1


def adopt_teacher_blocks(sectioned: SectionedModel, name: str, section_states: list[dict],
                         teacher_layers: Sequence[int] | None = None) -> list[list[int]]:
    """Start each student section from evenly spaced blocks of the teacher's section (``--student-init
    teacher-blocks``), or from the ``teacher_layers`` given (numbered across the whole teacher, one per
    student block, each within its section's teacher blocks). Sections must be runs of blocks
    (``nn.Sequential``), the student's no longer than the teacher's and of the same block shape.
    Returns the teacher blocks picked per section, numbered across the whole teacher (0 = its first block)."""
    given = _split_teacher_layers(sectioned, name, section_states, teacher_layers) if teacher_layers else None
    picked, offset = [], 0
    for i, (section, state) in enumerate(zip(sectioned.sections, section_states), start=1):
        teacher_blocks = _teacher_blocks(state, i, name)
        if not isinstance(section, nn.Sequential) or not 1 <= len(section) <= teacher_blocks:
            raise RecipeError(
                f"--student-init teacher-blocks copies teacher blocks into student {name!r}, whose section {i} must "
                f"then be a run of at most {teacher_blocks} blocks (an nn.Sequential, e.g. zoo.block_group), but it is "
                f"a {type(section).__name__}{f' of {len(section)}' if isinstance(section, nn.Sequential) else ''}. "
                "Use --student-init scratch.")
        picks = given[i - 1] if given else block_picks(teacher_blocks, len(section))
        for block, pick in zip(section, picks):
            prefix = f"{pick}."
            try:
                block.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
            except RuntimeError as exc:
                raise RecipeError(f"Student {name!r} section {i} cannot take teacher block {pick}: the blocks differ "
                                  f"({str(exc).splitlines()[0]}). Use --student-init scratch.") from None
        picked.append([offset + p for p in picks])
        offset += teacher_blocks
    return picked


def _split_teacher_layers(sectioned: SectionedModel, name: str, section_states: list[dict],
                          teacher_layers: Sequence[int]) -> list[list[int]]:
    """--teacher-layers (across the teacher) as each section's picks (within it)."""
    sizes = [len(s) if isinstance(s, nn.Sequential) else 1 for s in sectioned.sections]
    if len(teacher_layers) != sum(sizes):
        raise RecipeError(f"Expected --teacher-layers to name {sum(sizes)} teacher blocks, one per block of student "
                          f"{name!r} ({sizes} per section), got {len(teacher_layers)}: {list(teacher_layers)}.")
    given, offset, at = [], 0, 0
    for i, (size, state) in enumerate(zip(sizes, section_states), start=1):
        teacher_blocks = _teacher_blocks(state, i, name)
        picks = list(teacher_layers[at:at + size])
        outside = [p for p in picks if not offset <= p < offset + teacher_blocks]
        if outside:
            raise RecipeError(f"--teacher-layers gives student {name!r} section {i} teacher blocks {outside}, but that "
                              f"section replaces teacher blocks {offset}..{offset + teacher_blocks - 1}.")
        given.append([p - offset for p in picks])
        offset, at = offset + teacher_blocks, at + size
    return given


def save_student(path: str | Path, model: nn.Module, *, recipe: Recipe, student: str, mode: str,
                 sections_trained: Sequence[int], store: dict, config: dict, history: list, epoch: int,
                 optimizer: dict | None = None, extra: dict | None = None) -> None:
    """A standalone student checkpoint; with ``optimizer`` it is also a resume point (``extra``:
    more resume state, such as an fp16 run's gradient scaler)."""
    obj = {
        "kind": STUDENT_KIND,
        "format_version": STUDENT_FORMAT_VERSION,
        "recipe": recipe.name,
        "recipe_source": recipe.source,
        "recipe_hash": recipe.source_hash,
        "student": student,
        "mode": mode,
        "sections_trained": sorted(sections_trained),
        "store": store,
        "config": config,
        "history": history,
        "epoch": epoch,
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},  # any memory format
    }
    if optimizer is not None:
        obj["optimizer"] = optimizer
    obj.update(extra or {})
    save_atomic(obj, path)


def read_student(path: str | Path) -> dict:
    obj = load_checkpoint(path)
    if obj.get("kind") != STUDENT_KIND:
        raise CheckpointError(f"Expected a litcache student checkpoint at {str(path)!r}, found another "
                              "kind of checkpoint.")
    if obj.get("format_version") != STUDENT_FORMAT_VERSION:
        raise CheckpointError(f"Student checkpoint {str(path)!r} has format version {obj.get('format_version')!r}; "
                              f"this litcache reads version {STUDENT_FORMAT_VERSION}.")
    return obj


def load_student(path: str | Path, recipe: Recipe | None = None) -> nn.Module:
    """The trained student as a ``torch.nn.Module`` in eval mode; no store needed.

    The architecture comes from the recipe recorded in the checkpoint (or the one given).
    """
    obj = read_student(path)
    recipe = recipe or load_recipe(obj["recipe_source"])
    if recipe.name != obj["recipe"]:
        raise CheckpointError(f"Student checkpoint {str(path)!r} belongs to recipe {obj['recipe']!r}, "
                              f"not {recipe.name!r}.")
    model = recipe.student_builder(obj["student"])()
    try:
        model.load_state_dict(obj["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"Student checkpoint {str(path)!r} does not fit student {obj['student']!r}: "
                              f"{str(exc).splitlines()[0]}") from None
    return model.eval()


def assemble(paths: Sequence[str | Path], out: str | Path, recipe: Recipe | None = None) -> dict:
    """Join sections trained separately (``--mode ir --block I``) into one student checkpoint."""
    for path in paths:  # before reading anything: writing the result over a part would lose that part
        if _same_file(path, out):
            raise OptionError(f"Expected --out to be a new checkpoint, but {str(out)!r} is one of the parts to "
                              "assemble: the assembled student would replace that part. Choose another --out.")
    check_output(out, folder=False)
    parts = [(Path(p), read_student(p)) for p in paths]
    first = parts[0][1]
    for path, obj in parts[1:]:
        for key in ("recipe", "student"):
            if obj[key] != first[key]:
                raise CheckpointError(f"Cannot assemble: {str(path)!r} has {key} {obj[key]!r}, {str(parts[0][0])!r} "
                                      f"has {first[key]!r}.")
        if obj["store"].get("identity") != first["store"].get("identity"):
            raise CheckpointError(f"Cannot assemble: {str(path)!r} was trained from another store than "
                                  f"{str(parts[0][0])!r}.")
    recipe = recipe or load_recipe(first["recipe_source"])
    owner: dict[int, Path] = {}
    for path, obj in parts:
        for i in obj["sections_trained"]:
            if i in owner:
                raise CheckpointError(f"Cannot assemble: section {i} is trained in both {str(owner[i])!r} "
                                      f"and {str(path)!r}.")
            owner[i] = path
    wanted = set(range(1, len(recipe.sections) + 1))
    if set(owner) != wanted:
        raise CheckpointError(f"Cannot assemble: sections {sorted(wanted - set(owner))} are not trained in any of the "
                              "given checkpoints.")

    model = recipe.student_builder(first["student"])()
    model.load_state_dict(first["state_dict"])  # stem and head: the teacher's, identical in every part
    sectioned = cut_sections(model, recipe)
    by_path = {path: obj for path, obj in parts}
    for i, path in owner.items():
        donor = recipe.student_builder(first["student"])()
        donor.load_state_dict(by_path[path]["state_dict"])
        sectioned.sections[i - 1].load_state_dict(cut_sections(donor, recipe).sections[i - 1].state_dict())
    history = {str(p): obj["history"] for p, obj in parts}
    with claim_output(out, folder=False):
        save_student(out, model, recipe=recipe, student=first["student"], mode="ir-assembled",
                     sections_trained=sorted(owner), store=first["store"], config=first["config"], history=[history],
                     epoch=max(o["epoch"] for _, o in parts))
    return {"checkpoint": str(out), "sections": {i: str(p) for i, p in sorted(owner.items())}}


def _same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name one file (one that exists, through any link, or the same path)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)
