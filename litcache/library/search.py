"""`litcache search`: the best mix of a library's candidates under a budget, assembled and measured.

A mix takes one candidate per section. Its predicted cost is the cost every mix shares (stem and head)
plus its candidates' costs; its predicted loss is the sum of its candidates' scores, by default the
KL divergence each adds when swapped alone into the teacher (``--predictor kl``; also ``accuracy``,
``boundary``). The search is an exact dynamic program over the sections (a multiple-choice knapsack),
keeping per section only the partial mixes that could still be among the N best: a partial mix is
dropped once N others cost no more and lose no more, since every completion of it is then beaten by
N completions of theirs. Costs may be any non-negative reals (latency included); no rounding, no
solver. The picks are assembled into students (``mix-3-0-5``), optionally fine-tuned with KD from the
store, evaluated on the recipe's split, and compared with the uniform mixes of the same library.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
import xxhash

from ..errors import LitcacheError, OptionError, StoreMismatchError
from ..evaluation import evaluate
from ..recipe import Recipe, load_recipe, mix_name
from ..store.arrays import Store, open_store
from ..training.blocks import BlockTrainOptions, train_blocks
from ..training.outputs import claim_output
from ..training.student import build_student, load_student, read_student, save_student
from .build import read_library, write_csv, write_json
from .candidates import candidate_section
from .scores import latency_ms

__all__ = ["BUDGET_KEYS", "PREDICTORS", "Budget", "Mix", "parse_budget", "best_mixes", "assemble_mix",
           "spearman", "search"]

BUDGET_KEYS = ("macs", "params", "latency")
PREDICTORS = ("kl", "accuracy", "boundary")
_SCALE = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
SEARCH_FILE, SEARCH_TABLE, PLOT_FILE = "search.json", "search.csv", "pareto.png"
COLUMNS = ("student", "kind", "rank", "predicted_loss", "predicted_accuracy", "predicted_perplexity",
           "predicted_macs", "predicted_params", "predicted_latency_ms", "accuracy", "perplexity", "macs", "params",
           "latency_ms", "finetune_epochs", "checkpoint")


@dataclass(frozen=True)
class Budget:
    key: str  # "macs", "params" or "latency"
    limit: float

    @property
    def column(self) -> str:
        return "latency_ms" if self.key == "latency" else self.key

    def __str__(self) -> str:
        return f"{self.key}={self.limit:g}{'ms' if self.key == 'latency' else ''}"


def parse_budget(text: str) -> Budget:
    """"macs=41M", "params=0.27M" or "latency=3.5ms" (K, M, G, T multiply by powers of 1000)."""
    key, _, value = text.partition("=")
    key = key.strip().lower()
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*([a-z]*)\s*", value.lower())
    unit = match.group(2) if match else None
    if key not in BUDGET_KEYS or match is None or (key == "latency" and unit != "ms") or \
            (key != "latency" and unit not in _SCALE):
        raise OptionError(f"Expected --budget as macs=X, params=X (X may end in K, M, G) or latency=Xms, got {text!r}.")
    limit = float(match.group(1)) * (1.0 if key == "latency" else _SCALE[unit])
    return Budget(key, limit)


@dataclass(frozen=True)
class Mix:
    picks: tuple[int, ...]  # the candidate chosen in each section, as an index into that section's options
    cost: float
    loss: float


def best_mixes(costs: Sequence[Sequence[float]], losses: Sequence[Sequence[float]], limit: float, top: int = 1,
               base_cost: float = 0.0) -> list[Mix]:
    """The ``top`` mixes of least summed loss (ties: least cost, then picks) whose cost, ``base_cost`` plus
    the summed costs, is at most ``limit``; section i offers options with ``costs[i]`` and ``losses[i]``.
    Exact: the dynamic program of the module docstring."""
    states = [Mix((), base_cost, 0.0)]
    for section_costs, section_losses in zip(costs, losses):
        grown = [Mix(s.picks + (j,), s.cost + c, s.loss + loss) for s in states
                 for j, (c, loss) in enumerate(zip(section_costs, section_losses)) if s.cost + c <= limit]
        grown.sort(key=lambda m: (m.loss, m.cost, m.picks))
        states = []
        for mix in grown:  # keep a partial mix unless `top` kept ones cost no more (they lose no more: sorted)
            if sum(1 for kept in states if kept.cost <= mix.cost) < top:
                states.append(mix)
    return states[:top]


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (ties take their mean rank); NaN for fewer than 3 pairs or a constant side."""
    def ranks(values: Sequence[float]) -> list[float]:
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    if len(a) < 3:
        return math.nan
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    var = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    return cov / var if var else math.nan


