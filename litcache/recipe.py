"""Recipes: what to distil, described as one frozen object in a plain Python file.

A recipe file in ``pipelines/`` (or any ``module:attr``) defines ``recipe = Recipe(...)``.
Recipes are Python that the user chose to run; litcache imports them as such.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import math
import sys
import tokenize
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence, Union

import torch
import torch.nn as nn
import xxhash
from torch.utils.data import Dataset

from .errors import LitcacheError, OptionError, RecipeError
from .runtime.precision import PRECISIONS
from .views import Augmentation

__all__ = ["Recipe", "TrainConfig", "DistillConfig", "ModuleRef", "TASKS", "SCHEDULES", "IR_LOSSES", "STUDENT_INITS",
           "mix_name", "mix_depths", "load_recipe", "import_beside"]

#: What a recipe's model outputs, which decides how ``litcache evaluate`` scores it:
#: "classification" (logits; accuracy), "generation" (an image; error against the teacher's), or
#: "language_model" (next-token logits (T, vocab) per row, targets (T,) padded with -100; perplexity).
TASKS = ("classification", "generation", "language_model")

#: Where a piece of the cut (stem, a section, head) lives in a model: a dotted module name, several names run in
#: order, or a callable that takes the model and returns a module.
ModuleRef = Union[str, Sequence[str], Callable[[nn.Module], nn.Module]]


OPTIMIZERS = ("sgd", "adam", "adamw")
#: IR losses of a section's output against the teacher's: "mse" (the paper's), or "cosine",
#: 1 - cosine similarity along the feature axis (hidden size of a residual stream, channels of a map).
IR_LOSSES = ("mse", "cosine", "relative")
#: How a student's sections start: "scratch" (the recipe's initialisation) or "teacher-blocks", each
#: student section from evenly spaced blocks of the teacher's section (every other block of two, as
#: DistilBERT initialises its layers); the teacher's section weights come from the store.
STUDENT_INITS = ("scratch", "teacher-blocks")
#: The modes a recipe may make train-blocks' default (DistillConfig.mode): those that need no --init.
DEFAULT_MODES = ("lit", "kd", "ir")
#: Students named by their blocks per section, "mix-3-0-5", are built by ``Recipe.student_depths``.
MIX_PREFIX = "mix-"


def mix_name(depths: Sequence[int]) -> str:
    """The student name of a mix of ``depths`` blocks per section: (3, 0, 5) -> "mix-3-0-5"."""
    return MIX_PREFIX + "-".join(str(int(d)) for d in depths)


def mix_depths(name: str) -> tuple[int, ...] | None:
    """The blocks per section a mix's name gives, or None if ``name`` is not a mix."""
    if not name.startswith(MIX_PREFIX):
        return None
    parts = name[len(MIX_PREFIX):].split("-")
    return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else None


#: Learning-rate schedules: "multistep" (x gamma at each milestone epoch, the LIT paper's), and two
#: for short budgets, both with a linear or cosine warm-up over the first ``warmup`` of the steps:
#: "cosine" (cosine decay to 0) and "onecycle" (torch's OneCycleLR: from lr/25 up to lr and down
#: to lr/25e4, momentum cycled inversely between momentum + 0.05 and momentum - 0.05).
SCHEDULES = ("multistep", "cosine", "onecycle")
_ONECYCLE_DIV, _ONECYCLE_FINAL_DIV, _ONECYCLE_MOMENTUM_SPAN = 25.0, 1e4, 0.05


def _cos_anneal(start: float, end: float, fraction: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * fraction) + 1.0)


