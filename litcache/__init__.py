"""litcache: LIT depth compression as an activation-cache data pipeline.

The folders follow the pipeline (README, "Package map"): a ``recipe`` says what to distil;
``extraction`` runs the teacher once into a ``store``; ``training`` trains students from it.
``runtime`` and ``models`` are what every stage runs on; the modules beside them are the commands.
"""

__version__ = "0.2.0"

# SplitModel, split_model and check_split below are the names of earlier releases (CHANGELOG.md, 0.2).
from . import _compat  # noqa: E402
from .errors import LitcacheError  # noqa: E402
from .evaluation import evaluate  # noqa: E402
from .extraction.plan import ExtractOptions  # noqa: E402
from .extraction.replay import verify_store  # noqa: E402
from .extraction.run import ExtractResult, extract  # noqa: E402
from .extraction.teacher import load_teacher  # noqa: E402
from .recipe import DistillConfig, Recipe, TrainConfig, load_recipe  # noqa: E402
from .sections import SectionedModel, SplitModel, check_sections, check_split, cut_sections, split_model  # noqa: E402
from .show import show_recipe  # noqa: E402
from .store import FORMAT_VERSION, Store, open_store  # noqa: E402
from .store.verify import VerifyReport, store_info  # noqa: E402
from .sweeps import SweepResult, sweep  # noqa: E402
from .training.blocks import BlockTrainOptions, train_blocks  # noqa: E402
from .training.dataset import ChunkShuffleSampler, MemoryDataset, StoreDataset  # noqa: E402
from .training.online import OnlineTeacherDataset  # noqa: E402
from .training.student import assemble, load_student  # noqa: E402
from .training.teacher import train_teacher  # noqa: E402
from .views import CropFlip  # noqa: E402

_compat.install(__import__(__name__))

__all__ = [
    "__version__",
    "BlockTrainOptions",
    "ChunkShuffleSampler",
    "CropFlip",
    "DistillConfig",
    "ExtractOptions",
    "ExtractResult",
    "FORMAT_VERSION",
    "LitcacheError",
    "MemoryDataset",
    "OnlineTeacherDataset",
    "Recipe",
    "SectionedModel",
    "SplitModel",
    "Store",
    "StoreDataset",
    "SweepResult",
    "TrainConfig",
    "VerifyReport",
    "assemble",
    "check_sections",
    "check_split",
    "cut_sections",
    "evaluate",
    "extract",
    "load_recipe",
    "load_student",
    "load_teacher",
    "open_store",
    "show_recipe",
    "split_model",
    "store_info",
    "sweep",
    "train_blocks",
    "train_teacher",
    "verify_store",
]
