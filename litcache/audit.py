"""`litcache info` and `litcache verify`: describe a store, and prove it is intact and faithful."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .data import ViewRows
from .debris import Debris, find_debris
from .encoding import to_storage
from .errors import CorruptStoreError, StoreMismatchError
from .precision import resolve_compute
from .recipe import Recipe
from .sections import split_model
from .space import human_bytes
from .store import Store, open_store, store_sizes, verify_checksums
from .teacher import load_teacher
from .teacher_rows import teacher_fields

__all__ = ["store_info", "format_store_info", "VerifyReport", "verify_store", "require_intact"]

#: Relative tolerance of a replayed value against the stored one, per stored dtype (2 ulps).
REPLAY_RTOL = {"float32": 2e-5, "float16": 2 * 2**-10, "bfloat16": 2 * 2**-7}
#: ... and per compute precision of the teacher: a reduced-precision forward of one row is not
#: bit-identical to the same row in a batch of 256 (other kernels, other accumulation order), nor
#: across CPUs and GPUs. Measured on the CIFAR ResNet-56 teacher in bf16: see tests/test_precision.py.
REPLAY_COMPUTE_RTOL = {"fp32": 0.0, "bf16": 2**-4, "fp16": 2**-6}


def store_info(path: str | Path) -> dict:
    """The manifest (a ``Manifest``: its ``to_dict()`` is the JSON in zarr.json) plus, per array, stored
    bytes, raw bytes and compression ratio."""
    store = open_store(path, require_complete=False)
    sizes = store_sizes(store)
    arrays = {}
    for name, meta in store.manifest.arrays.items():
        raw = meta.raw_bytes()
        arrays[name] = {**meta.to_dict(), "raw_bytes": raw, "stored_bytes": sizes[name],
                        "ratio": round(raw / sizes[name], 3) if sizes[name] else None}
    committed = len(store.committed())
    return {"path": str(store.path), "complete": store.complete, "committed_shards": committed,
            "manifest": store.manifest, "arrays": arrays,
            "raw_bytes": sum(a["raw_bytes"] for a in arrays.values()),
            "stored_bytes": sum(a["stored_bytes"] for a in arrays.values())}


@dataclass
class VerifyReport:
    path: str
    shards_checked: int = 0
    checksum_failures: list[str] = field(default_factory=list)
    replayed_rows: int = 0
    replay_failures: list[str] = field(default_factory=list)
    replay_max_error: dict[str, float] = field(default_factory=dict)
    #: Temporary files of killed writers: not part of the store, so not a failure. verify writes
    #: nothing (it runs beside readers, on read-only copies too); taking the lock removes them.
    debris: list[str] = field(default_factory=list)
    debris_bytes: int = 0

    @property
    def ok(self) -> bool:
        return not self.checksum_failures and not self.replay_failures

    @property
    def debris_note(self) -> str | None:
        """What the debris is and how to remove it; None when there is none."""
        if not self.debris:
            return None
        more = f" and {len(self.debris) - 1} more" if len(self.debris) > 1 else ""
        return (f"{Debris(tuple(self.debris), self.debris_bytes).describe()}, not part of the store "
                f"({self.debris[0]}{more}): delete them, or run the extract command again, which removes them")


def require_intact(store: Store) -> None:
    """Refuse a store whose stored data no longer matches its checksums."""
    problems = verify_checksums(store)
    if problems:
        raise CorruptStoreError(f"Store {str(store.path)!r} is corrupt: {problems[0]}"
                                + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
                                + ". Extract it again (--overwrite), or restore it from a copy.")


def verify_store(path: str | Path, replay: int = 0, recipe: Recipe | None = None,
                 teacher_checkpoint: str | Path | None = None, seed: int = 0) -> VerifyReport:
    """Recompute every shard checksum; with ``replay`` > 0, re-run the teacher on that many random rows."""
    store = open_store(path)
    report = VerifyReport(str(store.path), shards_checked=len(store.manifest.shards))
    report.checksum_failures = verify_checksums(store)
    debris = find_debris(store.location)
    report.debris, report.debris_bytes = list(debris.files), debris.bytes
    if replay > 0:
        if recipe is None:
            raise StoreMismatchError("Replaying rows needs the store's recipe; pass --recipe.")
        _replay(store, replay, recipe, teacher_checkpoint, seed, report)
    return report


def _replay(store: Store, count: int, recipe: Recipe, teacher_checkpoint, seed: int, report: VerifyReport) -> None:
    identity = store.manifest.identity
    teacher, teacher_hash, _ = load_teacher(recipe, teacher_checkpoint or store.manifest.teacher.checkpoint)
    for key, stored, have in (("recipe", identity.recipe, recipe.name), ("teacher_hash", identity.teacher_hash, teacher_hash)):
        if stored != have:
            raise StoreMismatchError(f"Cannot replay: the store's {key} is {stored!r} but the given one is {have!r}.")
    # Replay in the precision the store was computed in (a store without the key: fp32), on the CPU.
    precision = identity.precision
    compute = resolve_compute("fp32" if precision == "fp16" else precision, "cpu", teacher)
    split = compute.model(split_model(teacher, recipe)).eval()
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
            report.replay_failures.append(f"row {r}: stored sample {stored_index} / label, expected sample {index} label {shown}")
            continue
        if "view_params" in store.manifest.arrays:
            stored_params = torch.from_numpy(store.array("view_params")[r])
            if not torch.equal(stored_params, params):
                report.replay_failures.append(f"row {r}: view parameters {stored_params.tolist()} do not replay (got {params.tolist()})")
                continue
        with torch.inference_mode(), compute.autocast():
            outs, logits = split.boundaries(compute.input(x.unsqueeze(0)))
            # Every logit (zeroed past the length, as stored): a top-k store is checked against them below.
            fields = teacher_fields(outs, logits, y.unsqueeze(0))
        live = {name: (to_storage(z, dtype, keep_bits), dtype) for name, z in fields.items() if name.startswith("boundaries/")}
        every_logit = fields["logits"].float()
        if identity.logit_topk is None:
            live["logits"] = (to_storage(every_logit, "float32"), "float32")
        else:  # top-k: the live logits at the stored indices (near-ties may order differently from one batch to another)
            indices = torch.from_numpy(np.asarray(store.array("topk_indices")[r:r + 1])).long()
            live["topk_values"] = (to_storage(every_logit.gather(-1, indices), "float32"), "float32")
            # ...and those are the K largest: the live top-K values, sorted (ties cannot reorder values).
            live["topk_values (the top K)"] = (to_storage(every_logit.topk(indices.shape[-1], dim=-1).values, "float32"), "float32")
        if "lengths" in fields and int(store.array("lengths")[r]) != int(fields["lengths"][0]):
            report.replay_failures.append(f"row {r} (sample {index}): stored length {int(store.array('lengths')[r])}, "
                                          f"expected {int(fields['lengths'][0])}")
            continue
        for name, (value, value_dtype) in live.items():
            stored = store.read(name.split(" ")[0], r, r + 1).float()
            got = torch.from_numpy(value).view(torch.bfloat16).float() if value_dtype == "bfloat16" else torch.from_numpy(value).float()
            # A value near a rounding boundary may land one kept bit away from the stored one.
            tol = max(REPLAY_RTOL[value_dtype], 2.0 ** -keep_bits if keep_bits and name.startswith("boundaries/") else 0.0,
                      REPLAY_COMPUTE_RTOL[precision])
            err = ((got - stored).abs() / (stored.abs().max() + 1e-12)).max().item()
            report.replay_max_error[name] = max(report.replay_max_error.get(name, 0.0), err)
            if not torch.allclose(got, stored, rtol=tol, atol=tol * float(stored.abs().max())):
                report.replay_failures.append(f"row {r} (sample {index}, view {view}): {name} differs from the live teacher "
                                              f"(max relative error {err:.3g})")
        report.replayed_rows += 1


def format_store_info(info: dict) -> str:
    """The text `litcache info` prints for a :func:`store_info` result."""
    m = info["manifest"]
    ident, layout = m.identity, m.layout
    state = "complete" if info["complete"] else f"INCOMPLETE ({info['committed_shards']}/{layout.num_shards} shards; resume with --resume)"
    lines = [
        f"store        {info['path']}  (format {m.format} v{m.format_version}, {state})",
        f"recipe       {ident.recipe}  (hash {ident.recipe_hash}, {m.recipe.source})",
        f"teacher      {m.teacher.checkpoint}  (weights hash {ident.teacher_hash})",
        f"data         split {ident.split}, {ident.samples} samples x {ident.views} views = {layout.rows} rows "
        f"(fingerprint {ident.data_fingerprint}, seed {ident.seed})",
        f"transforms   {json.dumps(ident.transforms)}",
        f"values       {ident.dtype}, " + (f"rounded to {ident.keep_bits} mantissa bits (lossy)" if ident.keep_bits
                                          else "exact in that dtype"),
        f"computed     teacher forward in {ident.precision}"
        + (f", {'channels_last' if m.compute.channels_last else 'contiguous'} on {m.compute.device}" if m.compute else ""),
        f"layout       {layout.chunk_rows} rows/chunk, {layout.shard_rows} rows/shard, {layout.num_shards} shards, {layout.row_order}",
        f"created      {m.created}   completed {m.completed or '-'}",
        "versions     " + ", ".join(f"{k} {v}" for k, v in m.versions.items()),
        "arrays:",
    ]
    for name, a in info["arrays"].items():
        ratio = f"{a['ratio']:.2f}x" if a["ratio"] else "-"
        lines.append(f"  {name:<16} {str(tuple(a['shape'])):<22} {a['dtype']:<9} {a['codec']:<5} "
                     f"{human_bytes(a['stored_bytes']):>10} of {human_bytes(a['raw_bytes']):>10}  {ratio}")
    total_ratio = info["raw_bytes"] / info["stored_bytes"] if info["stored_bytes"] else 0
    lines.append(f"total        {human_bytes(info['stored_bytes'])} stored, {human_bytes(info['raw_bytes'])} raw, "
                 f"{total_ratio:.2f}x; {info['raw_bytes'] / max(layout.rows, 1):.0f} raw bytes/row")
    return "\n".join(lines)
