"""``extract --codec auto``: the strongest codec whose encoder keeps up with the teacher.

Measured on this machine before the store is created: the teacher's forward rate on a few of the
store's own rows (on a GPU a whole batch, after a warm-up run; loading and views included unless
loader workers load ahead), and each codec's
encode rate on that batch's outputs as stored, times the writer's encoder threads (the codecs
release the GIL and scale with threads: benchmarks/writer_bench.py). The first of ``CODECS``
(strongest first) whose rate is at least the teacher's wins; if none keeps up, the fastest. The
store records the codec chosen, like any codec, so a resume or a reuse of the store adopts it and
never measures again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..store.encoding import CODECS, numcodecs_compressor, to_storage
from .plan import ExtractPlan
from .teacher_outputs import teacher_fields

__all__ = ["CodecChoice", "choose_codec", "measure_codecs"]

#: Rows the probe runs through a CPU teacher: first a few; then, if those took under PROBE_SECONDS
#: (a fast teacher, whose small batches time poorly), a batch large enough to time. A GPU teacher
#: is timed on a whole batch of --batch-size rows.
PROBE_ROWS = (8, 48)
PROBE_SECONDS = 0.05
#: Each codec encodes the probe's outputs for at least this long, to time it reliably.
MIN_ENCODE_SECONDS = 0.02


@dataclass(frozen=True)
class CodecChoice:
    codec: str
    forward_rows_per_s: float
    encode_rows_per_s: dict[str, float]  # per codec, over ``threads`` encoder threads
    threads: int

    def describe(self) -> str:
        rates = ", ".join(f"{c} {r:,.0f}" for c, r in self.encode_rows_per_s.items())
        keeps_up = self.encode_rows_per_s[self.codec] >= self.forward_rows_per_s
        why = "the strongest that keeps up" if keeps_up else "none keeps up: the fastest"
        return (f"--codec auto chose {self.codec} ({why}): the teacher computes {self.forward_rows_per_s:,.0f} rows/s; "
                f"encoding on {self.threads} thread{'s' * (self.threads > 1)}: {rates} rows/s")


def choose_codec(forward_rows_per_s: float, encode_rows_per_s: dict[str, float]) -> str:
    """The first codec of ``CODECS`` (strongest first) that encodes at least as fast as the teacher
    computes; if none does, the fastest."""
    for codec in CODECS:
        if encode_rows_per_s[codec] >= forward_rows_per_s:
            return codec
    return max(encode_rows_per_s, key=encode_rows_per_s.get)


def measure_codecs(plan: ExtractPlan, device: torch.device, threads: int) -> CodecChoice:
    """Time the teacher and every codec on this machine (see the module docstring)."""
    o = plan.options
    rows = plan.rows_dataset
    teacher = plan.compute.model(plan.sectioned).eval()

    # Loading the rows counts where the loop waits for it (no loader workers to load ahead).
    loading_counts = o.loader_workers == 0

    def forward(count: int) -> tuple[dict, int, float]:
        probe = list(range(min(count, len(rows))))
        t = time.perf_counter()
        x, y, *_ = rows.get_batch(probe)
        loading = time.perf_counter() - t
        with torch.inference_mode(), plan.compute.autocast():
            outs, logits = teacher.boundaries(plan.compute.input(x))
            fields = teacher_fields(outs, logits, y, o.logit_topk)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return fields, len(probe), time.perf_counter() - t - (0.0 if loading_counts else loading)

    if device.type != "cpu":
        # A device computes a small batch far below its rate: time a whole batch, after a warm-up that pays
        # for its context and kernel choices (on the CPU the plan's section check has run the teacher).
        forward(o.batch_size)
        fields, count, seconds = forward(o.batch_size)
    else:
        fields, count, seconds = forward(PROBE_ROWS[0])
        if seconds < PROBE_SECONDS:
            fields, count, seconds = forward(PROBE_ROWS[1])
    forward_rate = count / seconds
    stored = [to_storage(v, o.dtype, o.keep_bits) if name.startswith("boundaries/")
              else to_storage(v, "float32") if v.is_floating_point() else v.cpu().numpy()
              for name, v in fields.items()]
    chunks = [np.ascontiguousarray(array[i:i + o.chunk_rows]) for array in stored
              for i in range(0, len(array), o.chunk_rows)]
    rates = {}
    for codec in CODECS:
        compressor = numcodecs_compressor(codec)
        passes, t = 0, time.perf_counter()
        while passes < 1 or time.perf_counter() - t < MIN_ENCODE_SECONDS:
            for chunk in chunks:
                compressor.encode(chunk) if compressor is not None else chunk.tobytes()
            passes += 1
        rates[codec] = passes * count / (time.perf_counter() - t) * threads
    return CodecChoice(choose_codec(forward_rate, rates), forward_rate, rates, threads)
