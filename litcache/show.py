"""`litcache show`: what a recipe offers (students, splits, sections) and the defaults it trains with."""

from __future__ import annotations

import json
from dataclasses import asdict, fields

import torch.nn as nn

from .errors import RecipeError
from .extraction.plan import ExtractOptions
from .recipe import ModuleRef, Recipe, TrainConfig
from .sections import cut_sections

__all__ = ["show_recipe", "format_recipe"]

#: ExtractOptions fields shown: what a store holds when no flag says otherwise (recipes do not set them).
_EXTRACT_FIELDS = ("views", "dtype", "codec", "chunk_rows", "seed", "shuffle")


def _ref_text(ref: ModuleRef) -> str | list[str]:
    if isinstance(ref, str):
        return ref
    if callable(ref):
        return f"<{getattr(ref, '__name__', type(ref).__name__)}>"
    return list(ref)


def _blocks(module: nn.Module) -> int:
    """Blocks in a section: its children (a Sequential of residual blocks), or 1 for a single module."""
    return len(list(module.children())) or 1


def _student(recipe: Recipe, name: str) -> dict:

    model = recipe.student_builder(name)()
    try:
        sectioned = cut_sections(model, recipe)  # also checks that the recipe's module names fit this student
    except RecipeError as exc:  # e.g. a transformer student too shallow for the recipe's section count
        return {"name": name, "params": sum(p.numel() for p in model.parameters()), "unsplittable": str(exc)}
    return {"name": name, "params": sum(p.numel() for p in model.parameters()),
            "blocks_per_section": [_blocks(s) for s in sectioned.sections]}


def _train_config(config: TrainConfig) -> dict:
    return {f.name: (list(v) if isinstance(v := getattr(config, f.name), tuple) else v) for f in fields(config)}


def show_recipe(recipe: Recipe, build: bool = True) -> dict:
    """A JSON-able description of ``recipe``. With ``build``, every student and the teacher are built
    (on the CPU, no data loaded) to count their parameters and blocks per section."""
    d = recipe.distill
    teacher = None
    if build:

        model = recipe.build_teacher()
        teacher = {"params": sum(p.numel() for p in model.parameters()),
                   "blocks_per_section": [_blocks(s) for s in cut_sections(model, recipe).sections]}
    return {
        "name": recipe.name,
        "source": recipe.source,
        "description": recipe.description,
        "task": recipe.task,
        "num_classes": recipe.num_classes,
        "splits": [{"name": s, "augmented": recipe.augmentation_for(s) is not None} for s in recipe.splits],
        "augment": recipe.augment.describe() if recipe.augment is not None else None,
        "stem": _ref_text(recipe.stem),
        "sections": [_ref_text(s) for s in recipe.sections],
        "head": _ref_text(recipe.head),
        # The store holds the stem's output and each section's: one boundary more than sections.
        "boundaries": len(recipe.sections) + 1,
        "teacher": {"checkpoint": recipe.teacher_checkpoint, **(teacher or {})},
        "students": [_student(recipe, n) if build else {"name": n} for n in recipe.students],
        "precision": recipe.precision,
        "student_init": recipe.student_init,
        "extract_defaults": {**{k: getattr(ExtractOptions(), k) for k in _EXTRACT_FIELDS}, "views": recipe.views},
        "teacher_training": _train_config(recipe.teacher_training),
        "distill": {"lit": _train_config(d.lit), "finetune": _train_config(d.finetune),
                    **{k: v for k, v in asdict(d).items() if k not in ("lit", "finetune")}},
    }


def _counts(entry: dict) -> str:
    if "params" not in entry:
        return ""
    if "unsplittable" in entry:
        return f"  ({entry['params']:,} params; cannot be cut with these sections: {entry['unsplittable']})"
    return f"  ({entry['params']:,} params, blocks per section {entry['blocks_per_section']})"


def _config_text(config: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in config.items())


def format_recipe(info: dict) -> list[str]:
    """The lines `litcache show` prints for a :func:`show_recipe` result."""
    distill = info["distill"]
    splits = ", ".join(s["name"] + (" (augmented)" if s["augmented"] else "") for s in info["splits"])
    rows = [
        ("recipe", f"{info['name']}  ({info['source']})" + (f"  {info['description']}" if info["description"] else "")),
        ("task", f"{info['task']}, " + (f"vocabulary {info['num_classes']}" if info["task"] == "language_model"
                                        else f"{info['num_classes']} classes")),
        ("splits", splits),
        ("views", json.dumps(info["augment"]) if info["augment"] else "no augmentation"),
        ("sections", f"stem {info['stem']} -> " + " -> ".join(map(str, info["sections"])) + f" -> head {info['head']}"
                     f"  ({info['boundaries']} stored boundaries)"),
        ("teacher", f"checkpoint {info['teacher']['checkpoint'] or '- (give --teacher)'}{_counts(info['teacher'])}"),
        *((("students" if i == 0 else ""), f"{s['name']}{_counts(s)}") for i, s in enumerate(info["students"])),
        ("precision", info["precision"]),
        ("extract", f"{_config_text(info['extract_defaults'])}  (litcache extract's defaults)"),
        ("train-teacher", _config_text(info["teacher_training"])),
        ("lit phase", _config_text(distill["lit"])),
        ("finetune", _config_text(distill["finetune"])),
        ("distill",
         ", ".join(f"{k} {distill[k]}" for k in ("alpha", "tau", "beta", "loss_scale", "ir_loss", "ir_feature_axis"))
         + f"; students start from {info['student_init']}"),
    ]
    return [f"{label:<14}{text}" for label, text in rows]