def _loss(candidate: dict, predictor: str, task: str) -> float:
    if predictor == "kl":
        return candidate["swap_kl_delta"] if task != "generation" else candidate["swap_output_mse_delta"]
    if predictor == "boundary":
        return candidate["boundary_normalised"]
    if task == "language_model":  # log-perplexity adds up where perplexities multiply
        return math.log(candidate["swap_perplexity"]) - math.log(candidate["swap_perplexity"] -
                                                                 candidate["swap_perplexity_delta"])
    if task != "classification":
        raise OptionError(f"--predictor accuracy needs a classifier or a language model, not a {task} recipe.")
    return -candidate["swap_accuracy_delta"]


def assemble_mix(recipe: Recipe, library: dict, picks: Sequence[dict], out: Path, library_path: str | Path = ".",
                 store: Store | None = None) -> str:
    """A student checkpoint of the mix of ``picks`` (one candidate record per section; checkpoints relative to
    ``library_path``): the teacher's stem and head from the library's store, each section from its candidate."""
    store = store or open_store(library["store"]["path"])
    student = mix_name([p["depth"] for p in picks])
    model, sectioned = build_student(recipe, student, store.module_state("stem"), store.module_state("head"))
    for i, pick in enumerate(picks, start=1):
        saved = read_student(Path(library_path) / pick["checkpoint"])
        sectioned.sections[i - 1].load_state_dict(candidate_section(recipe, saved, i).state_dict())
    final = out / student / "assembled.pt"
    with claim_output(out / student):
        save_student(final, model, recipe=recipe, student=student, mode="library-mix",
                     sections_trained=range(1, len(picks) + 1),
                     store={"path": str(store.path), "identity": store.manifest.identity.to_dict()},
                     config={"library_picks": [p["candidate"] for p in picks]}, history=[], epoch=0)
    return str(final)


def _measure(recipe: Recipe, checkpoint: str, split: str, device: str, latency_input: torch.Tensor) -> dict:
    report = evaluate(recipe, checkpoint, None, split=split, device=device)["student"]
    model = load_student(checkpoint, recipe)
    figures = {k: report[k] for k in ("accuracy", "perplexity") if k in report}
    return {**figures, "macs": report["macs_per_sample"], "params": report["params"],
            "latency_ms": latency_ms(model, latency_input)}


