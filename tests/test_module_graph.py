"""The package's shape: subpackages import only downward (recipe -> extraction -> store -> training,
the commands on top), no module imports itself round a cycle, the README's package map lists every
module, and the import paths of earlier releases still work, with a DeprecationWarning.

Imports are read from the source, all of them: relative and absolute, function-local ones, and
``importlib.import_module``/``__import__`` of a literal module name."""

from __future__ import annotations

import ast
import importlib
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import litcache
import litcache.errors
from litcache import _compat

PACKAGE = Path(litcache.__file__).parent
README = PACKAGE.parent / "README.md"

#: Each unit (a subpackage, or a module beside them) and its layer, bottom up. A unit may import
#: only units of lower layers. ``_compat`` is at the bottom: it imports nothing of the package
#: itself (it finds old names by their module's name, when they are asked for).
LAYERS = {
    "_compat": 0, "errors": 0,
    "runtime": 1,
    "views": 2, "models": 2,
    "recipe": 3,
    "sections": 4,
    "store": 5,
    "extraction": 6,
    "training": 7,
    "evaluation": 8, "export": 8, "baselines": 8, "show": 8, "cli_options": 8,
    "sweep_report": 9, "bench": 9, "library": 9,
    "sweeps": 10,
    "cli": 11,
    "_legacy": 12,
}


def module_names() -> dict[str, Path]:
    """'litcache.x.y' -> its file, for every module of the package (packages by their __init__)."""
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _imported(node: ast.AST, package: str) -> list[str]:
    """The dotted names one import statement or call imports (each possibly a module or a name in one)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = package.split(".")[:len(package.split(".")) - node.level + 1]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        return [module] + [f"{module}.{a.name}" for a in node.names]
    if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) and \
            isinstance(node.args[0].value, str):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name in ("import_module", "__import__"):
            target = node.args[0].value
            if target.startswith("."):  # import_module(".x", __package__)
                return [package + target]
            return [target]
    return []


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports, anywhere in its source."""
    modules = module_names()
    graph = {}
    for name, path in sorted(modules.items()):
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            for target in _imported(node, package):
                while target and target not in modules:  # litcache.x.Name -> litcache.x
                    target = target.rpartition(".")[0]
                if target and target != name and target != "litcache":
                    deps.add(target)
        graph[name] = deps
    return graph


