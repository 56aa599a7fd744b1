"""Where networks run: ``--device`` parsed and checked against this machine, and how DataLoader
workers start."""

from __future__ import annotations

import torch

from ..errors import OptionError

__all__ = ["parse_device", "resolve_device", "worker_context"]


def worker_context(num_workers: int):
    """Start DataLoader workers by fork where the platform has it: recipe modules are loaded from
    files into this process only, so spawned workers could not unpickle a recipe's dataset."""
    import multiprocessing

    if num_workers > 0 and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return None


def parse_device(device: str) -> torch.device:
    """``--device`` as torch reads it (``cpu``, ``cuda``, ``cuda:1``, ``mps``, ...); a string torch
    does not read is an OptionError. ``auto`` is not parsed here (see ``resolve_device``)."""
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise OptionError(f"Expected --device auto or a torch device such as cpu, cuda, cuda:1 or mps, got {device!r} "
                          "instead.") from None


def _backend(kind: str):
    """The torch module that says whether devices of ``kind`` exist (None: torch has no such check)."""
    return torch.backends.mps if kind == "mps" else getattr(torch, kind, None)


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present; any other value must name a device that exists here: asking
    for one that does not is an error, never a silent fallback to the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    d = parse_device(device)
    if d.type == "cpu":
        return d
    backend = _backend(d.type)
    if d.type == "cuda" and not torch.cuda.is_available():
        raise OptionError(f"Expected a CUDA device for --device {device}, but torch sees none. CUDA is not available "
                          "here (a CPU-only torch build, or no GPU or driver): use --device cpu or auto.")
    if backend is None or not callable(getattr(backend, "is_available", None)) or not backend.is_available():
        raise OptionError(f"Expected --device {device} to be a device this machine has, but torch cannot run "
                          f"on {d.type!r} here. Use --device cpu or auto.")
    count = backend.device_count() if callable(getattr(backend, "device_count", None)) else 1
    if d.index is not None and d.index >= count:
        names = ", ".join(f"{d.type}:{i}" for i in range(count))
        raise OptionError(f"Expected --device {device} to be one of this machine's {count} {d.type} device(s) "
                          f"({names}), got index {d.index} instead. Use one of those, or --device auto.")
    return d
