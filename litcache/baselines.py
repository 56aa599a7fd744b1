"""``litcache baseline``: students made from the store without training, the baselines a depth-compressed
student is compared with. Neither runs the teacher's forward: both read stored boundaries.

- ``layer-drop`` (ShortGPT-style): each student section keeps as many of its teacher section's layers
  as the student has there; which ones is chosen by the boundary error on stored rows, over every
  subset of the section's layers in their order (a section of t layers kept to s tries C(t, s)).
- ``linear-map`` (ReplaceMe-style): the layers layer-drop keeps, then a least-squares linear map T
  fitted in closed form so that the section's last kept layer, with its MLP output m multiplied by T,
  reproduces the teacher section's output: ``min_T sum ||a + m T - y||^2`` over every valid token of
  the store, where ``a`` is that layer's residual stream before its MLP. ``m^T m`` and ``m^T (y - a)``
  are accumulated in float64 batch by batch, so the fit streams over a store larger than memory.
  T is then merged into the MLP's output projection (``down_proj``: W <- T^T W; GPT-2's ``c_proj``:
  W <- W T, b <- b T), so the student is again a plain model of the HF class and exports as one.
  A section of no layers at all (a bare linear map of the residual stream) could not be merged: a
  decoder layer's output is its input plus nonlinear terms, never a linear map of it, so litcache's
  students keep at least one layer per section.

The result is a student checkpoint (mode ``layer-drop`` or ``linear-map``) that ``evaluate`` and
``export`` take like any other, with the choices and errors in its config.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from .errors import OptionError, RecipeError, StoreMismatchError
from .models.hf import DecoderSection, merge_into_mlp_output, mlp_output_module
from .recipe import Recipe
from .store.arrays import Store, open_store
from .store.layout import token_mask
from .training.blocks import check_student_fits, teacher_section_states
from .training.dataset import StoreDataset
from .training.outputs import claim_output
from .training.student import adopt_teacher_parts, build_student, save_student

__all__ = ["METHODS", "make_baseline", "choose_layers", "fit_linear_map", "StoredBoundaries"]

METHODS = ("layer-drop", "linear-map")


class StoredBoundaries:
    """Batches of (section input, section output, valid-token mask) read from a store, for one section."""

    def __init__(self, store: Store, section: int, rows: int, batch_size: int = 64) -> None:
        self.store, self.section, self.batch_size = store, section, batch_size
        self.rows = min(rows, store.rows) if rows > 0 else store.rows
        names = store.boundary_names
        self.fields = [names[section], names[section + 1]] + (["lengths"] if "lengths" in store.manifest.arrays else [])
        self.dataset = StoreDataset(store, self.fields)

    def __iter__(self):
        for start in range(0, self.rows, self.batch_size):
            batch = self.dataset.__getitems__(range(start, min(start + self.batch_size, self.rows)))
            x, y = batch[self.fields[0]].float(), batch[self.fields[1]].float()
            if "lengths" in batch:
                mask = token_mask(batch["lengths"], x.shape[1])
            else:
                mask = torch.ones(x.shape[:1] + ((x.shape[1],) if x.dim() == 3 else ()), dtype=torch.bool)
            yield x, y, mask


@torch.inference_mode()
def _boundary_error(section: nn.Module, batches: StoredBoundaries) -> tuple[float, float]:
    """(mean squared error of ``section`` against the stored outputs per valid value, the same divided by
    the stored outputs' mean square: 0 is exact, 1 as far off as predicting zeros)."""
    error = energy = 0.0
    count = 0
    for x, y, mask in batches:
        squared = ((section(x).float() - y) ** 2)[mask]
        error += float(squared.sum())
        energy += float((y ** 2)[mask].sum())
        count += squared.numel()
    return error / max(count, 1), error / max(energy, 1e-30)


def _load_blocks(section: nn.Sequential, state: dict, picks: tuple[int, ...]) -> None:
    """Put teacher blocks ``picks`` (of the section's stored state, keys ``j.``) into ``section``'s blocks."""
    for block, pick in zip(section, picks):
        prefix = f"{pick}."
        block.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})


def choose_layers(section: nn.Sequential, teacher_state: dict, teacher_layers: int,
                  batches: StoredBoundaries) -> tuple[tuple[int, ...], dict]:
    """Load into ``section`` the subset of the teacher section's layers (in order) whose output is
    closest to the stored one; returns (the picks, every candidate's errors)."""
    candidates = {}
    for picks in itertools.combinations(range(teacher_layers), len(section)):
        try:
            _load_blocks(section, teacher_state, picks)
            mse, normalised = _boundary_error(section, batches)
        except RuntimeError:  # these blocks do not chain (a CNN block that changes the shape left out)
            mse = normalised = math.inf
        candidates[picks] = {"mse": mse, "normalised": normalised}
    best = min(candidates, key=lambda p: candidates[p]["mse"])
    _load_blocks(section, teacher_state, best)
    return best, {",".join(map(str, p)): e for p, e in candidates.items()}