def unit(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "__init__"


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


def test_the_graph_sees_every_kind_of_import():
    code = ("from .x import a\nfrom ..store import layout\nimport litcache.training.step\n"
            "def f():\n    from litcache.models import gpt\n    importlib.import_module('litcache.sweeps')\n")
    found = {t for node in ast.walk(ast.parse(code)) for t in _imported(node, "litcache.extraction")}
    assert {"litcache.extraction.x", "litcache.store", "litcache.store.layout", "litcache.training.step",
            "litcache.models.gpt", "litcache.sweeps"} <= found
    graph = import_graph()
    assert "litcache.errors" in graph["litcache.models.gpt"]  # an absolute import
    assert "litcache.training.online" in graph["litcache.training.blocks"]


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_modules():
    assert find_cycle(import_graph()) is None


def test_every_unit_has_a_layer():
    units = {unit(m) for m in module_names()} - {"__init__"}
    assert units == set(LAYERS), units ^ set(LAYERS)


def test_subpackages_import_only_downward():
    upward = [f"{m} -> {d}" for m, deps in import_graph().items() for d in deps
              if unit(m) != "__init__" and unit(d) != unit(m) and LAYERS[unit(d)] >= LAYERS[unit(m)]]
    assert not upward, upward


def test_store_knows_nothing_of_the_stages_and_extraction_nothing_of_training():
    graph = import_graph()
    for module, deps in graph.items():
        if unit(module) == "store":
            assert not {unit(d) for d in deps} & {"extraction", "training"}, module
        if unit(module) == "extraction":
            assert "training" not in {unit(d) for d in deps}, module


def test_foundations_stay_small():
    graph = import_graph()
    # checkpoint I/O needs no model or store code; the metrics are torch and the padding convention.
    assert graph["litcache.runtime.checkpoint"] <= {"litcache.errors", "litcache.runtime.files"}
    assert graph["litcache.training.metrics"] <= {"litcache.runtime.precision", "litcache.store.layout",
                                                  "litcache.runtime.eval_mode"}
    assert graph["litcache.store.layout"] == set() and graph["litcache.runtime.eval_mode"] == set()


def test_readme_package_map_lists_every_module():
    text = README.read_text()
    section = text[text.index("## Package map"):]
    section = section[:section.index("\n## ", 1)]
    listed = set(re.findall(r"^\| `(litcache/[\w/]+\.py)`", section, re.M))
    on_disk = {str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*.py")}
    assert listed == on_disk, {"missing from the map": sorted(on_disk - listed),
                               "not on disk": sorted(listed - on_disk)}


def test_no_public_function_shadows_a_module():
    for name in litcache.__all__:
        value = getattr(litcache, name)
        assert not (PACKAGE / f"{name}.py").exists() and not (PACKAGE / name).is_dir(), name
        assert not isinstance(value, type(litcache)), name


@pytest.mark.parametrize("old", sorted(_compat.MOVED))
def test_old_module_paths_import_with_a_deprecation_warning(old):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to litcache"):
        module = importlib.import_module(old)
    targets = _compat.MOVED[old]
    assert module.__name__ in targets or isinstance(module, _compat._MovedModule)
    # importing an old path never rebinds the public function of the same name
    for name in ("extract", "sweep", "evaluate"):
        assert callable(getattr(litcache, name)) and not isinstance(getattr(litcache, name), type(litcache))


def test_old_names_resolve_to_the_same_objects():
    from litcache.runtime import checkpoint
    from litcache.training import losses, step, teacher

    sys.modules.pop("litcache.train", None)
    with pytest.warns(DeprecationWarning, match="litcache.train moved to"):
        importlib.import_module("litcache.train")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from litcache.data import RowLayout, resolve_device
        from litcache.extract import extract as old_extract
        from litcache.teacher import changed_settings, load_checkpoint, save_atomic, train_teacher, weights_hash
        from litcache.train import kd_loss, step_losses
    from litcache.runtime.devices import resolve_device as new_resolve_device
    from litcache.store.layout import RowLayout as NewRowLayout

    assert train_teacher is teacher.train_teacher and save_atomic is checkpoint.save_atomic
    assert (weights_hash, load_checkpoint, changed_settings) == (checkpoint.weights_hash, checkpoint.load_checkpoint,
                                                                 checkpoint.changed_settings)
    assert kd_loss is losses.kd_loss and step_losses.__module__ == "litcache._legacy"  # its 0.1 signature
    assert step.step_losses.__module__ == "litcache.training.step"
    assert RowLayout is NewRowLayout and resolve_device is new_resolve_device
    assert old_extract is litcache.extract and callable(litcache.extract)


def test_old_store_module_names_warn_and_resolve():
    from litcache.store import encoding, lock

    with pytest.warns(DeprecationWarning, match="litcache.store.DTYPES moved"):
        from litcache.store import DTYPES
    with pytest.warns(DeprecationWarning):
        from litcache.store import store_lock
    assert DTYPES is encoding.DTYPES and store_lock is lock.store_lock


def test_recipe_paths_are_stable_and_quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        from litcache.gpt import gpt
        from litcache.zoo import BasicBlock, cifar_resnet
    from litcache.models import cifar_resnet as new_cifar_resnet
    from litcache.models.gpt import gpt as new_gpt
    from litcache.models.resnet import BasicBlock as NewBasicBlock

    assert (cifar_resnet, gpt, BasicBlock) == (new_cifar_resnet, new_gpt, NewBasicBlock)


def test_an_unknown_old_name_is_an_attribute_error():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old = importlib.import_module("litcache.audit")
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        old.nothing_here


def test_an_old_module_as_an_attribute_of_the_package():
    # 0.1 imported every module with the package, so `import litcache; litcache.checkpoint.save_atomic` worked.
    with pytest.warns(DeprecationWarning, match="litcache.checkpoint moved to litcache.runtime.checkpoint"):
        sys.modules.pop("litcache.checkpoint", None)
        litcache.__dict__.pop("checkpoint", None)  # bound by an earlier import of the old path
        old = litcache.checkpoint
    from litcache.runtime.checkpoint import save_atomic

    assert old.save_atomic is save_atomic
    with pytest.raises(AttributeError):
        litcache.no_such_module


def test_an_old_import_path_warns_where_the_user_wrote_it():
    # Python shows a DeprecationWarning by default only when it is blamed on __main__: the warning must
    # point past litcache's shims and the import machinery, at the line that imported the old path.
    code = "import litcache.train\nfrom litcache.store import DTYPES\nimport litcache\nlitcache.checkpoint\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONWARNINGS": ""})
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "DeprecationWarning" in line]
    assert [line.split(": ")[0] for line in lines] == ["<string>:1", "<string>:2", "<string>:4"], done.stderr
    assert "litcache.store.DTYPES moved to litcache.store.encoding" in lines[1]


