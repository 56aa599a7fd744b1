"""What a train-blocks run trains: its flags (``BlockTrainOptions``), the settings they resolve to
(``RunConfig``, resolved once per run: defaults < recipe < flags) and the phase it trains (``Phase``).

A checkpoint keeps ``RunConfig.record()`` under "config". That record's keys are those of every
earlier release, so checkpoints written before 0.2 resume, load and are skipped by sweeps as they
were; ``upgrade_record`` fills in what a checkpoint written before a key existed had instead.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import InitVar, asdict, dataclass, fields, replace
from typing import Sequence

import torch.nn as nn

from ..errors import OptionError
from ..recipe import IR_LOSSES, STUDENT_INITS, DistillConfig, Recipe, TrainConfig
from ..runtime.checkpoint import changed_settings
from ..runtime.seeds import check_seed
from ..sections import SectionedModel

__all__ = ["MODES", "BlockTrainOptions", "Phase", "LossWeights", "RunConfig", "resolve_config", "upgrade_record",
           "resume_keys", "training_differences", "RUN_ONLY_KEYS"]

MODES = ("lit", "ir", "finetune", "kd", "hints")

#: Record keys that say where and how a run executes, not what it trains: a finished student is the
#: same result whatever these were (``channels_last`` follows from the student and the device).
RUN_ONLY_KEYS = ("device", "loader_workers", "verify", "evaluate", "in_memory", "channels_last")
#: Record keys a resumed run may change besides the run-only ones: --epochs may grow, the BatchNorm
#: recalibration runs before the first epoch only, the online teacher's file may move (``online``
#: says whether there is one), the data offset is the run's own, and the teacher blocks a student
#: starts from matter only at its start (a resume loads its weights).
RESUMABLE_KEYS = ("epochs", "recalibrate_bn", "online_teacher", "data_epoch_offset", "teacher_layers")
#: What a checkpoint written before a record key existed had instead.
_BEFORE_THE_KEY = {"views": None, "online": False, "fresh_views": False, "precision": "fp32", "schedule": "multistep",
                   "warmup": 0.0, "nesterov": False, "loss_scale": 1.0, "recalibrate_bn": False, "online_teacher": None,
                   "ir_loss": "mse", "ir_feature_axis": 1, "student_init": "scratch", "data_epoch_offset": 0,
                   "teacher_layers": None, "precise_bn": False}
#: Record keys of earlier releases that a later key now holds (``amp`` became ``precision``).
_RETIRED_KEYS = ("amp",)


def head_trains_by_default(mode: str) -> bool:
    """kd and hints train the (adopted) head; lit, ir and finetune keep the teacher's frozen, as the
    released LIT code does. ``--train-head``/``--freeze-head`` override it."""
    return mode in ("kd", "hints")


@dataclass(frozen=True)
class Phase:
    """What a run trains: its ``mode``, the one ``section`` it trains alone (``--mode ir --block I``),
    and whether the head trains."""

    mode: str = "lit"
    section: int | None = None
    train_head: bool = False

    def trained_modules(self, sectioned: SectionedModel) -> list[nn.Module]:
        if self.section is not None:
            return [sectioned.sections[self.section - 1]]
        if self.mode == "ir":
            return list(sectioned.sections)
        return [*sectioned.sections, sectioned.head] if self.train_head else list(sectioned.sections)

    def sections_trained(self, sections: int) -> list[int]:
        return [self.section] if self.section is not None else list(range(1, sections + 1))

    def fields_read(self, sections: int, hint: int, beta: float) -> list[str]:
        """The store arrays a step of this phase reads (before ``store_fields`` maps them onto a store)."""
        every_boundary = [f"boundaries/{i}" for i in range(sections + 1)]
        if self.mode == "lit":
            return every_boundary if beta == 0 else every_boundary + ["logits", "labels"]  # beta 0: IR only
        if self.mode == "ir":
            return every_boundary if self.section is None else [f"boundaries/{self.section - 1}",
                                                                f"boundaries/{self.section}"]
        if self.mode == "hints":
            return ["boundaries/0", f"boundaries/{hint}", "logits", "labels"]
        return ["boundaries/0", "logits", "labels"]


@dataclass(frozen=True)
class LossWeights:
    """The loss of a step: KD's ``alpha`` and ``tau``, LIT's ``beta`` and ``loss_scale``, and the IR loss
    (defaults: the recipe's ``DistillConfig``'s)."""

    alpha: float = DistillConfig.alpha
    tau: float = DistillConfig.tau
    beta: float = DistillConfig.beta
    loss_scale: float = DistillConfig.loss_scale
    ir_loss: str = DistillConfig.ir_loss
    ir_feature_axis: int = DistillConfig.ir_feature_axis

    @classmethod
    def from_record(cls, record: dict) -> LossWeights:
        """The weights a config record (or any dict of these keys) holds; absent keys take the defaults."""
        return cls(**{f.name: record[f.name] for f in fields(cls) if f.name in record})


@dataclass(frozen=True)
class BlockTrainOptions:
    """Flags of train-blocks; ``None`` takes the recipe's value (lit or finetune phase)."""

    mode: str = "lit"
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    milestones: tuple[int, ...] | None = None
    schedule: str | None = None
    warmup: float | None = None
    nesterov: bool | None = None
    alpha: float | None = None
    tau: float | None = None
    beta: float | None = None
    loss_scale: float | None = None
    #: --ir-loss: "mse" or "cosine" (None: the recipe's DistillConfig.ir_loss).
    ir_loss: str | None = None
    #: --student-init: "scratch" or "teacher-blocks" (None: the recipe's student_init); --init replaces either.
    student_init: str | None = None
    #: --teacher-layers: with teacher-blocks, the teacher blocks each student block starts from, numbered
    #: across the whole teacher (None: evenly spaced in each section, the first one first).
    teacher_layers: tuple[int, ...] | None = None
    #: --train-head/--freeze-head: train the head too, or keep it frozen (None: the mode's default).
    train_head: bool | None = None
    #: --block I of --mode ir: train section I alone.
    section: int | None = None
    hint_boundary: int | None = None
    init: str | None = None
    seed: int = 0
    #: Use only the first K of the store's views (None: all of them).
    views: int | None = None
    buffer_chunks: int = 4
    loader_workers: int = 0
    device: str = "auto"
    #: --precision (None: the recipe's); ``amp`` is the old spelling of "bf16".
    precision: str | None = None
    amp: bool = False
    verify: bool = True
    evaluate: bool = True
    #: A teacher checkpoint: run it on every batch instead of reading the store's boundaries (the
    #: online baseline; the store gives its layout and view seeds only).
    online_teacher: str | None = None
    #: With ``online_teacher``: a fresh augmentation of every sample each epoch (the original LIT
    #: regime), not the store's K views.
    fresh_views: bool = False
    #: Before the first fine-tune epoch, re-estimate the sections' BatchNorm statistics along the
    #: student's own path (train-mode forward, no gradient, over one epoch of rows).
    recalibrate_bn: bool = False
    #: Read the needed arrays into memory before the first epoch (not timed): for benchmarks, the
    #: same steps with no store reads. Results are identical to reading the store.
    in_memory: bool = False
    #: The name ``section`` had before 0.2 (the CLI's --block still says so); deprecated.
    block: InitVar[int | None] = None

    def __post_init__(self, block: int | None) -> None:
        if block is not None:
            warnings.warn("BlockTrainOptions(block=I) is now BlockTrainOptions(section=I).", DeprecationWarning,
                          stacklevel=3)
            if self.section is not None and self.section != block:
                raise OptionError(f"Expected one section to train alone, got section={self.section} and block={block}.")
            object.__setattr__(self, "section", block)
        if self.mode not in MODES:
            raise OptionError(f"Expected --mode in {MODES}, got {self.mode!r} instead.")
        check_seed(self.seed)
        for name in ("lr", "momentum", "weight_decay", "tau", "loss_scale", "warmup"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise OptionError(f"Expected --{name.replace('_', '-')} to be a finite number, got {value} instead.")
        for name in ("lr", "tau", "loss_scale"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise OptionError(f"Expected --{name.replace('_', '-')} > 0, got {value} instead.")
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise OptionError(f"Expected --{name.replace('_', '-')} >= 1, got {value} instead.")
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise OptionError(f"Expected --{name} in [0, 1], got {value} instead.")
        if self.section is not None and self.mode != "ir":
            raise OptionError("--block trains one section alone, which only --mode ir does.")
        if self.mode == "finetune" and not self.init:
            raise OptionError("--mode finetune continues a trained student: give its checkpoint with --init.")
        if self.views is not None and self.views < 1:
            raise OptionError(f"Expected --views >= 1 (the first K stored views), got {self.views} instead.")
        if self.buffer_chunks < 1 or self.loader_workers < 0:
            raise OptionError("Expected --buffer-chunks >= 1 and --loader-workers >= 0.")
        if self.fresh_views and self.online_teacher is None:
            raise OptionError("--fresh-views draws new views for the teacher to compute: it needs --online-teacher.")
        if self.amp and self.precision not in (None, "bf16"):
            raise OptionError("--amp is the old spelling of --precision bf16; it contradicts "
                              f"--precision {self.precision}.")
        if self.recalibrate_bn and self.mode != "finetune":
            raise OptionError("--recalibrate-bn re-estimates an assembled student's BatchNorm statistics before "
                              "fine-tuning: use it with --mode finetune.")
        if self.ir_loss is not None and self.ir_loss not in IR_LOSSES:
            raise OptionError(f"Expected --ir-loss in {IR_LOSSES}, got {self.ir_loss!r} instead.")
        if self.train_head and self.mode == "ir":
            raise OptionError("--mode ir trains each section on its boundaries alone and never runs the head: "
                              "drop --train-head.")
        if self.student_init is not None and self.student_init not in STUDENT_INITS:
            raise OptionError(f"Expected --student-init in {STUDENT_INITS}, got {self.student_init!r} instead.")
        if self.teacher_layers is not None:
            if self.student_init == "scratch" or self.init:
                raise OptionError("--teacher-layers chooses the teacher blocks a student starts from (--student-init "
                                  "teacher-blocks); drop it with --student-init scratch or --init.")
            if not self.teacher_layers or any(not isinstance(i, int) or i < 0 for i in self.teacher_layers):
                raise OptionError(f"Expected --teacher-layers as teacher block numbers from 0, e.g. 0,3,5,7, got "
                                  f"{self.teacher_layers!r} instead.")
        if self.online_teacher is not None and self.in_memory:
            raise OptionError("--online-teacher computes every batch with the teacher; it cannot also read the store "
                              "into memory.")


# ``options.block``, the name of ``section`` before 0.2, still reads (the init-only field ``block`` sets it).
BlockTrainOptions.block = property(lambda self: self.section, doc="The name of ``section`` before 0.2 (deprecated).")


@dataclass(frozen=True)
class RunConfig:
    """The resolved settings of one train-blocks run. ``resolve_config`` makes it once; what is known
    only later (the --init student's data offset, the precision a device runs) comes in by ``replace``."""

    optim: TrainConfig
    phase: Phase
    losses: LossWeights
    student_init: str
    teacher_layers: tuple[int, ...] | None
    hint_boundary: int | None
    init: str | None
    seed: int
    views: int | None
    buffer_chunks: int
    loader_workers: int
    device: str
    #: "auto" until ``with_compute`` records what the device runs.
    precision: str
    verify: bool
    evaluate: bool
    online_teacher: str | None
    fresh_views: bool
    recalibrate_bn: bool
    in_memory: bool
    #: The epochs of data the --init student has drawn: a fine-tune continues that stream of row
    #: orders and fresh views instead of replaying the LIT phase's first epochs.
    data_epoch_offset: int = 0
    channels_last: bool | None = None

    @property
    def mode(self) -> str:
        return self.phase.mode

    @property
    def epochs(self) -> int:
        return self.optim.epochs

    @property
    def online(self) -> bool:
        return self.online_teacher is not None

    @property
    def reads_logits(self) -> bool:
        """Whether a step reads the teacher's logits (LIT with beta 0, and ir, train on boundaries alone)."""
        return not (self.mode == "ir" or (self.mode == "lit" and self.losses.beta == 0))

    def hint(self, sections: int) -> int:
        """The boundary hints regress in their first phase: --hint-boundary, else the middle one."""
        return self.hint_boundary or max(1, math.ceil(sections / 2))

    def with_compute(self, precision: str, channels_last: bool) -> RunConfig:
        return replace(self, precision=precision, channels_last=channels_last)

    def record(self) -> dict:
        """The JSON-able dict checkpoints keep under "config", with the keys every release has written."""
        optim = {**asdict(self.optim), "milestones": list(self.optim.milestones), "betas": list(self.optim.betas)}
        record = {**optim, **asdict(self.losses), "student_init": self.student_init,
                  "teacher_layers": None if self.teacher_layers is None else list(self.teacher_layers),
                  "train_head": self.phase.train_head,
                  "mode": self.phase.mode, "block": self.phase.section, "hint_boundary": self.hint_boundary,
                  "init": self.init, "seed": self.seed, "views": self.views, "buffer_chunks": self.buffer_chunks,
                  "loader_workers": self.loader_workers, "device": self.device, "precision": self.precision,
                  "verify": self.verify, "evaluate": self.evaluate, "online_teacher": self.online_teacher,
                  "fresh_views": self.fresh_views, "recalibrate_bn": self.recalibrate_bn, "in_memory": self.in_memory,
                  "online": self.online, "data_epoch_offset": self.data_epoch_offset}
        if self.channels_last is not None:
            record["channels_last"] = self.channels_last
        return record


def resolve_config(recipe: Recipe, options: BlockTrainOptions) -> RunConfig:
    """defaults < recipe < flags."""
    distill = recipe.distill
    phase_config = distill.finetune if options.mode == "finetune" else distill.lit
    optim = phase_config.with_flags(**{k: getattr(options, k)
                                       for k in ("epochs", "batch_size", "lr", "momentum", "weight_decay",
                                                 "milestones", "schedule", "warmup", "nesterov")})
    lit_phase = options.mode in ("lit", "ir")
    losses = LossWeights(
        alpha=_given(options.alpha, distill.alpha), tau=_given(options.tau, distill.tau),
        beta=0.0 if options.mode == "ir" else _given(options.beta, distill.beta),
        # The scale belongs to the LIT phase's loss; other modes train on KD or a hint alone.
        loss_scale=_given(options.loss_scale, distill.loss_scale) if lit_phase else 1.0,
        ir_loss=options.ir_loss or distill.ir_loss, ir_feature_axis=distill.ir_feature_axis)
    train_head = head_trains_by_default(options.mode) if options.train_head is None else options.train_head
    return RunConfig(
        optim=optim, phase=Phase(options.mode, options.section, train_head), losses=losses,
        student_init=options.student_init or recipe.student_init, teacher_layers=options.teacher_layers,
        hint_boundary=options.hint_boundary,
        init=options.init, seed=options.seed, views=options.views, buffer_chunks=options.buffer_chunks,
        loader_workers=options.loader_workers, device=options.device, precision=_requested_precision(recipe, options),
        verify=options.verify,
        evaluate=options.evaluate, online_teacher=options.online_teacher, fresh_views=options.fresh_views,
        recalibrate_bn=options.recalibrate_bn, in_memory=options.in_memory)


def _given(flag, recipe_value):
    return recipe_value if flag is None else flag


def _requested_precision(recipe: Recipe, options: BlockTrainOptions) -> str:
    """--precision, else --amp (bf16), else the recipe's default."""
    if options.precision is not None:
        return options.precision
    return "bf16" if options.amp else recipe.precision


def upgrade_record(saved: dict) -> dict:
    """A checkpoint's config record as this release writes it: the values of keys that did not exist
    yet when it was written (a checkpoint from before --train-head trained the head exactly where its
    mode does by default), without the keys a later one replaced."""
    record = {**_BEFORE_THE_KEY, "train_head": head_trains_by_default(saved.get("mode", "lit")), **saved}
    for key in _RETIRED_KEYS:
        record.pop(key, None)
    return record


def resume_keys(record: dict) -> list[str]:
    """The keys of ``record`` a resumed run must keep: every one but the run-only and resumable ones."""
    return [k for k in record if k not in RUN_ONLY_KEYS and k not in RESUMABLE_KEYS]


def training_differences(saved: dict, expected: dict, ignore: Sequence[str] = ()) -> list[str]:
    """"key saved -> expected" for every setting of a finished run's ``saved`` record that ``expected``
    (a record with its precision resolved) trains differently; run-only keys and ``ignore`` are left out."""
    # data_epoch_offset follows from the --init checkpoint, compared as "init" (its path): a freshly
    # resolved record always says 0, so comparing the key would flag every fine-tune.
    skip = {*RUN_ONLY_KEYS, "data_epoch_offset", *ignore}
    saved = upgrade_record(saved)
    keys = [k for k in dict.fromkeys([*expected, *saved]) if k not in skip]
    return changed_settings(saved, expected, keys, {})
