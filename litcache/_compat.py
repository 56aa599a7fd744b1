"""Import paths of earlier releases, mapped onto today's modules.

Until 0.2 the package was 43 modules side by side (``litcache.train``, ``litcache.store``,
``litcache.data``, ...). User code that imports those paths keeps working: importing one gives a
module that finds each name in the modules that hold it now, with one DeprecationWarning naming
them. ``litcache.zoo`` and ``litcache.gpt``, which recipe files import, are stable names of
``litcache.models`` and ``litcache.models.gpt`` and do not warn. See CHANGELOG.md.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

__all__ = ["MOVED", "STABLE", "install"]

_FAMILIES = ("litcache.models.resnet", "litcache.models.resnext", "litcache.models.vdcnn", "litcache.models.stargan",
             "litcache.models.vit")

#: old module -> the modules that now hold its names, searched in order.
MOVED: dict[str, tuple[str, ...]] = {
    "litcache.audit": ("litcache.store.verify", "litcache.extraction.replay"),
    "litcache.block_step": ("litcache.training.step", "litcache.training.config", "litcache.training.loop"),
    "litcache.checkpoint": ("litcache.runtime.checkpoint",),
    "litcache.cluster": ("litcache.extraction.distributed",),
    "litcache.data": ("litcache.store.layout", "litcache.extraction.rows", "litcache.runtime.devices"),
    "litcache.dataset": ("litcache.training.dataset",),
    "litcache.debris": ("litcache.store.debris", "litcache.store.layout"),
    "litcache.encoding": ("litcache.store.encoding",),
    "litcache.eval_mode": ("litcache.runtime.eval_mode",),
    "litcache.evaluate": ("litcache.evaluation",),
    "litcache.extract": ("litcache.extraction.run", "litcache.extraction.plan", "litcache.store.layout"),
    "litcache.extract_loop": ("litcache.extraction.loop",),
    "litcache.extract_plan": ("litcache.extraction.plan",),
    "litcache.identity": ("litcache.store.identity",),
    "litcache.json_fields": ("litcache.store.json_fields", "litcache.errors"),
    "litcache.location": ("litcache.store.location", "litcache.runtime.files"),
    "litcache.lock": ("litcache.store.lock", "litcache.store.layout"),
    "litcache.losses": ("litcache.training.losses", "litcache.store.layout"),
    "litcache.manifest": ("litcache.store.manifest", "litcache.store.layout", "litcache.errors"),
    "litcache.metrics": ("litcache.training.metrics",),
    "litcache.online": ("litcache.training.online",),
    "litcache.precision": ("litcache.runtime.precision",),
    "litcache.progress": ("litcache.runtime.progress",),
    "litcache.shards": ("litcache.store.shards",),
    "litcache.space": ("litcache.store.space",),
    "litcache.student": ("litcache.training.student",),
    "litcache.sweep": ("litcache.sweeps",),
    "litcache.teacher": ("litcache.extraction.teacher", "litcache.runtime.checkpoint", "litcache.training.teacher"),
    "litcache.teacher_rows": ("litcache.extraction.teacher_outputs",),
    "litcache.teacher_training": ("litcache.training.teacher",),
    "litcache.train": ("litcache.training.blocks", "litcache.training.config", "litcache.training.step",
                       "litcache.training.losses", "litcache.training.loop"),
}
#: Functions of 0.1 whose signature changed in 0.2, kept with their old signature in ``litcache._legacy``
#: for the old module paths (old module -> {name: name in _legacy}).
_STEP = {"step_losses": "step_losses", "train_step": "train_step", "trainable_parameters": "trainable_parameters",
         "set_train_mode": "set_train_mode", "fields_read": "fields_read", "check_finite_loss": "check_finite_loss"}
LEGACY: dict[str, dict[str, str]] = {
    "litcache.block_step": _STEP,
    "litcache.train": {**_STEP, "resolve_config": "resolve_config", "requested_precision": "requested_precision",
                       "RESUME_KEYS": "RESUME_KEYS"},
}
#: Names ``litcache.store`` held as a module that its package does not export.
STORE_MODULE = ("litcache.store.encoding", "litcache.store.lock", "litcache.store.layout", "litcache.store.manifest",
                "litcache.store.arrays")
#: Paths recipe files import: kept without a warning.
STABLE: dict[str, tuple[str, ...]] = {
    "litcache.zoo": ("litcache.models", *_FAMILIES),
    "litcache.gpt": ("litcache.models.gpt",),
}


def holder(name: str, modules: tuple[str, ...], old: str) -> types.ModuleType:
    """The first of ``modules`` that has ``name`` (or the function of 0.1 kept in ``_legacy``)."""
    for target in modules:
        module = importlib.import_module(target)
        if hasattr(module, name):
            return module
    raise AttributeError(f"module {old!r} has no attribute {name!r} (its names moved to {', '.join(modules)})")


def find(name: str, modules: tuple[str, ...], old: str):
    """``name`` as the old module ``old`` gave it: a function of 0.1 whose signature changed comes from
    ``_legacy``; any other name from the first of ``modules`` that has it."""
    legacy = LEGACY.get(old, {})
    if name in legacy:
        return getattr(importlib.import_module(f"{__package__}._legacy"), legacy[name])
    return getattr(holder(name, modules, old), name)


class _MovedModule(types.ModuleType):
    """An old module path: every attribute is looked up in the modules that hold it now, ``from OLD
    import *`` gives their public names, and setting a name (a monkeypatch) sets it where it lives."""

    def __getattr__(self, name: str):
        targets = self.__dict__["_targets"]
        if name == "__all__":
            names = {n for t in targets for n in getattr(importlib.import_module(t), "__all__", ())}
            return sorted(names | set(LEGACY.get(self.__name__, {})))
        if name.startswith("__"):
            raise AttributeError(name)
        return find(name, targets, self.__name__)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self.__getattr__("__all__")))

    def __setattr__(self, name: str, value) -> None:
        if name.startswith("__") or name in ("_targets", "_replaced"):
            return super().__setattr__(name, value)
        try:
            module = holder(name, self.__dict__["_targets"], self.__name__)
        except AttributeError:
            return super().__setattr__(name, value)
        # What was there first, for ``del`` to put back (pytest's monkeypatch undoes a patch by deleting it).
        self.__dict__.setdefault("_replaced", {}).setdefault(name, (module, getattr(module, name)))
        setattr(module, name, value)

    def __delattr__(self, name: str) -> None:
        replaced = self.__dict__.get("_replaced", {})
        if name in replaced:
            module, original = replaced.pop(name)
            setattr(module, name, original)
        else:
            super().__delattr__(name)


def deprecated(old: str, modules: tuple[str, ...] | str) -> None:
    where = modules if isinstance(modules, str) else " and ".join(modules)
    warnings.warn(f"{old} moved to {where} in litcache 0.2; import from there (the old path will go in a later "
                  "release).", DeprecationWarning, stacklevel=_caller_level())


def _caller_level() -> int:
    """The ``stacklevel`` that blames a warning on the code that imported the old path: the first frame
    above ``deprecated()`` that is neither this package's shims nor the import machinery. warnings does
    not count frames of importlib's bootstrap, so neither does this."""
    frame, level = sys._getframe(2), 2  # level 1 is deprecated(), level 2 its caller
    while frame is not None and _shim(frame):
        frame = frame.f_back
        if frame is not None and not _bootstrap(frame):
            level += 1
    return level