def search(library_path: str | Path, budget: str | Budget, *, top: int = 1, predictor: str = "kl",
           finetune_epochs: int = 0, finetune: Mapping | None = None, uniform: bool = True,
           out: str | Path | None = None, split: str = "test", store: str | Path | None = None, seed: int = 0,
           device: str = "auto", log: Callable[[str], None] = print) -> dict:
    """Pick the ``top`` best mixes under ``budget``, assemble (and fine-tune) them and the uniform mixes,
    evaluate each, and write search.json, search.csv and pareto.png under ``out``. ``finetune``: more
    BlockTrainOptions flags of the fine-tune (lr, schedule, ...; absent: the recipe's fine-tune phase)."""
    budget = parse_budget(budget) if isinstance(budget, str) else budget
    if predictor not in PREDICTORS:
        raise OptionError(f"Expected --predictor in {', '.join(PREDICTORS)}, got {predictor!r}.")
    if top < 1 or finetune_epochs < 0:
        raise OptionError("Expected --top >= 1 and --finetune-epochs >= 0.")
    library = read_library(library_path)
    recipe = load_recipe(library["recipe"]["source"])
    if recipe.name != library["recipe"]["name"]:
        raise StoreMismatchError(f"Library {str(library_path)!r} was made for recipe {library['recipe']['name']!r}, "
                                 f"but its recipe file now defines {recipe.name!r}.")
    if library["task"] not in ("classification", "language_model"):
        raise OptionError(f"litcache search measures accuracy or perplexity; recipe {recipe.name!r} is a "
                          f"{library['task']} task. Its library's scores (library.json) still rank its candidates.")
    store_path = store if store is not None else library["store"]["path"]
    try:
        opened = open_store(store_path)
    except LitcacheError as exc:
        raise StoreMismatchError(f"Library {str(library_path)!r} needs its store {str(store_path)!r}, which cannot be "
                                 f"opened ({exc}). If it moved, give it with --store.") from None
    if opened.manifest.identity.to_dict() != library["store"]["identity"]:
        raise StoreMismatchError(f"Library {str(library_path)!r} was made from store {library['store']['path']!r}, not "
                                 f"from {str(store_path)!r}: its candidates were trained on other rows.")
    recipe.check_split_name(split)
    sections = library["sections"]
    options = [[c for c in library["candidates"] if c["section"] == i] for i in range(1, sections + 1)]
    column = budget.column
    shared = library["teacher"]["shared"][column]
    costs = [[c[column] for c in opts] for opts in options]
    losses = [[_loss(c, predictor, library["task"]) for c in opts] for opts in options]
    cheapest = [min(range(len(o)), key=lambda j: costs[i][j]) for i, o in enumerate(options)]
    floor = shared + sum(costs[i][j] for i, j in enumerate(cheapest))
    if floor > budget.limit:
        name = mix_name([options[i][j]["depth"] for i, j in enumerate(cheapest)])
        raise OptionError(f"No mix meets --budget {budget}: the cheapest, {name}, has {budget.key} "
                          f"{floor:,.4g}{'ms' if budget.key == 'latency' else ''}. Give a larger budget.")
    found = best_mixes(costs, losses, budget.limit, top, shared)
    if not found:  # the floor met the budget in another order of summation: no mix meets it after all
        raise OptionError(f"No mix meets --budget {budget}: the cheapest has {budget.key} {floor:,.4g}. "
                          "Give a larger budget.")
    if library["heldout"]["identity"]["split"] == split:
        log(f"warning: the library scored its candidates on split {split!r}, which the picks are now measured on: "
            "the measured figures flatter the search. Score on a validation split (e.g. cifar10_resnet's or "
            "hf_causal_lm's 'val').")
    out = Path(out) if out is not None else Path(library_path) / "search" / re.sub(r"[^A-Za-z0-9_.=+-]", "-",
                                                                                   f"{budget}-{predictor}")
    picked = {mix_name([options[i][j]["depth"] for i, j in enumerate(m.picks)]): m for m in found}
    depths_everywhere = set.intersection(*({c["depth"] for c in o} for o in options))
    uniform_mixes = {mix_name([d] * sections): d for d in sorted(depths_everywhere)} if uniform else {}
    reference = library["teacher"]["figures"]
    rows = []
    with claim_output(out):
        dataset = recipe.load_split(split)
        latency_input = torch.stack([dataset[i][0] for i in range(min(library["options"]["latency_rows"],
                                                                      len(dataset)))])
        todo = [(name, "searched", rank) for rank, name in enumerate(picked, start=1)]
        todo += [(name, "uniform", None) for name in uniform_mixes if name not in picked]
        for name, kind, rank in todo:
            chosen = picked[name].picks if name in picked else \
                [next(j for j, c in enumerate(o) if c["depth"] == uniform_mixes[name]) for o in options]
            picks = [options[i][j] for i, j in enumerate(chosen)]
            predicted = _predicted(picks, library, predictor, column)
            checkpoint = assemble_mix(recipe, library, picks, out, library_path, opened)
            # A mix of skipped sections only (mix-0-0-0) has nothing to fine-tune: it is measured as assembled.
            tuned = finetune_epochs if any(p["params"] for p in picks) else 0
            if tuned:
                # The fine-tune's folder is keyed by what it starts from and how it trains: a rerun after the
                # library changed, or with other fine-tune settings, trains anew instead of resuming another run.
                key = xxhash.xxh3_64_hexdigest(json.dumps(
                    {"picks": [p["checkpoint"] for p in picks], "finetune": dict(finetune or {}),
                     "epochs": finetune_epochs, "seed": seed, "store": library["store"]["identity"]},
                    sort_keys=True, default=str).encode())[:12]
                [result] = train_blocks(recipe, str(opened.path), [name], out / "finetuned" / key,
                                        BlockTrainOptions(**{**(finetune or {}), "mode": "finetune",
                                                             "init": checkpoint, "epochs": finetune_epochs,
                                                             "seed": seed, "device": device, "evaluate": False,
                                                             "verify": False}),
                                        resume=True, log=lambda _: None)
                checkpoint = result["checkpoint"]
            measured = _measure(recipe, checkpoint, split, device, latency_input)
            row = {"student": name, "kind": kind, "rank": rank, **predicted, **measured,
                   "finetune_epochs": tuned, "checkpoint": checkpoint}
            rows.append(row)
            score = f"accuracy {measured['accuracy']:.4f}" if "accuracy" in measured else \
                f"perplexity {measured.get('perplexity', float('nan')):.4f}"
            log(f"{name} ({kind}{f' #{rank}' if rank else ''}): predicted loss {predicted['predicted_loss']:.4g}, "
                f"{score}, {measured['macs']:,} MACs")
        quality = "accuracy" if library["task"] == "classification" else "perplexity"
        measured_rows = [r for r in rows if r.get(quality) is not None]
        sign = 1.0 if quality == "accuracy" else -1.0
        rho = spearman([-r["predicted_loss"] for r in measured_rows], [sign * r[quality] for r in measured_rows])
        result = {"library": str(library_path), "budget": str(budget), "predictor": predictor, "top": top,
                  "finetune_epochs": finetune_epochs, "finetune": dict(finetune or {}), "split": split,
                  "teacher": reference, "rank_correlation": None if math.isnan(rho) else rho, "students": rows}
        write_json(out / SEARCH_FILE, result)
        write_csv(out / SEARCH_TABLE, rows, COLUMNS)
        _plot(rows, budget, quality, out / PLOT_FILE, f"{recipe.name}: searched mixes under {budget} and uniform mixes")
    result["out"] = str(out)
    return result


