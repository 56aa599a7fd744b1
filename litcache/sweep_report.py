"""What `litcache sweep` writes: results.csv, results.json and a Pareto plot of test accuracy
against parameters and multiply-adds, with the teacher for reference."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .evaluation import evaluate
from .recipe import Recipe
from .training.metrics import model_stats

__all__ = ["SweepResult", "pareto_front", "teacher_point", "write_results"]


@dataclass
class SweepResult:
    rows: list[dict]
    teacher: dict
    results_csv: Path
    results_json: Path
    pareto_png: Path

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.rows if r["status"] == "failed"]


def teacher_point(recipe: Recipe, teacher: str | Path | None) -> dict:
    """The teacher on the plot: its test accuracy when a checkpoint is given, else only its size."""
    if teacher is not None:
        t = evaluate(recipe, None, teacher)["teacher"]
        return {"checkpoint": t["checkpoint"], "params": t["params"], "macs": t["macs_per_sample"], "depth": t["depth"],
                "accuracy": t["accuracy"]}
    sample = recipe.load_split("test")[0][0][None]
    s = model_stats(recipe.build_teacher(), sample)
    return {"checkpoint": None, "params": s["params"], "macs": s["macs_per_sample"], "depth": s["depth"],
            "accuracy": None}


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For (cost, accuracy) points: True for each point that no other point beats, i.e. none is at
    least as accurate for at most the cost and strictly better in one of the two."""
    return [not any(c2 <= c and a2 >= a and (c2 < c or a2 > a) for c2, a2 in points) for c, a in points]


def write_results(recipe: Recipe, store: str | Path, rows: list[dict], teacher: dict, out: Path,
                  columns: Sequence[str]) -> SweepResult:
    """Mark each measured row's place on the two Pareto fronts, then write the three files (the
    CSV with ``columns``)."""
    measured = [r for r in rows if r["accuracy"] is not None]
    for key in ("params", "macs"):
        for r, on_front in zip(measured, pareto_front([(r[key], r["accuracy"]) for r in measured])):
            r[f"pareto_{key}"] = on_front
    out.mkdir(parents=True, exist_ok=True)
    result = SweepResult(rows, teacher, out / "results.csv", out / "results.json", out / "pareto.png")
    result.results_json.write_text(json.dumps({"recipe": recipe.name, "store": str(store), "teacher": teacher,
                                               "variants": rows}, indent=2))
    with open(result.results_csv, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    _plot(rows, teacher, result.pareto_png, f"{recipe.name}: {len(rows)} variants")
    return result


def _plot(rows: list[dict], teacher: dict, path: Path, title: str) -> None:
    # The object API with no pyplot: the Agg canvas, and no global backend switched under the caller.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 5), layout="constrained")
    FigureCanvasAgg(fig)
    measured = [r for r in rows if r["accuracy"] is not None]
    for ax, key, label in zip(fig.subplots(1, 2), ("params", "macs"), ("parameters", "multiply-adds per sample")):
        ax.scatter([r[key] for r in measured], [r["accuracy"] for r in measured], color="tab:blue", alpha=0.6,
                   label="variants")
        front = sorted((r[key], r["accuracy"], r["variant"]) for r in measured if r[f"pareto_{key}"])
        if front:
            ax.plot([p[0] for p in front], [p[1] for p in front], "o-", color="tab:red", drawstyle="steps-post",
                    label="Pareto front")
            names: dict[tuple, list[str]] = {}
            for x, y, name in front:
                names.setdefault((x, y), []).append(name)
            for (x, y), group in names.items():  # tied variants share one label
                text = "\n".join(group[:3]) + (f"\n+{len(group) - 3} more" if len(group) > 3 else "")
                ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if teacher["accuracy"] is not None:
            ax.scatter([teacher[key]], [teacher["accuracy"]], marker="*", s=250, color="black", zorder=3,
                       label="teacher")
        else:
            ax.axvline(teacher[key], color="black", linestyle="--",
                       label="teacher size (no --teacher: accuracy unknown)")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
