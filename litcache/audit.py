"""`litcache info` and `litcache verify`: describe a store, and prove it is intact and faithful."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .data import ViewRows
from .errors import CorruptStoreError, StoreMismatchError
from .precision import resolve_compute
from .recipe import Recipe
from .sections import split_model
from .store import Store, open_store, store_sizes, to_storage, verify_checksums
from .teacher import load_teacher

__all__ = ["store_info", "VerifyReport", "verify_store", "require_intact"]

#: Relative tolerance of a replayed value against the stored one, per stored dtype (2 ulps).
REPLAY_RTOL = {"float32": 2e-5, "float16": 2 * 2**-10, "bfloat16": 2 * 2**-7}
#: ... and per compute precision of the teacher: a reduced-precision forward of one row is not
#: bit-identical to the same row in a batch of 256 (other kernels, other accumulation order), nor
#: across CPUs and GPUs. Measured on the CIFAR ResNet-56 teacher in bf16: see tests/test_precision.py.
REPLAY_COMPUTE_RTOL = {"fp32": 0.0, "bf16": 2**-4, "fp16": 2**-6}


def store_info(path: str | Path) -> dict:
    """The manifest plus, per array, stored bytes, raw bytes and compression ratio."""
    store = open_store(path, require_complete=False)
    sizes = store_sizes(store)
    arrays = {}
    for name, meta in store.manifest["arrays"].items():
        raw = int(np.prod(meta["shape"], dtype=np.int64)) * np.dtype(meta["storage_dtype"]).itemsize
        arrays[name] = {**meta, "raw_bytes": raw, "stored_bytes": sizes[name],
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

    @property
    def ok(self) -> bool:
        return not self.checksum_failures and not self.replay_failures


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
    report = VerifyReport(str(store.path), shards_checked=len(store.manifest["shards"]))
    report.checksum_failures = verify_checksums(store)
    if replay > 0:
        if recipe is None:
            raise StoreMismatchError("Replaying rows needs the store's recipe; pass --recipe.")
        _replay(store, replay, recipe, teacher_checkpoint, seed, report)
    return report


def _replay(store: Store, count: int, recipe: Recipe, teacher_checkpoint, seed: int, report: VerifyReport) -> None:
    identity = store.manifest["identity"]
    teacher, teacher_hash, _ = load_teacher(recipe, teacher_checkpoint or store.manifest["teacher"]["checkpoint"])
    for key, have in (("recipe", recipe.name), ("teacher_hash", teacher_hash)):
        if identity[key] != have:
            raise StoreMismatchError(f"Cannot replay: the store's {key} is {identity[key]!r} but the given one is {have!r}.")
    # Replay in the precision the store was computed in (a store without the key: fp32), on the CPU.
    precision = identity.get("precision", "fp32")
    compute = resolve_compute("fp32" if precision == "fp16" else precision, "cpu", teacher)
    split = compute.model(split_model(teacher, recipe)).eval()
    dataset = recipe.load_split(identity["split"])
    rows = ViewRows.from_identity(dataset, identity, recipe.augmentation_for(identity["split"]))
    picks = np.sort(np.random.default_rng(seed).choice(store.rows, size=min(count, store.rows), replace=False))
    dtype, keep_bits = identity["dtype"], identity.get("keep_bits")
    for r in picks.tolist():
        x, y, index, view, params = rows[r]
        stored_index = int(store.array("source_index")[r])
        if stored_index != index or int(store.array("labels")[r]) != y:
            report.replay_failures.append(f"row {r}: stored sample {stored_index} / label, expected sample {index} label {y}")
            continue
        if "view_params" in store.manifest["arrays"]:
            stored_params = torch.from_numpy(store.array("view_params")[r])
            if not torch.equal(stored_params, params):
                report.replay_failures.append(f"row {r}: view parameters {stored_params.tolist()} do not replay (got {params.tolist()})")
                continue
        with torch.inference_mode(), compute.autocast():
            outs, logits = split.boundaries(compute.input(x.unsqueeze(0)))
        live = {f"boundaries/{i}": (to_storage(z, dtype, keep_bits), dtype) for i, z in enumerate(outs)}
        live["logits"] = (to_storage(logits, "float32"), "float32")
        for name, (value, value_dtype) in live.items():
            stored = store.read(name, r, r + 1).float()
            got = torch.from_numpy(value).view(torch.bfloat16).float() if value_dtype == "bfloat16" else torch.from_numpy(value).float()
            # A value near a rounding boundary may land one kept bit away from the stored one.
            tol = max(REPLAY_RTOL[value_dtype], 2.0 ** -keep_bits if keep_bits and name != "logits" else 0.0,
                      REPLAY_COMPUTE_RTOL[precision])
            err = ((got - stored).abs() / (stored.abs().max() + 1e-12)).max().item()
            report.replay_max_error[name] = max(report.replay_max_error.get(name, 0.0), err)
            if not torch.allclose(got, stored, rtol=tol, atol=tol * float(stored.abs().max())):
                report.replay_failures.append(f"row {r} (sample {index}, view {view}): {name} differs from the live teacher "
                                              f"(max relative error {err:.3g})")
        report.replayed_rows += 1