@torch.inference_mode()
def fit_linear_map(section: DecoderSection, batches: StoredBoundaries) -> torch.Tensor:
    """The least-squares T (width x width, float64) of ``min ||a + m T - y||^2`` over the valid tokens, for
    the last layer of ``section`` (``a``: its stream before the MLP, ``m``: its MLP's output)."""
    captured = {}
    hook = mlp_output_module(section[-1]).register_forward_hook(lambda module, i, o: captured.update(m=o))
    gram = cross = None
    try:
        for x, y, mask in batches:
            out = section(x)
            m = captured["m"]
            # The layer's output is a + m (its last residual add): a = out - m.
            a = out - m
            m, target = m[mask].double(), (y - a)[mask].double()  # (valid tokens, width)
            gram = m.T @ m if gram is None else gram + m.T @ m
            cross = m.T @ target if cross is None else cross + m.T @ target
    finally:
        hook.remove()
    if gram is None:
        raise StoreMismatchError("Expected stored rows to fit the linear map on, found none.")
    try:
        return torch.linalg.solve(gram, cross)
    except RuntimeError:  # singular (too few tokens, or a dead MLP unit): the minimum-norm solution
        return torch.linalg.lstsq(gram, cross).solution


def make_baseline(recipe: Recipe, store_path: str | Path, student: str, method: str, out_dir: str | Path,
                  rows: int = 1024, log: Callable[[str], None] = print) -> dict:
    """Write ``OUT/STUDENT/student.pt``, the training-free student of ``method``; returns its report."""
    if method not in METHODS:
        raise OptionError(f"Expected a baseline method in {', '.join(METHODS)}, got {method!r} instead.")
    store = open_store(store_path)
    if store.manifest.identity.recipe != recipe.name:
        raise StoreMismatchError(f"Store {str(store.path)!r} was extracted for recipe "
                                 f"{store.manifest.identity.recipe!r}, not {recipe.name!r}.")
    out = Path(out_dir) / student
    with claim_output(out, folder=True):
        model, sectioned = build_student(recipe, student)
        check_student_fits(sectioned, store, student)
        adopt_teacher_parts(sectioned, student, store.module_state("stem"), store.module_state("head"))
        states = teacher_section_states(store)
        model.eval()
        report = {"method": method, "student": student, "rows": rows, "sections": []}
        for i, (section, state) in enumerate(zip(sectioned.sections, states)):
            teacher_layers = 1 + max(int(k.split(".", 1)[0]) for k in state)
            if not isinstance(section, nn.Sequential) or not 1 <= len(section) <= teacher_layers:
                raise RecipeError(f"Student {student!r} section {i + 1} must be a run of 1 to {teacher_layers} blocks "
                                  "(the teacher section's) for a training-free baseline.")
            batches = StoredBoundaries(store, i, rows)
            picks, candidates = choose_layers(section, state, teacher_layers, batches)
            entry = {"section": i + 1, "teacher_layers": teacher_layers, "kept": list(picks),
                     "candidates": candidates, **candidates[",".join(map(str, picks))]}
            if method == "linear-map":
                if not isinstance(section, DecoderSection):
                    raise RecipeError(f"--method linear-map merges its map into a decoder layer's MLP, but student "
                                      f"{student!r} section {i + 1} is a {type(section).__name__}. It needs a Hugging "
                                      "Face recipe (pipelines/hf_causal_lm.py).")
                merge_into_mlp_output(section[-1], fit_linear_map(section, batches))
                mse, normalised = _boundary_error(section, batches)
                entry.update(mse=mse, normalised=normalised, layer_drop_mse=entry["mse"])
            report["sections"].append(entry)
            log(f"{student} section {i + 1}: keeps teacher layers {list(picks)} of {teacher_layers}, boundary error "
                f"{entry['mse']:.4g} ({entry['normalised']:.3%} of the target's energy)")
        save_student(out / "student.pt", model, recipe=recipe, student=student, mode=method,
                     sections_trained=range(1, len(sectioned.sections) + 1),
                     store={"path": str(store.path), "identity": store.manifest.identity.to_dict()},
                     config={"baseline": report, "student_init": "teacher-blocks"}, history=[], epoch=0)
    report["checkpoint"] = str(out / "student.pt")
    report["boundary_mse"] = [s["mse"] for s in report["sections"]]
    if not all(math.isfinite(e) for e in report["boundary_mse"]):
        log("warning: a section's boundary error is not finite")
    return report
