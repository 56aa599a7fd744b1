"""litcache: LIT depth compression as an activation-cache data pipeline."""

__version__ = "0.1.0"

from .audit import VerifyReport, store_info, verify_store  # noqa: E402
from .errors import LitcacheError  # noqa: E402
from .extract import ExtractOptions, ExtractResult, extract  # noqa: E402
from .recipe import DistillConfig, Recipe, TrainConfig, load_recipe  # noqa: E402
from .sections import SplitModel, check_split, split_model  # noqa: E402
from .show import show_recipe  # noqa: E402
from .dataset import ChunkShuffleSampler, MemoryDataset, StoreDataset  # noqa: E402
from .evaluate import evaluate  # noqa: E402
from .online import OnlineTeacherDataset  # noqa: E402
from .store import FORMAT_VERSION, Store, open_store  # noqa: E402
from .student import assemble, load_student  # noqa: E402
from .sweep import SweepResult, sweep  # noqa: E402
from .train import BlockTrainOptions, train_blocks  # noqa: E402
from .teacher import load_teacher  # noqa: E402
from .teacher_training import train_teacher  # noqa: E402
from .views import CropFlip  # noqa: E402

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
    "SplitModel",
    "Store",
    "StoreDataset",
    "SweepResult",
    "TrainConfig",
    "VerifyReport",
    "assemble",
    "check_split",
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
