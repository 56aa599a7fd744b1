"""How well do a student's sections stand in for the teacher's? The measure behind LIT's premise.

    python benchmarks/section_fit.py --recipe pipelines/cifar10_resnet.py --teacher T.pt STUDENT.pt [...]

For each student checkpoint (a LIT phase's student.pt, say) on --rows images of the test split,
evenly spaced, each section i is scored three ways, all in eval mode:

  given teacher input   |S_i(T_{i-1}) - T_i|^2 / |T_i|^2: what the LIT phase trains, on images it never saw
  along its own path    |S_i(...S_1(T_0)) - T_i|^2 / |T_i|^2: the error the composed student carries,
                        grown by every section before it
  swapped in            the teacher's top-1 with only section i replaced by the student's

and the composed student (its own head after its sections, from the stem output the teacher and a
LIT student share) gets its top-1.
A student whose sections fit (small errors, swapped-in accuracy near the teacher's) is a good start for
the fine-tune; one whose errors compound along its own path is not, whatever the fine-tune after it.
Set the recipe's environment (e.g. LITCACHE_CIFAR10_DIR, LITCACHE_RESNEXT_SIZE) as for training.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from _common import save_results, set_torch_threads  # beside this script
from torch.utils.data import DataLoader, Subset


@torch.inference_mode()
def section_fit(recipe, teacher, student, rows: int, batch_size: int) -> dict:
    from litcache.sections import cut_sections

    t, s = cut_sections(teacher.eval(), recipe), cut_sections(student.eval(), recipe)
    test = recipe.load_split("test")
    # Evenly spaced rows: a split stored class by class (ImageFolder) then gives every class its share.
    picked = torch.linspace(0, len(test) - 1, min(rows, len(test))).round().long().unique().tolist()
    loader = DataLoader(Subset(test, picked), batch_size=batch_size)
    n = len(t.sections)
    sums = {k: [0.0] * n for k in ("given_error", "path_error", "energy", "swapped_correct")}
    correct = {"teacher": 0, "student": 0}
    count = 0
    for x, y in loader:
        bounds, logits = t.boundaries(x)
        own = bounds[0]
        for i in range(n):
            given = s.sections[i](bounds[i])
            own = s.sections[i](own)
            sums["given_error"][i] += float((given - bounds[i + 1]).pow(2).sum())
            sums["path_error"][i] += float((own - bounds[i + 1]).pow(2).sum())
            sums["energy"][i] += float(bounds[i + 1].pow(2).sum())
            swapped = t.head(t.run_sections(given, start=i + 1)[-1] if i + 1 < n else given)
            sums["swapped_correct"][i] += int((swapped.argmax(1) == y).sum())
        correct["teacher"] += int((logits.argmax(1) == y).sum())
        correct["student"] += int((s.head(own).argmax(1) == y).sum())
        count += len(y)
    return {"rows": count, "teacher_accuracy": correct["teacher"] / count,
            "composed_accuracy": correct["student"] / count,
            "sections": [{"section": i + 1,
                          "given_teacher_input": sums["given_error"][i] / sums["energy"][i],
                          "along_own_path": sums["path_error"][i] / sums["energy"][i],
                          "swapped_in_accuracy": sums["swapped_correct"][i] / count} for i in range(n)]}


def table(name: str, fit: dict) -> str:
    lines = [f"{name}: composed student {100 * fit['composed_accuracy']:.2f}% top-1, teacher "
             f"{100 * fit['teacher_accuracy']:.2f}% ({fit['rows']} test images)",
             "| section | error given the teacher's input | error along its own path | teacher top-1 with it "
             "swapped in |", "|---|---|---|---|"]
    lines += [f"| {r['section']} | {100 * r['given_teacher_input']:.1f}% | {100 * r['along_own_path']:.1f}% | "
              f"{100 * r['swapped_in_accuracy']:.2f}% |" for r in fit["sections"]]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("students", nargs="+", help="student checkpoints (train-blocks' student.pt)")
    p.add_argument("--recipe", required=True, help="the recipe file the students were trained with")
    p.add_argument("--teacher", required=True, help="the teacher checkpoint")
    p.add_argument("--rows", type=int, default=2000, help="test images scored, evenly spaced over the split")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--results", help="also write the figures to this JSON file, keyed by checkpoint")
    args = p.parse_args()
    from litcache import load_recipe
    from litcache.extraction.teacher import load_teacher
    from litcache.training.student import load_student

    recipe = load_recipe(args.recipe)
    teacher, _, _ = load_teacher(recipe, args.teacher)
    figures = {}
    for path in args.students:
        figures[path] = section_fit(recipe, teacher, load_student(path, recipe), args.rows, args.batch_size)
        print(table(path, figures[path]), flush=True)
    if args.results:
        save_results(Path(args.results), {"runs": figures})
        print(f"wrote {args.results}")


if __name__ == "__main__":
    set_torch_threads()
    main()
