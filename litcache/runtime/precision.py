"""Compute precision and memory format: one setting for every command that runs a network.

``--precision auto|fp32|bf16|fp16`` decides how a forward (and backward) pass computes; it never
decides how activations are stored (``extract --dtype``). Weights, optimizer state and losses stay
float32: only the network's compute runs under autocast.

``auto`` picks bf16 where the hardware runs it natively and fp32 elsewhere:
- CUDA: bf16 on devices that support it (compute capability 8.0 and newer), else fp32;
- CPU: bf16 only with native bf16 instructions (AVX512-BF16 or AMX-BF16, read from the CPU's
  flags). Without them torch emulates bf16, which is several times slower than fp32 (measured:
  about 10x on an AVX2-only CPU), so ``auto`` never assumes it.

Convolutional models (any ``Conv2d``) run in channels_last, which is faster on CPUs (1.3-1.5x in
fp32 on the AVX2 development CPU, more with bf16) and lets GPU tensor cores run convolutions
without transposes.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import OptionError

__all__ = ["PRECISIONS", "Compute", "as_compute", "resolve_compute", "native_cpu_bf16", "uses_conv2d"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_AUTOCAST_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: CPU flags (Linux /proc/cpuinfo names) that mean bf16 matrix arithmetic runs in hardware.
_NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware. Read from the CPU flags where the OS lists them
    (Linux); elsewhere from what oneDNN reports. Override with LITCACHE_CPU_BF16=0/1."""
    forced = os.environ.get("LITCACHE_CPU_BF16", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return _detected_cpu_bf16()


@functools.lru_cache(maxsize=1)
def _detected_cpu_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return any(flag in flags for flag in _NATIVE_BF16_FLAGS)
    except OSError:
        pass
    try:  # oneDNN's own check (true on AVX512-BF16 and AMX machines)
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def uses_conv2d(model: nn.Module) -> bool:
    return any(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in model.modules())


@dataclass(frozen=True)
class Compute:
    """How networks compute on one device: autocast dtype (or none) and memory format."""

    device: torch.device
    #: Resolved: "fp32", "bf16" or "fp16" (never "auto").
    precision: str
    channels_last: bool = False

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return _AUTOCAST_DTYPE.get(self.precision)

    def autocast(self):
        """The context a forward pass runs in (a no-op for fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def model(self, model: nn.Module) -> nn.Module:
        """Move ``model`` to the device (in place) in the memory format its inputs will have."""
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def input(self, x: torch.Tensor) -> torch.Tensor:
        """A tensor moved to the device; floating ones widened to float32 (stored float16/bf16 rows:
        autocast narrows them again where it computes in reduced precision), 4-D ones in the model's
        memory format. Integer tensors (labels) only move."""
        x = x.to(self.device, non_blocking=True)
        if not x.is_floating_point():
            return x
        x = x.float()
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A scaler that keeps fp16 gradients from underflowing; disabled (a pass-through) otherwise."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    @property
    def emulated(self) -> bool:
        """bf16 asked for on a CPU without bf16 instructions: torch emulates it, slowly."""
        return self.precision == "bf16" and self.device.type == "cpu" and not native_cpu_bf16()

    def describe(self) -> str:
        """E.g. "compute bf16 autocast, channels_last" (for preflight and epoch lines)."""
        what = "fp32" if self.precision == "fp32" else f"{self.precision} autocast"
        note = " (emulated: this CPU has no bf16 instructions, fp32 is faster)" if self.emulated else ""
        return f"compute {what}, {'channels_last' if self.channels_last else 'contiguous'}{note}"


def as_compute(compute: "Compute | torch.device | str") -> Compute:
    """A ``Compute`` as given, or plain fp32 (default layout) on a device given by name."""
    return compute if isinstance(compute, Compute) else Compute(torch.device(compute), "fp32")


def resolve_compute(precision: str, device: torch.device | str, model: nn.Module | None = None) -> Compute:
    """The ``Compute`` of ``--precision`` on ``device``; channels_last when ``model`` has 2-D convolutions.

    Refuses what the hardware cannot run: fp16 off CUDA, bf16 on a CUDA device without it.
    """
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise OptionError(f"Expected --precision in {PRECISIONS}, got {precision!r} instead.")
    cuda = device.type == "cuda"
    if precision == "auto":
        if cuda:
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        else:
            precision = "bf16" if native_cpu_bf16() else "fp32"
    elif precision == "fp16" and not cuda:
        raise OptionError(f"--precision fp16 runs on CUDA devices only (this run is on {device}); use bf16 or fp32.")
    elif precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise OptionError(f"CUDA device {device} does not support bf16; use --precision fp16 or fp32.")
    channels_last = model is not None and uses_conv2d(model)
    return Compute(device, precision, channels_last)