def _predicted(picks: Sequence[dict], library: dict, predictor: str, column: str) -> dict:
    """A mix's predicted loss, quality and costs from its candidates' records."""
    teacher = library["teacher"]
    shared = teacher["shared"]
    out = {"predicted_loss": sum(_loss(p, predictor, library["task"]) for p in picks)}
    for key in ("macs", "params", "latency_ms"):
        out[f"predicted_{key}"] = shared[key] + sum(p[key] for p in picks)
    if "accuracy" in teacher["figures"]:
        out["predicted_accuracy"] = teacher["figures"]["accuracy"] + sum(p["swap_accuracy_delta"] for p in picks)
    if "perplexity" in teacher["figures"]:
        ref = teacher["figures"]["perplexity"]
        out["predicted_perplexity"] = ref * math.prod(p["swap_perplexity"] / ref for p in picks)
    return out


def _plot(rows: list[dict], budget: Budget, quality: str, path: Path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    column = budget.column
    for kind, color, marker in (("uniform", "tab:blue", "s"), ("searched", "tab:red", "o")):
        points = sorted((r[column], r[quality], r["student"]) for r in rows if r["kind"] == kind
                        and r.get(quality) is not None)
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=marker, color=color, linestyle="-"
                    if kind == "uniform" else "none", label=f"{kind} mixes")
            for x, y, name in points:
                ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axvline(budget.limit, color="black", linestyle="--", label=f"budget {budget}")
    labels = {"macs": "multiply-adds per sample", "params": "parameters", "latency_ms": "CPU latency (ms, 1 thread)"}
    ax.set_xlabel(labels[column])
    ax.set_ylabel(f"test {quality}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)