def test_old_modules_star_import_and_monkeypatch_the_real_module(monkeypatch):
    namespace: dict = {}
    exec("from litcache.zoo import *", namespace)
    assert {"cifar_resnet", "vdcnn", "stargan_generator", "cifar_vit"} <= set(namespace)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old_extract = importlib.import_module("litcache.extract")
    from litcache.extraction import run

    monkeypatch.setattr(old_extract, "_free_bytes", lambda path: 7)  # a seam of 0.1, patched through its old path
    assert run._free_bytes("anywhere") == 7


def test_functions_of_0_1_keep_their_old_signatures_on_their_old_paths(tiny_recipe, tiny_store):
    from litcache import BlockTrainOptions, open_store
    from litcache.training import config, step
    from litcache.training.student import build_student

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from litcache.block_step import MODES, check_finite_loss, fields_read, head_trains_by_default
        from litcache.train import RESUME_KEYS, resolve_config, step_losses, trainable_parameters

    assert MODES == config.MODES and head_trains_by_default("kd") and len(RESUME_KEYS) == 30
    assert fields_read("ir", 3, 2, 1, 0.0) == ["boundaries/1", "boundaries/2"]
    record = resolve_config(tiny_recipe, BlockTrainOptions(lr=0.05))
    assert isinstance(record, dict) and record["lr"] == 0.05  # 0.1 returned the dict checkpoints hold
    assert set(RESUME_KEYS) == set(config.resume_keys(record))
    store = open_store(tiny_store)
    batch = {k: v for k, v in __import__("litcache").StoreDataset(store, [*store.boundary_names, "logits", "labels"])
             .__getitems__(range(8)).items()}
    _, sectioned = build_student(tiny_recipe, "resnet8", store.module_state("stem"), store.module_state("head"))
    old, _ = step_losses(sectioned, batch, "lit", {"alpha": 0.9, "tau": 4.0, "beta": 0.5})
    new, _ = step.step_losses(sectioned, batch, config.Phase("lit"), config.LossWeights(alpha=0.9, tau=4.0, beta=0.5))
    assert float(old) == float(new)
    assert trainable_parameters(sectioned, "ir", 2) == list(sectioned.sections[1].parameters())
    with pytest.raises(litcache.errors.DivergedError, match="resnet8: the loss became nan in epoch 3"):
        check_finite_loss(torch.tensor(float("nan")), "resnet8", 2)
    with pytest.warns(DeprecationWarning, match="section=I"):
        assert BlockTrainOptions(mode="ir", block=2).block == 2
