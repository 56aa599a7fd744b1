"""The package's module graph: data flows one way (recipe -> extract -> store -> dataset -> train ->
student, the CLI on top), with no import cycle, function-local imports included."""

from __future__ import annotations

import ast
from pathlib import Path

import litcache

PACKAGE = Path(litcache.__file__).parent
#: Modules that train or evaluate students: stage 1 (extraction) must never need them.
TRAINING = {"train", "block_step", "teacher_training", "sweep", "sweep_report", "student", "evaluate", "metrics", "bench"}


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports with ``from .x import`` anywhere in its source."""
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    graph = {}
    for name in sorted(modules):
        deps = set()
        for node in ast.walk(ast.parse((PACKAGE / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                targets = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
                deps.update(t for t in targets if t in modules)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep, path + [dep])):
                return cycle
        state[node] = 2
        return None

    for node in graph:
        if node not in state and (cycle := visit(node, [node])):
            return cycle
    return None


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for dep in graph[todo.pop()] - seen:
            seen.add(dep)
            todo.append(dep)
    return seen


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_litcache_modules():
    assert find_cycle(import_graph()) is None


def test_extraction_does_not_depend_on_training():
    graph = import_graph()
    for stage1 in ("extract", "extract_plan", "extract_loop", "cluster", "teacher", "audit", "store"):
        assert not reachable(graph, stage1) & TRAINING, stage1


def test_teacher_student_and_evaluation_are_layered():
    graph = import_graph()
    assert graph["checkpoint"] <= {"errors", "location"}  # checkpoint I/O needs no model code
    # losses: IGNORE_INDEX; eval_mode: the evaluating() context. Both are modules of torch only.
    assert graph["metrics"] <= {"precision", "losses", "eval_mode"}
    assert graph["losses"] == set() and graph["eval_mode"] == set()
    assert not {"evaluate", "teacher_training", "train"} & (reachable(graph, "student") | reachable(graph, "teacher"))


def test_names_of_earlier_releases_still_import():
    # User code written against earlier releases imported these from their old modules.
    from litcache import checkpoint, teacher_training
    from litcache.teacher import changed_settings, load_checkpoint, save_atomic, train_teacher, weights_hash
    from litcache.train import kd_loss, step_losses  # noqa: F401

    assert train_teacher is teacher_training.train_teacher and save_atomic is checkpoint.save_atomic
    assert (weights_hash, load_checkpoint, changed_settings) == (checkpoint.weights_hash, checkpoint.load_checkpoint,
                                                                 checkpoint.changed_settings)