@dataclass(frozen=True)
class TrainConfig:
    """An optimizer and a learning-rate schedule. SGD with momentum, as in the LIT paper's released
    code for classifiers; Adam (with ``betas``) for the StarGAN generator; AdamW (decoupled weight
    decay) for transformers."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    optimizer: str = "sgd"
    betas: tuple[float, float] = (0.9, 0.999)
    #: One of SCHEDULES; the lr (and for onecycle the momentum) is set before every step.
    schedule: str = "multistep"
    #: Fraction of all steps spent warming up (cosine, onecycle); onecycle's peak comes there.
    warmup: float = 0.0
    nesterov: bool = False
    #: After every epoch, re-estimate the BatchNorm running statistics over one pass of the training
    #: rows (train-mode forwards, no gradient, every batch weighed the same) before the epoch is scored
    #: and saved: for data whose batches differ so much that the running average misleads at test time
    #: (reviews_vdcnn: short texts padded to 256 characters).
    precise_bn: bool = False

    def with_flags(self, **flags) -> "TrainConfig":
        """This config with the command line's values (None: keep the recipe's); a bad combination is
        an OptionError naming the flags (e.g. --schedule onecycle without --warmup)."""
        try:
            return replace(self, **{k: v for k, v in flags.items() if v is not None})
        except RecipeError as exc:
            raise OptionError(str(exc).replace("TrainConfig.", "--")) from None

    def make_optimizer(self, params) -> torch.optim.Optimizer:
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)
        if self.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
                               nesterov=self.nesterov)

    def schedule_at(self, epoch: int, step: int, steps_per_epoch: int) -> tuple[float, float]:
        """(lr, momentum) for step ``step`` of epoch ``epoch`` (both from 0): a pure function of the
        position, so a resumed run continues exactly where it stopped."""
        if self.schedule == "multistep":
            return self.lr * self.gamma ** sum(1 for m in self.milestones if epoch >= m), self.momentum
        total = self.epochs * max(1, steps_per_epoch)
        t = min(epoch * steps_per_epoch + step, total - 1)
        warm = int(self.warmup * total)
        if self.schedule == "cosine":
            if t < warm:
                return self.lr * (t + 1) / warm, self.momentum
            return _cos_anneal(self.lr, 0.0, (t - warm) / max(1, total - warm)), self.momentum
        # onecycle, as torch.optim.lr_scheduler.OneCycleLR (cos annealing, two phases)
        low, high = self.momentum - _ONECYCLE_MOMENTUM_SPAN, self.momentum + _ONECYCLE_MOMENTUM_SPAN
        start, final = self.lr / _ONECYCLE_DIV, self.lr / _ONECYCLE_DIV / _ONECYCLE_FINAL_DIV
        peak = max(1.0, self.warmup * total - 1)  # a step index, fractional as in torch
        if t <= peak:
            f = t / peak
            return _cos_anneal(start, self.lr, f), _cos_anneal(high, low, f)
        f = (t - peak) / max(1, total - 1 - peak)
        return _cos_anneal(self.lr, final, f), _cos_anneal(low, high, f)

    def apply_schedule(self, optimizer: torch.optim.Optimizer, epoch: int, step: int, steps_per_epoch: int) -> float:
        """Set the lr (and the momentum where the schedule moves it) of every group; returns the lr."""
        lr, momentum = self.schedule_at(epoch, step, steps_per_epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
            if self.schedule == "onecycle":
                if "betas" in group:
                    group["betas"] = (momentum, group["betas"][1])
                else:
                    group["momentum"] = momentum
        return lr

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise RecipeError(f"Expected TrainConfig.optimizer in {OPTIMIZERS}, got {self.optimizer!r} instead.")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise RecipeError(f"Expected TrainConfig.{name} >= 1, got {getattr(self, name)} instead.")
        for name in ("lr", "momentum", "weight_decay", "gamma", "warmup"):
            if not math.isfinite(getattr(self, name)):
                raise RecipeError(f"Expected TrainConfig.{name} to be a finite number, got {getattr(self, name)} "
                                  "instead.")
        if self.lr <= 0:
            raise RecipeError(f"Expected TrainConfig.lr > 0, got {self.lr} instead.")
        # An epoch below 1, or one given twice, silently divides every epoch's lr once more by 1/gamma.
        if any(m < 1 for m in self.milestones) or len(set(self.milestones)) != len(self.milestones):
            raise RecipeError(f"Expected TrainConfig.milestones to be distinct epochs >= 1 (the lr drops at the start "
                              f"of each), got {list(self.milestones)} instead.")
        if self.schedule not in SCHEDULES:
            raise RecipeError(f"Expected TrainConfig.schedule in {SCHEDULES}, got {self.schedule!r} instead.")
        if not 0.0 <= self.warmup < 1.0:
            raise RecipeError("Expected TrainConfig.warmup in [0, 1) (a fraction of the steps), got "
                              f"{self.warmup} instead.")
        if self.schedule == "onecycle" and self.warmup <= 0:
            raise RecipeError("TrainConfig.schedule 'onecycle' peaks at the end of its warm-up: give warmup > 0 "
                              "(0.25 is torch's OneCycleLR default).")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum <= 0):
            raise RecipeError("TrainConfig.nesterov needs the sgd optimizer with momentum > 0.")


@dataclass(frozen=True)
class DistillConfig:
    """LIT's two phases and its loss weights (defaults: the released CIFAR ResNet code)."""

    lit: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=175, batch_size=32, lr=0.1, milestones=(100,)))
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=125, batch_size=32, lr=0.01,
                                                                      milestones=(55,)))
    #: What `train-blocks` trains without --mode: "lit", or "kd" where plain KD from the store measured better
    #: (the byte-level GPT, benchmarks/README.md), or "ir".
    mode: str = "lit"
    #: Weight of the hard-label term inside the KD loss.
    alpha: float = 0.95
    #: Softmax temperature of the KD loss.
    tau: float = 6.0
    #: Weight of KD against the summed IR losses in the LIT phase (0: IR only).
    beta: float = 0.75
    #: Factor on the whole LIT-phase loss. The released CIFAR code halves it,
    #: ``(beta * KD + (1 - beta) * sum IR) / 2``, which under SGD halves the step (VDCNN's does not).
    loss_scale: float = 1.0
    #: One of IR_LOSSES.
    ir_loss: str = "mse"
    #: The axis of a boundary batch (N, ...) that holds the features, along which the cosine IR loss
    #: compares: 1, the channels of (C, H, W) or (C, L) maps; -1, the hidden size of (tokens, hidden).
    ir_feature_axis: int = 1

    def __post_init__(self) -> None:
        if self.mode not in DEFAULT_MODES:
            raise RecipeError(f"Expected DistillConfig.mode in {DEFAULT_MODES}, got {self.mode!r} instead.")
        if self.ir_loss not in IR_LOSSES:
            raise RecipeError(f"Expected DistillConfig.ir_loss in {IR_LOSSES}, got {self.ir_loss!r} instead.")
        if self.ir_feature_axis == 0:
            raise RecipeError("Expected DistillConfig.ir_feature_axis to name a feature axis (1 for channels, -1 for a "
                              "transformer's hidden size), got 0, the batch axis, instead.")
        for name in ("alpha", "beta"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise RecipeError(f"Expected DistillConfig.{name} in [0, 1], got {getattr(self, name)} instead.")
        if self.tau <= 0:
            raise RecipeError(f"Expected DistillConfig.tau > 0, got {self.tau} instead.")
        if self.loss_scale <= 0:
            raise RecipeError(f"Expected DistillConfig.loss_scale > 0, got {self.loss_scale} instead.")


@dataclass(frozen=True)
class Recipe:
    """Everything litcache needs to know about one teacher/student family and its data."""

    name: str
    build_teacher: Callable[[], nn.Module]
    #: Student variants by name; each builds a model of the teacher's family.
    students: Mapping[str, Callable[[], nn.Module]]
    stem: ModuleRef
    sections: tuple[ModuleRef, ...]
    head: ModuleRef
    #: Returns the dataset of one split; items are (input tensor (C, H, W), int label).
    load_split: Callable[[str], Dataset]
    num_classes: int
    splits: tuple[str, ...] = ("train", "test")
    #: Per-view augmentation, applied to the splits in ``augment_splits`` only.
    augment: Augmentation | None = None
    augment_splits: tuple[str, ...] = ("train",)
    #: Default teacher checkpoint (relative paths are relative to the working directory).
    teacher_checkpoint: str | None = None
    teacher_training: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    description: str = ""
    #: One of TASKS. Generation recipes store the teacher's output image as ``logits``; they train
    #: with IR only (beta = 0) and are evaluated against the teacher's outputs.
    task: str = "classification"
    #: Default --precision of every command that runs this recipe's networks (see litcache.runtime.precision).
    precision: str = "auto"
    #: Default --student-init of train-blocks: one of STUDENT_INITS.
    student_init: str = "scratch"
    #: Builds a student of the given blocks per section (one count per section; 0: the family's
    #: training-free section, such as a pointwise map, where it has one). With it, students named
    #: ``mix-3-0-5`` exist besides ``students``: a block library's candidates and mixes (``litcache library``).
    student_depths: Callable[[tuple[int, ...]], nn.Module] | None = None
    #: Default --views of `litcache extract`: the augmented views of each sample a store keeps. LIT
    #: over one fixed view overfits it (benchmarks/README.md, fidelity: on CIFAR-10, 81.2% from 1
    #: view against 84.4% from 8, the same as scratch).
    views: int = 1
    #: Filled by ``load_recipe``: where the recipe came from and a hash of its code (``recipe_code_hash``:
    #: comments, docstrings and blank lines left out, so that editing a recipe's prose keeps its stores).
    source: str = ""
    source_hash: str = ""
    #: The hash of the recipe file's bytes, which stores extracted before 0.3 recorded instead: such a
    #: store still resumes, and is still found complete, while its recipe file is byte for byte the same.
    source_bytes_hash: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise RecipeError(f"Expected Recipe.name to be a non-empty string, got {self.name!r} instead.")
        if not callable(self.build_teacher):
            raise RecipeError("Expected Recipe.build_teacher to be a callable that returns the teacher model.")
        if not isinstance(self.students, Mapping) or not self.students:
            raise RecipeError("Expected Recipe.students to map at least one variant name to a builder.")
        if self.student_depths is not None and not callable(self.student_depths):
            raise RecipeError("Expected Recipe.student_depths to be a callable taking blocks per section, got "
                              f"{self.student_depths!r}.")
        for student_name, builder in self.students.items():
            if not callable(builder):
                raise RecipeError(f"Expected Recipe.students[{student_name!r}] to be callable, got {builder!r}.")
        if not isinstance(self.sections, tuple) or not self.sections:
            raise RecipeError("Expected Recipe.sections to be a non-empty tuple of module references.")
        if not callable(self.load_split):
            raise RecipeError("Expected Recipe.load_split to be a callable taking a split name.")
        if self.task not in TASKS:
            raise RecipeError(f"Expected Recipe.task in {TASKS}, got {self.task!r} instead.")
        if self.num_classes < 1:
            raise RecipeError(f"Expected Recipe.num_classes >= 1, got {self.num_classes} instead.")
        if self.student_init not in STUDENT_INITS:
            raise RecipeError(f"Expected Recipe.student_init in {STUDENT_INITS}, got {self.student_init!r} instead.")
        if self.precision not in PRECISIONS:
            raise RecipeError(f"Expected Recipe.precision in {PRECISIONS}, got {self.precision!r} instead.")
        if not isinstance(self.views, int) or isinstance(self.views, bool) or self.views < 1:
            raise RecipeError("Expected Recipe.views to be an integer >= 1 (extract's default views), got "
                              f"{self.views!r} instead.")
        if self.augment is not None and not isinstance(self.augment, Augmentation):
            raise RecipeError(
                "Expected Recipe.augment to provide param_names, sample(), apply() and describe() "
                f"(see litcache.views.CropFlip), got {type(self.augment).__name__} instead."
            )
        for split in self.augment_splits:
            if split not in self.splits:
                raise RecipeError(f"Recipe.augment_splits names {split!r}, which is not one of the "
                                  f"splits {list(self.splits)}.")

    def check_split_name(self, split: str) -> None:
        if split not in self.splits:
            raise RecipeError(f"Expected a split of recipe {self.name!r} ({', '.join(self.splits)}), got "
                              f"{split!r} instead.")

    def augmentation_for(self, split: str) -> Augmentation | None:
        return self.augment if split in self.augment_splits else None

    def student_builder(self, name: str) -> Callable[[], nn.Module]:
        if name in self.students:
            return self.students[name]
        depths = mix_depths(name)
        if depths is not None and self.student_depths is not None:
            if len(depths) != len(self.sections):
                raise RecipeError(f"Expected student {name!r} to give blocks for each of the {len(self.sections)} "
                                  f"sections of recipe {self.name!r}, got {len(depths)}.")
            return lambda: self.student_depths(depths)
        mixes = f", or mixes such as {mix_name([1] * len(self.sections))!r}" if self.student_depths else ""
        raise RecipeError(f"Expected a student of recipe {self.name!r} ({', '.join(self.students)}{mixes}), got "
                          f"{name!r} instead.")


def import_beside(recipe_file: str | Path, name: str):
    """Import ``name.py`` from the folder of ``recipe_file`` (recipes are files, not a package), once
    per process, so recipes can share helper modules such as ``pipelines/_data.py``."""
    path = Path(recipe_file).resolve().with_name(f"{name}.py")
    key = f"litcache_recipe_helper_{name}_{xxhash.xxh3_64_hexdigest(str(path).encode())}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[key]
            raise
    return sys.modules[key]


def recipe_code_hash(source: bytes) -> str:
    """xxh3 of a recipe module's code: its text less comments, docstrings (statements that are a plain
    string literal alone) and blank lines, each line's trailing whitespace dropped. Works on the text,
    not on tokens or the AST, whose form changes between Python versions (f-strings in 3.12)."""
    prose: list[tuple[tuple[int, int], tuple[int, int]]] = []  # (start, end) spans of comments and docstrings
    statement: list[tokenize.TokenInfo] = []
    encoding = "utf-8"
    for token in tokenize.tokenize(io.BytesIO(source).readline):
        if token.type == tokenize.ENCODING:  # the first token: the file's coding cookie, or utf-8
            encoding = token.string
        elif token.type == tokenize.COMMENT:
            prose.append((token.start, token.end))
        elif token.type in (tokenize.NEWLINE, tokenize.ENDMARKER):
            if statement and all(t.type == tokenize.STRING and "f" not in t.string.split(t.string[-1])[0].lower()
                                 for t in statement):
                prose.append((statement[0].start, statement[-1].end))
            statement = []
        elif token.type not in (tokenize.NL, tokenize.INDENT, tokenize.DEDENT):
            statement.append(token)
    lines = source.decode(encoding).split("\n")  # the rows tokenize counts
    for (row0, col0), (row1, col1) in sorted(prose, reverse=True):  # from the end, so earlier spans stay valid
        lines[row0 - 1:row1] = [lines[row0 - 1][:col0] + lines[row1 - 1][col1:]]
    code = "\n".join(line.rstrip() for line in lines if line.strip())
    return xxhash.xxh3_64_hexdigest(code.encode())


def load_recipe(ref: str | Path) -> Recipe:
    """Load a recipe from a ``.py`` file (its ``recipe`` attribute) or from ``module:attr``."""
    ref = str(ref)
    if ref.endswith(".py") or Path(ref).is_file():
        path = Path(ref)
        if not path.is_file():
            raise RecipeError(f"Expected a recipe file, but {ref!r} does not exist. Give a path such as "
                              "pipelines/mnist_resnet.py.")
        if path.suffix != ".py":  # importlib finds no loader for other suffixes
            raise RecipeError(f"Expected a recipe as a .py file or module:attr, got {ref!r}, a file that is not Python "
                              "(.py) instead. Give a recipe file such as pipelines/mnist_resnet.py, or module:attr.")
        module_name = f"litcache_recipe_{xxhash.xxh3_64_hexdigest(str(path.resolve()).encode())}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses and pickling need the module registered
        try:
            spec.loader.exec_module(module)
        except SystemExit as exc:  # sys.exit() in a recipe would end litcache silently, with the recipe's code
            sys.modules.pop(module_name, None)
            raise RecipeError(f"Recipe file {ref!r} called sys.exit({exc.code!r}) while loading; a recipe must define "
                              "`recipe = litcache.Recipe(...)` and return. Remove the exit from the recipe.") from None
        except LitcacheError:  # litcache's own checks, made while the recipe loads: already a whole message
            sys.modules.pop(module_name, None)
            raise
        except Exception as exc:  # a recipe is user code: report any failure as a recipe error
            sys.modules.pop(module_name, None)
            raise RecipeError(f"Recipe file {ref!r} failed to load: {type(exc).__name__}: {exc}") from exc
        attr, source_file = "recipe", path
    elif ":" in ref:
        module_path, attr = ref.split(":", 1)
        try:
            module = importlib.import_module(module_path)
        except SystemExit as exc:
            raise RecipeError(f"Recipe module {module_path!r} called sys.exit({exc.code!r}) while importing; a recipe "
                              "module must define the recipe and return.") from None
        except Exception as exc:
            raise RecipeError(f"Recipe module {module_path!r} failed to import: {type(exc).__name__}: {exc}") from exc
        source_file = Path(module.__file__) if getattr(module, "__file__", None) else None
    else:
        found = f"{ref!r}, a directory," if Path(ref).is_dir() else repr(ref)
        raise RecipeError(f"Expected a recipe as a .py file or module:attr, got {found} instead. "
                          "Give a recipe file such as pipelines/mnist_resnet.py, or module:attr.")

    recipe = getattr(module, attr, None)
    if not isinstance(recipe, Recipe):
        found = "nothing" if recipe is None else type(recipe).__name__
        raise RecipeError(f"Expected {ref!r} to define {attr} = litcache.Recipe(...), found {found} instead.")
    if source_file:
        text = source_file.read_bytes()
        source_hash, bytes_hash = recipe_code_hash(text), xxhash.xxh3_64_hexdigest(text)
    else:
        source_hash = bytes_hash = xxhash.xxh3_64_hexdigest(ref.encode())
    # Recipes are frozen; record provenance on a copy without mutating the user's object.
    return replace(recipe, source=ref, source_hash=source_hash, source_bytes_hash=bytes_hash)