def _shim(frame) -> bool:
    return (frame.f_globals.get("__name__") in (__name__, __package__, f"{__package__}.store")
            or "importlib" in frame.f_code.co_filename)


def _bootstrap(frame) -> bool:
    filename = frame.f_code.co_filename
    return "importlib" in filename and "_bootstrap" in filename


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED or fullname in STABLE:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        module = _MovedModule(spec.name)
        module.__dict__["_targets"] = MOVED.get(spec.name) or STABLE[spec.name]
        return module

    def exec_module(self, module) -> None:
        targets = module.__dict__["_targets"]
        if module.__name__ in MOVED:
            deprecated(module.__name__, targets)
        if len(targets) == 1:  # one home: the old path is that very module (monkeypatching it patches the real one)
            sys.modules[module.__name__] = importlib.import_module(targets[0])


class _Package(types.ModuleType):
    """The ``litcache`` package. An old module reached as an attribute (``litcache.checkpoint.save_atomic``
    after ``import litcache``, which bound every module in 0.1) is imported on first use; and importing
    an old module path (``litcache.extract``) must not replace the public function of the same name, as
    the import system would by binding the submodule on its parent."""

    def __getattr__(self, name: str):
        old = f"{self.__name__}.{name}"
        if old in MOVED or old in STABLE:
            return importlib.import_module(old)
        raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")

    def __setattr__(self, name: str, value) -> None:
        current = self.__dict__.get(name)
        if isinstance(value, types.ModuleType) and callable(current) and not isinstance(current, types.ModuleType):
            return
        super().__setattr__(name, value)


def install(package: types.ModuleType) -> None:
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())
    package.__class__ = _Package
