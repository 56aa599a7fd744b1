"""Helpers shared by the benchmark scripts (run them as ``python benchmarks/NAME.py``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from litcache import ExtractOptions
from litcache.extraction.plan import plan_extraction
from litcache.runtime.devices import resolve_device

__all__ = ["bare_forward_seconds", "peak_rss_mb", "load_results", "save_results", "run_once"]


def load_results(path: Path) -> dict:
    """A resumable bench's results file: {"runs": {key: record}}, empty when it does not exist yet."""
    return json.loads(path.read_text()) if path.exists() else {"runs": {}}


def save_results(path: Path, results: dict) -> None:
    """Write the results whole (tmp + rename): a bench killed mid-write leaves the previous file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=True))
    os.replace(tmp, path)


def run_once(results: dict, path: Path, key: str, run) -> dict:
    """``results["runs"][key]``: made by ``run()`` (plus its wall seconds) and saved at once if missing, so a
    rerun of a resumable bench skips every step already done."""
    if key not in results["runs"]:
        print(f"=== {key}", flush=True)
        t = time.perf_counter()
        results["runs"][key] = {**run(), "wall_seconds": time.perf_counter() - t}
        save_results(path, results)
    return results["runs"][key]


def bare_forward_seconds(recipe, teacher, options: ExtractOptions) -> tuple[float, int]:
    """(seconds, rows) of the teacher's bare forward over the rows ``extract`` would store: the same
    views, DataLoader and device, output discarded. What an extraction cannot go below."""
    plan = plan_extraction(recipe, options, teacher)
    device = resolve_device(options.device)
    sectioned = plan.sectioned.to(device).eval()
    loader = DataLoader(plan.rows_dataset, batch_size=options.batch_size, num_workers=options.loader_workers)
    t = time.perf_counter()
    with torch.inference_mode():
        for x, *_ in loader:
            sectioned.boundaries(x.to(device, non_blocking=True))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t, plan.rows


_PEAK = ("import resource, sys\nfrom litcache.cli import main\n"
         "try:\n    main(sys.argv[1:])\n    code = 0\nexcept SystemExit as exc:\n    code = exc.code or 0\n"
         "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)\nsys.exit(code)")


def peak_rss_mb(args: list[str]) -> float:
    """Peak RSS in MB of ``litcache ARGS`` run in a child process (its own ru_maxrss; DataLoader
    workers not included). A failing command raises with its output instead of giving a figure."""
    done = subprocess.run([sys.executable, "-c", _PEAK, *map(str, args)], capture_output=True, text=True)
    if done.returncode != 0 or "PEAK" not in done.stdout:
        raise RuntimeError(f"`litcache {' '.join(map(str, args))}` failed (exit {done.returncode}):\n"
                           f"{done.stdout}{done.stderr}")
    peak = int(done.stdout.split("PEAK")[-1].split()[0])
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KB on Linux


def set_torch_threads() -> None:
    """torch's threads: OMP_NUM_THREADS where set (1 lets two runs share the cores a thread each), else every core."""
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
