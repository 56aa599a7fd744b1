"""`litcache verify --replay`: re-run the teacher on stored rows and compare, value by value, in the
precision the store was computed in. It needs the teacher, so it is stage 1's; the checksums are the
store's own (``litcache.store.verify``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import StoreMismatchError
from ..recipe import Recipe
from ..runtime.precision import resolve_compute
from ..sections import cut_sections
from ..store.arrays import Store, open_store
from ..store.encoding import to_storage
from ..store.verify import VerifyReport, check_store
from .rows import ViewRows
from .teacher import load_teacher
from .teacher_outputs import teacher_fields

__all__ = ["verify_store", "REPLAY_RTOL", "REPLAY_COMPUTE_RTOL"]

#: Relative tolerance of a replayed value against the stored one, per stored dtype (2 ulps).
REPLAY_RTOL = {"float32": 2e-5, "float16": 2 * 2**-10, "bfloat16": 2 * 2**-7}
#: ... and per compute precision of the teacher: a reduced-precision forward of one row is not
#: bit-identical to the same row in a batch of 256 (other kernels, other accumulation order), nor
#: across CPUs and GPUs. Measured on the CIFAR ResNet-56 teacher in bf16: see tests/test_precision.py.
REPLAY_COMPUTE_RTOL = {"fp32": 0.0, "bf16": 2**-4, "fp16": 2**-6}


def verify_store(path: str | Path, replay: int = 0, recipe: Recipe | None = None,
                 teacher_checkpoint: str | Path | None = None, seed: int = 0) -> VerifyReport:
    """Recompute every shard checksum; with ``replay`` > 0, re-run the teacher on that many random rows."""
    report = check_store(path)
    if replay > 0:
        if recipe is None:
            raise StoreMismatchError("Replaying rows needs the store's recipe; pass --recipe.")
        _replay(open_store(path), replay, recipe, teacher_checkpoint, seed, report)
    return report


def _replay(store: Store, count: int, recipe: Recipe, teacher_checkpoint, seed: int, report: VerifyReport) -> None:
    identity = store.manifest.identity
    teacher, teacher_hash, _ = load_teacher(recipe, teacher_checkpoint or store.manifest.teacher.checkpoint)
    for key, stored, have in (("recipe", identity.recipe, recipe.name),
                              ("teacher_hash", identity.teacher_hash, teacher_hash)):
        if stored != have:
            raise StoreMismatchError(f"Cannot replay: the store's {key} is {stored!r} but the given one is {have!r}.")
    # Replay in the precision the store was computed in (a store without the key: fp32), on the CPU.
    precision = identity.precision
    compute = resolve_compute("fp32" if precision == "fp16" else precision, "cpu", teacher)
    sectioned = compute.model(cut_sections(teacher, recipe)).eval()
    dataset = recipe.load_split(identity.split)
    rows = ViewRows.from_identity(dataset, identity, recipe.augmentation_for(identity.split))
    picks = np.sort(np.random.default_rng(seed).choice(store.rows, size=min(count, store.rows), replace=False))
    dtype, keep_bits = identity.dtype, identity.keep_bits
    for r in picks.tolist():
        x, y, index, view, params = rows[r]
        y = torch.as_tensor(y, dtype=torch.int64)
        stored_index = int(store.array("source_index")[r])
        stored_label = torch.from_numpy(np.asarray(store.array("labels")[r])).to(torch.int64)
        if stored_index != index or not torch.equal(stored_label, y):
            shown = y.tolist() if y.dim() == 0 else f"({y.numel()} targets)"
            report.replay_failures.append(f"row {r}: stored sample {stored_index} / label, expected sample {index} "
                                          f"label {shown}")
            continue
        if "view_params" in store.manifest.arrays:
            stored_params = torch.from_numpy(store.array("view_params")[r])
            if not torch.equal(stored_params, params):
                report.replay_failures.append(f"row {r}: view parameters {stored_params.tolist()} do not replay "
                                              f"(got {params.tolist()})")
                continue
        with torch.inference_mode(), compute.autocast():
            outs, logits = sectioned.boundaries(compute.input(x.unsqueeze(0)))
            # Every logit (zeroed past the length, as stored): a top-k store is checked against them below.
            fields = teacher_fields(outs, logits, y.unsqueeze(0))
        live = {name: (to_storage(z, dtype, keep_bits), dtype) for name, z in fields.items()
                if name.startswith("boundaries/")}
        every_logit = fields["logits"].float()
        if identity.logit_topk is None:
            live["logits"] = (to_storage(every_logit, "float32"), "float32")
        else:  # top-k: the live logits at the stored indices (near-ties may order differently from one batch to
            # another)
            indices = torch.from_numpy(np.asarray(store.array("topk_indices")[r:r + 1])).long()
            live["topk_values"] = (to_storage(every_logit.gather(-1, indices), "float32"), "float32")
            # ...and those are the K largest: the live top-K values, sorted (ties cannot reorder values).
            live["topk_values (the top K)"] = (
                to_storage(every_logit.topk(indices.shape[-1], dim=-1).values, "float32"), "float32")
        if "lengths" in fields and int(store.array("lengths")[r]) != int(fields["lengths"][0]):
            report.replay_failures.append(f"row {r} (sample {index}): stored length {int(store.array('lengths')[r])}, "
                                          f"expected {int(fields['lengths'][0])}")
            continue
        for name, (value, value_dtype) in live.items():
            stored = store.read(name.split(" ")[0], r, r + 1).float()
            got = (torch.from_numpy(value).view(torch.bfloat16).float() if value_dtype == "bfloat16"
                   else torch.from_numpy(value).float())
            # A value near a rounding boundary may land one kept bit away from the stored one.
            tol = max(REPLAY_RTOL[value_dtype],
                      2.0 ** -keep_bits if keep_bits and name.startswith("boundaries/") else 0.0,
                      REPLAY_COMPUTE_RTOL[precision])
            err = ((got - stored).abs() / (stored.abs().max() + 1e-12)).max().item()
            report.replay_max_error[name] = max(report.replay_max_error.get(name, 0.0), err)
            if not torch.allclose(got, stored, rtol=tol, atol=tol * float(stored.abs().max())):
                report.replay_failures.append(f"row {r} (sample {index}, view {view}): {name} differs from the live "
                                              f"teacher (max relative error {err:.3g})")
        report.replayed_rows += 1
