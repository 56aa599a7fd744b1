"""``litcache export``: a trained student (or teacher) of a Hugging Face recipe, written back as an ordinary
HF model directory that ``AutoModelForCausalLM.from_pretrained`` loads (no litcache needed to serve it).

The directory is the model's HF model as ``save_pretrained`` writes it (its config already has the
student's ``num_hidden_layers`` and per-layer lists; its layers are numbered 0..n-1), the teacher's
tokenizer files, and ``litcache_export.json`` (where it came from). Before the directory takes its
name, it is loaded back with ``from_pretrained`` and checked: no missing or unexpected weights, and
the same logits as litcache's student within float32 tolerance.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from .errors import CheckpointError, OptionError
from .extraction.teacher import load_teacher
from .models.hf import HFCausalLM, copy_tokenizer, require_transformers
from .recipe import Recipe
from .store.manifest import utc_now
from .training.student import load_student, read_student

__all__ = ["export_student", "export_teacher", "LOGITS_TOLERANCE"]

#: The largest difference between the exported model's logits and litcache's student that passes.
LOGITS_TOLERANCE = 1e-4


def export_student(recipe: Recipe, student_checkpoint: str | Path, out: str | Path, overwrite: bool = False,
                   probe_tokens: int = 32) -> dict:
    """Write the student of ``student_checkpoint`` as an HF model directory ``out``; returns a report
    (layers, parameters, the logits check). Nothing is left at ``out`` unless the check passed."""
    obj = read_student(student_checkpoint)
    model = load_student(student_checkpoint, recipe)
    source = {"student": obj["student"], "checkpoint": str(student_checkpoint), "mode": obj.get("mode"),
              "store": obj.get("store", {})}
    return _export(recipe, model, f"student {obj['student']!r}", source, out, overwrite, probe_tokens)


def export_teacher(recipe: Recipe, teacher_checkpoint: str | Path, out: str | Path, overwrite: bool = False,
                   probe_tokens: int = 32) -> dict:
    """Write the teacher of ``teacher_checkpoint`` (what ``litcache train-teacher`` wrote) as an HF model
    directory ``out``, checked as ``export_student`` checks a student."""
    model, weights, path = load_teacher(recipe, teacher_checkpoint)
    source = {"student": None, "teacher": True, "checkpoint": path, "weights_hash": weights}
    return _export(recipe, model, "teacher", source, out, overwrite, probe_tokens)


def _export(recipe: Recipe, model, what: str, source: dict, out: str | Path, overwrite: bool,
            probe_tokens: int) -> dict:
    transformers = require_transformers()
    if not isinstance(model, HFCausalLM):
        raise OptionError(f"litcache export writes Hugging Face models, but recipe {recipe.name!r} builds its {what} "
                          f"as a {type(model).__name__}. Export from a Hugging Face recipe "
                          "(pipelines/hf_causal_lm.py); other models load with litcache.load_student.")
    out = Path(out)
    if out.exists() and not (overwrite and out.is_dir()):
        raise OptionError(f"{str(out)!r} already exists. Give a new --out, or --overwrite to replace that directory.")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        model.hf.save_pretrained(partial, safe_serialization=True)
        tokenizer = copy_tokenizer(model.source, partial) if model.source else []
        report = {
            "out": str(out), "recipe": recipe.name, **source,
            "model_type": model.config.model_type, "architectures": list(model.config.architectures or []),
            "num_hidden_layers": model.config.num_hidden_layers, "section_layers": list(model.section_layers),
            "parameters": sum(p.numel() for p in model.hf.parameters()), "tokenizer_files": tokenizer,
            "exported": utc_now(),
        }
        report.update(_check(transformers, model, partial, probe_tokens))
        (partial / "litcache_export.json").write_text(json.dumps(report, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        partial.rename(out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return report


def _check(transformers, model: HFCausalLM, folder: Path, probe_tokens: int) -> dict:
    """Load ``folder`` with from_pretrained and compare its logits with the student's on a probe batch."""
    loaded, info = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32,
                                                                     output_loading_info=True)
    missing, unexpected = sorted(info.get("missing_keys", [])), sorted(info.get("unexpected_keys", []))
    if missing or unexpected:
        raise CheckpointError(f"The exported model does not load whole with from_pretrained: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}. Nothing was written.")
    generator = torch.Generator().manual_seed(0)
    context = min(probe_tokens, getattr(model.config, "max_position_embeddings", probe_tokens))
    ids = torch.randint(0, model.config.vocab_size, (2, context), generator=generator)
    model.eval()
    loaded.eval()
    with torch.no_grad():
        ours, theirs = model(ids), loaded(input_ids=ids).logits
    difference = float((ours - theirs).abs().max())
    if not difference <= LOGITS_TOLERANCE:
        raise CheckpointError(f"The exported model's logits differ from litcache's student by {difference:.3g} (more "
                              f"than {LOGITS_TOLERANCE}). Nothing was written.")
    return {"missing_keys": missing, "unexpected_keys": unexpected, "max_logit_difference": difference}
