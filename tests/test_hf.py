"""Hugging Face causal LMs in, ``from_pretrained`` students out (pipelines/hf_causal_lm.py,
litcache.models.hf, litcache export).

Tiny random Llama, Qwen2, Qwen3, Mistral and GPT-2 models, saved as HF directories with a BPE
tokenizer trained here on a tiny corpus of fake plays, are cut faithfully (on right-padded rows too),
and go through the CLI: extract -> verify --replay -> train-blocks (lit, ir --block, kd) -> export ->
``from_pretrained`` -> ``generate`` with and without the KV cache."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, assert_clean_error, run_cli
from test_gpt import ALPHA, BETA, GAMMA, play

from litcache import ExtractOptions, extract, load_recipe, open_store
from litcache.errors import RecipeError
from litcache.recipe import import_beside
from litcache.sections import check_sections, cut_sections
from litcache.training.dataset import StoreDataset
from litcache.training.online import OnlineTeacherDataset
from litcache.training.student import read_student

transformers = pytest.importorskip("transformers")

HF = REPO / "pipelines" / "hf_causal_lm.py"
_tokens = import_beside(HF, "_tokens")
CONTEXT = 24
#: The tiny size of every family: 4 decoder layers of width 32.
TINY = {  # max_position_embeddings 64: evaluate generates 64 - 16 new tokens after its 16-token prompt
    "llama": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64),
    "qwen2": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True),
    "qwen3": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8, max_position_embeddings=64),
    "mistral": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=64, sliding_window=None),
    "gpt2": dict(n_embd=32, n_layer=4, n_head=4, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                 bos_token_id=0, eos_token_id=0),
}


def quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A folder of .txt documents; at least one of them is held out (by the hash of its name)."""
    folder = tmp_path_factory.mktemp("corpus")
    texts = {f"play_{k}.txt": play(f"play {k}", 12, k) for k in range(10)}
    texts.update({"alpha.txt": ALPHA, "beta.txt": BETA, "acts/gamma.txt": GAMMA})
    for name, text in texts.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


@pytest.fixture(scope="module")
def tokenizer_dir(corpus, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer")
    _tokens.train_bpe_tokenizer([p.read_text() for p in sorted(corpus.rglob("*.txt"))], 300, folder)
    return folder


def make_model_dir(family: str, tokenizer_dir, folder, seed: int = 0, sizes: dict | None = None):
    """A tiny random model of ``family`` saved as an HF directory with the tokenizer beside it."""
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size()
    config = transformers.AutoConfig.for_model(family, vocab_size=vocab, **(sizes or TINY[family]))
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    for file in tokenizer_dir.iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    return folder


@pytest.fixture(scope="module")
def model_dirs(tokenizer_dir, tmp_path_factory):
    return {family: make_model_dir(family, tokenizer_dir, tmp_path_factory.mktemp(family)) for family in TINY}


def use(monkeypatch, corpus, tmp_path, model_dir, sections: int = 2, **more):
    monkeypatch.setenv("LITCACHE_HF_MODEL", str(model_dir))
    monkeypatch.setenv("LITCACHE_HF_SECTIONS", str(sections))
    monkeypatch.setenv("LITCACHE_HF_CONTEXT", str(CONTEXT))
    monkeypatch.setenv("LITCACHE_TEXT_CORPUS", str(corpus))
    monkeypatch.setenv("LITCACHE_CACHE_DIR", str(tmp_path / "cache"))
    for key, value in more.items():
        monkeypatch.setenv(key, value)


#: Sliding-window attention with a window (8) shorter than the rows (24): Mistral slides in every layer,
#: Qwen2 from layer max_window_layers on.
SLIDING = {"mistral": {**TINY["mistral"], "sliding_window": 8},
           "qwen2": {**TINY["qwen2"], "use_sliding_window": True, "sliding_window": 8, "max_window_layers": 2}}


@pytest.mark.parametrize("family", sorted(TINY) + [f"{f}-sliding" for f in sorted(SLIDING)])
def test_the_split_check_passes_on_padded_rows(family, model_dirs, tokenizer_dir, corpus, tmp_path, monkeypatch):
    """stem -> sections -> head is the HF model's forward, on the recipe's own right-padded rows; and a
    padded row's valid positions equal the row computed alone (no attention mask needed)."""
    if family.endswith("-sliding"):
        family = family.removesuffix("-sliding")
        model_dirs = {family: make_model_dir(family, tokenizer_dir, tmp_path / "model", sizes=SLIDING[family])}
        if family == "qwen2":
            assert transformers.AutoConfig.from_pretrained(model_dirs[family]).layer_types[-1] == "sliding_attention"
    use(monkeypatch, corpus, tmp_path, model_dirs[family])
    recipe = load_recipe(HF)
    from litcache.extraction.teacher import load_teacher

    teacher, _, path = load_teacher(recipe)
    assert path == str(model_dirs[family])  # --teacher defaults to the model directory
    rows = recipe.load_split("train")
    lengths = torch.as_tensor(rows.lengths[:16])
    assert len(set(lengths.tolist())) > 1 and int(lengths.min()) < CONTEXT  # padded rows among them
    x, _ = rows.get_batch(list(range(16)))
    assert check_sections(teacher, cut_sections(teacher, recipe), x) < 1e-4
    with torch.no_grad():
        padded = teacher(x)
        for i in torch.argsort(lengths)[:3].tolist():
            n = int(lengths[i])
            alone = teacher(x[i:i + 1, :n])
            torch.testing.assert_close(padded[i:i + 1, :n], alone, rtol=1e-4, atol=1e-5)
    hf = transformers.AutoModelForCausalLM.from_pretrained(model_dirs[family])
    with torch.no_grad():  # the weights are the directory's
        torch.testing.assert_close(teacher(x), hf(input_ids=x).logits, rtol=1e-5, atol=1e-5)


def test_rows_are_the_models_tokens_held_out_by_document(model_dirs, corpus, tmp_path, monkeypatch):
    use(monkeypatch, corpus, tmp_path, model_dirs["llama"])
    recipe = load_recipe(HF)
    train, test = recipe.load_split("train"), recipe.load_split("test")
    assert set(train.titles) & set(test.titles) == set() and len(test) > 0
    assert set(train.titles) | set(test.titles) == {p.relative_to(corpus).as_posix() for p in corpus.rglob("*.txt")}
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dirs["llama"] / "tokenizer.json"))
    x, y = train.get_batch([0])
    n = int(train.lengths[0])
    assert tokenizer.decode(x[0, :n].tolist()) in ALPHA + BETA + GAMMA + "".join(
        play(f"play {k}", 12, k) for k in range(10))  # real text, in the model's own tokens
    assert (y[0, n:] == -100).all() and torch.equal(y[0, :n - 1], x[0, 1:n])


def test_the_val_split_is_training_rows_the_training_subset_leaves_out(model_dirs, corpus, tmp_path, monkeypatch):
    use(monkeypatch, corpus, tmp_path, model_dirs["llama"])
    recipe = load_recipe(HF)
    whole = recipe.load_split("train")
    with pytest.raises(RecipeError, match=f"keeps all {len(whole)}: set LITCACHE_TEXT_TRAIN_ROWS below"):
        recipe.load_split("val")
    monkeypatch.setenv("LITCACHE_TEXT_TRAIN_ROWS", str(len(whole) // 2))
    monkeypatch.setenv("LITCACHE_TEXT_VAL", "5")
    val, test = recipe.load_split("val"), recipe.load_split("test")
    assert len(val) == 5 and len(recipe.load_split("train")) == len(whole) // 2
    assert set(val.titles) == set(whole.titles) and set(val.titles).isdisjoint(test.titles)
    # Which rows: numbered rows (the corpus repeats itself), the training set's and the rest's.
    text = import_beside(HF, "_text")
    numbered = text.TextRows(np.repeat(np.arange(20, dtype=np.int32), 3).reshape(20, 3), np.full(20, 2))  # row i: i
    kept = {int(r[0]) for r in numbered.evenly_spaced(8).rows}
    left = [int(r[0]) for r in numbered.left_out(8, 5).rows]
    assert len(kept) == 8 and len(left) == 5 == len(set(left)) and kept.isdisjoint(left)
    assert left == sorted(left) and left[0] < 4 and left[-1] > 15  # spread over the rest, not its first rows
    assert len(numbered.left_out(8, 100)) == 12


def _generate_same_with_and_without_cache(model_dir):
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
    prompt = torch.tensor([[5, 17, 42, 7]])
    with torch.no_grad():
        cached = model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=0)
        uncached = model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False, pad_token_id=0)
    assert cached.shape == (1, 12) and torch.equal(cached, uncached)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_an_hf_model_through_the_cli(family, model_dirs, corpus, tmp_path, monkeypatch):
    use(monkeypatch, corpus, tmp_path, model_dirs[family])
    store = tmp_path / "train.zarr"
    result = run_cli("extract", HF, "--out", store, "--logit-topk", "8", "--dtype", "float32", "--chunk-rows", "16",
                     "--batch-size", "16", "--device", "cpu", "-q")
    assert result.exit_code == 0, result.output
    manifest = open_store(store).manifest
    assert manifest.format_version == 2 and manifest.arrays["boundaries/2"].row_shape == (CONTEXT, 32)
    result = run_cli("verify", store, HF, "--replay", "6")
    assert result.exit_code == 0 and "6 rows replayed, 0 differ" in result.output, result.output

    common = ["--store", store, "--student", "layers2", "--epochs", "1", "--batch-size", "16", "--device", "cpu", "-q"]
    for mode, extra in (("lit", []), ("ir", ["--block", "1"]), ("kd", [])):
        result = run_cli("train-blocks", HF, *common, "--mode", mode, *extra, "--out", tmp_path / mode)
        assert result.exit_code == 0, result.output
    lit = read_student(tmp_path / "lit" / "layers2" / "student.pt")
    assert lit["config"]["student_init"] == "teacher-blocks" and "test_perplexity" in lit["history"][0]

    out = tmp_path / "exported"
    result = run_cli("export", HF, "--student-checkpoint", tmp_path / "lit" / "layers2" / "student.pt", "--out", out,
                     "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["num_hidden_layers"] == 2 and report["missing_keys"] == [] == report["unexpected_keys"]
    assert report["max_logit_difference"] <= 1e-4 and "tokenizer.json" in report["tokenizer_files"]
    config = json.loads((out / "config.json").read_text())
    assert config.get("num_hidden_layers", config.get("n_layer")) == 2
    assert len(config.get("layer_types", [None, None])) == 2
    loaded, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    from litcache import load_student

    student = load_student(tmp_path / "lit" / "layers2" / "student.pt")
    ids = torch.randint(0, loaded.config.vocab_size, (2, CONTEXT), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, student(ids), rtol=1e-5, atol=1e-5)
    _generate_same_with_and_without_cache(out)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert tokenizer("thou art")["input_ids"]  # the tokenizer came along

    result = run_cli("evaluate", HF, "--student-checkpoint", tmp_path / "lit" / "layers2" / "student.pt",
                     "--teacher", model_dirs[family], "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    for role in ("teacher", "student"):
        assert 1.0 < report[role]["perplexity"] < 2 * loaded.config.vocab_size
        assert report[role]["generation_tokens_per_s"] > 0 and report[role]["generation_new_tokens"] == 48
    assert (report["teacher"]["depth"], report["student"]["depth"]) == (4, 2)
    assert report["student"]["compression_by_params"] > 1 and report["student"]["compression_by_macs"] > 1.3


def test_a_lit_step_from_a_float32_store_equals_the_online_step(model_dirs, corpus, tmp_path, monkeypatch):
    from test_vit import assert_same_lit_step

    use(monkeypatch, corpus, tmp_path, model_dirs["llama"])
    recipe = load_recipe(HF)
    path = tmp_path / "s.zarr"
    extract(recipe, path, ExtractOptions(dtype="float32", chunk_rows=16, batch_size=16, device="cpu", logit_topk=6,
                                         limit=48), progress=False, log=quiet)
    store = open_store(path)
    rows = list(range(16, 32))
    fields = [*store.boundary_names, "topk_values", "topk_indices", "labels", "lengths"]
    cached = StoreDataset(store, fields).__getitems__(rows)
    online = OnlineTeacherDataset(recipe, store, str(model_dirs["llama"]), fields, "cpu",
                                  precision="fp32").__getitems__(rows)
    assert torch.equal(cached["topk_indices"], online["topk_indices"])
    assert_same_lit_step(recipe, "layers2", store, cached, online,
                         {"alpha": 0.5, "tau": 1.0, "beta": 0.5, "loss_scale": 1.0, "ir_loss": "mse"})


def test_students_have_fewer_layers_of_the_same_class(model_dirs, corpus, tmp_path, monkeypatch):
    use(monkeypatch, corpus, tmp_path, model_dirs["qwen2"], sections=1, LITCACHE_HF_STUDENTS="odd=3")
    recipe = load_recipe(HF)
    assert set(recipe.students) == {"layers1", "layers2", "layers3", "odd"}
    student = recipe.student_builder("layers2")()
    teacher = recipe.build_teacher()
    assert type(student.hf) is type(teacher.hf) and student.config.num_hidden_layers == 2
    assert student.config.layer_types == ["full_attention"] * 2 and student.section_layers == (2,)


def _no_store_error(result, tmp_path, starts):
    assert_clean_error(result, starts)
    assert not (tmp_path / "s.zarr").exists()


def test_bad_model_directories_give_one_error_and_write_nothing(model_dirs, tokenizer_dir, corpus, tmp_path,
                                                                  monkeypatch):
    args = ["extract", HF, "--out", tmp_path / "s.zarr", "--device", "cpu", "-q"]
    use(monkeypatch, corpus, tmp_path, tmp_path / "nowhere")
    _no_store_error(run_cli(*args), tmp_path, "Expected a Hugging Face model directory")
    (tmp_path / "empty").mkdir()
    use(monkeypatch, corpus, tmp_path, tmp_path / "empty")
    _no_store_error(run_cli(*args), tmp_path, "Expected a Hugging Face model directory")

    bert = tmp_path / "bert"
    transformers.AutoConfig.for_model("bert", vocab_size=50, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=8).save_pretrained(bert)
    use(monkeypatch, corpus, tmp_path, bert)
    result = run_cli(*args)
    _no_store_error(result, tmp_path,
                    "litcache cuts the Hugging Face families gpt2, llama, mistral, qwen2, qwen3")
    assert "'bert'" in result.output

    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    for file in model_dirs["llama"].iterdir():
        if "token" not in file.name:
            (no_tokenizer / file.name).write_bytes(file.read_bytes())
    use(monkeypatch, corpus, tmp_path, no_tokenizer)
    _no_store_error(run_cli(*args), tmp_path, "Expected the model's tokenizer at")

    use(monkeypatch, corpus, tmp_path, model_dirs["llama"], LITCACHE_HF_STUDENTS="deep=3,1")
    _no_store_error(run_cli(*args), tmp_path, "Expected student section 1 to have 0 to 2 decoder layers")

    monkeypatch.delenv("LITCACHE_HF_MODEL")
    _no_store_error(run_cli(*args), tmp_path, "Set LITCACHE_HF_MODEL")


def test_without_transformers_one_error_says_what_to_install(model_dirs, corpus, tmp_path, monkeypatch):
    use(monkeypatch, corpus, tmp_path, model_dirs["llama"])
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now raises ImportError
    result = run_cli("extract", HF, "--out", tmp_path / "s.zarr", "--device", "cpu", "-q")
    _no_store_error(result, tmp_path, "Hugging Face models need the transformers")
    assert "pip install 'litcache[hf]'" in result.output


def test_export_refuses_another_recipes_checkpoint_and_an_existing_directory(model_dirs, corpus, tmp_path,
                                                                             monkeypatch, tiny_recipe, teacher_ckpt):
    use(monkeypatch, corpus, tmp_path, model_dirs["gpt2"])
    store = tmp_path / "s.zarr"
    extract(load_recipe(HF), store, ExtractOptions(dtype="float32", chunk_rows=16, batch_size=16, device="cpu",
                                                   limit=32), progress=False, log=quiet)
    result = run_cli("train-blocks", HF, "--store", store, "--student", "layers2", "--epochs", "1", "--batch-size",
                     "16", "--device", "cpu", "--no-eval", "-q", "--out", tmp_path / "lit")
    assert result.exit_code == 0, result.output
    ckpt = tmp_path / "lit" / "layers2" / "student.pt"

    other = tmp_path / "other.pt"  # a student of another recipe (the tiny CNN's)
    from litcache.training.student import save_student

    model = tiny_recipe.student_builder(next(iter(tiny_recipe.students)))()
    save_student(other, model, recipe=tiny_recipe, student=next(iter(tiny_recipe.students)), mode="lit",
                 sections_trained=[1], store={}, config={}, history=[], epoch=1)
    result = run_cli("export", HF, "--student-checkpoint", other, "--out", tmp_path / "x")
    assert_clean_error(result, "Student checkpoint")
    assert "belongs to recipe" in result.output and not (tmp_path / "x").exists()

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    result = run_cli("export", HF, "--student-checkpoint", ckpt, "--out", tmp_path / "taken")
    assert_clean_error(result, f"{str(tmp_path / 'taken')!r} already exists")
    assert "already exists" in result.output and (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    result = run_cli("export", HF, "--student-checkpoint", ckpt, "--out", tmp_path / "taken", "--overwrite")
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "taken" / "keep.txt").exists() and (tmp_path / "taken" / "config.json").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".taken")] == []  # no partial folder left


def test_a_teacher_made_here_trains_and_exports_as_an_hf_model(corpus, tmp_path, monkeypatch):
    """make_hf_model.py (tokenizer trained on the training documents + a random Llama) -> train-teacher ->
    export --teacher-checkpoint: an ordinary HF directory, which is again a teacher litcache takes."""
    make = import_beside(HF, "make_hf_model")
    init = tmp_path / "init"
    make.main(["--out", str(init), "--corpus", str(corpus), "--layers", "2", "--width", "32", "--heads", "4",
               "--kv-heads", "2", "--mlp", "64", "--context", "64", "--vocab", "280"])
    config = transformers.AutoConfig.from_pretrained(init)
    assert config.model_type == "llama" and config.num_key_value_heads == 2 and config.vocab_size <= 280
    use(monkeypatch, corpus, tmp_path, init, sections=1)
    teacher = tmp_path / "teacher.pt"
    result = run_cli("train-teacher", HF, "--out", teacher, "--epochs", "1", "--batch-size", "16", "--device", "cpu",
                     "-q")
    assert result.exit_code == 0, result.output
    out = tmp_path / "teacher-hf"
    result = run_cli("export", HF, "--teacher-checkpoint", teacher, "--out", out, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["teacher"] is True
    from litcache.extraction.teacher import load_teacher

    trained, _, _ = load_teacher(load_recipe(HF), teacher)
    use(monkeypatch, corpus, tmp_path, out, sections=1)
    again, _, path = load_teacher(load_recipe(HF))
    assert path == str(out)
    ids = torch.randint(0, config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(trained(ids), again(ids))
    assert run_cli("export", HF, "--out", tmp_path / "x").exit_code != 0  # neither checkpoint given


# --- training-free baselines (litcache baseline) ------------------------------------------------------


@pytest.fixture
def llama_store(model_dirs, corpus, tmp_path, monkeypatch):
    use(monkeypatch, corpus, tmp_path, model_dirs["llama"])
    path = tmp_path / "train.zarr"
    extract(load_recipe(HF), path, ExtractOptions(dtype="float32", chunk_rows=16, batch_size=16, device="cpu",
                                                  limit=64), progress=False, log=quiet)
    return path


def test_the_least_squares_map_is_lstsq_on_the_same_rows(llama_store):
    from litcache.baselines import StoredBoundaries, choose_layers, fit_linear_map
    from litcache.models.hf import merge_into_mlp_output, mlp_output_module
    from litcache.training.blocks import teacher_section_states
    from litcache.training.student import build_student

    recipe, store = load_recipe(HF), open_store(llama_store)
    _, sectioned = build_student(recipe, "layers2")
    section = sectioned.sections[1].eval()
    batches = StoredBoundaries(store, 1, rows=0, batch_size=16)  # every row, in 4 batches
    picks, candidates = choose_layers(section, teacher_section_states(store)[1], 2, batches)
    assert len(candidates) == 2 and candidates[str(picks[0])]["mse"] == min(c["mse"] for c in candidates.values())
    T = fit_linear_map(section, batches)

    captured, ms, targets, xs = {}, [], [], []
    hook = mlp_output_module(section[-1]).register_forward_hook(lambda module, i, o: captured.update(m=o))
    with torch.no_grad():
        for x, y, mask in batches:
            out = section(x)
            ms.append(captured["m"][mask].double())
            targets.append((y - (out - captured["m"]))[mask].double())
            xs.append((x, mask, out - captured["m"]))
    hook.remove()
    expected = torch.linalg.lstsq(torch.cat(ms), torch.cat(targets)).solution
    torch.testing.assert_close(T, expected, rtol=1e-6, atol=1e-8)

    merge_into_mlp_output(section[-1], T)  # the merged layer computes a + m T
    with torch.no_grad():
        for (x, mask, a), m in zip(xs, ms):
            torch.testing.assert_close(section(x)[mask].double(), a[mask].double() + m @ T, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_baselines_through_the_cli_export_as_plain_hf_models(family, model_dirs, corpus, tmp_path, monkeypatch):
    use(monkeypatch, corpus, tmp_path, model_dirs[family])
    store = tmp_path / "train.zarr"
    extract(load_recipe(HF), store, ExtractOptions(dtype="float32", chunk_rows=16, batch_size=16, device="cpu",
                                                   limit=64), progress=False, log=quiet)
    reports = {}
    for method in ("layer-drop", "linear-map"):
        result = run_cli("baseline", HF, "--store", store, "--student", "layers2", "--method", method, "--rows", "0",
                         "--out", tmp_path / method, "--json")
        assert result.exit_code == 0, result.output
        reports[method] = json.loads(result.output)
        assert [len(s["kept"]) for s in reports[method]["sections"]] == [1, 1]
    for drop, fit in zip(reports["layer-drop"]["sections"], reports["linear-map"]["sections"]):
        assert fit["kept"] == drop["kept"] and fit["mse"] <= drop["mse"] * (1 + 1e-6)  # T = I is among the maps
    ckpt = tmp_path / "linear-map" / "layers2" / "student.pt"
    assert read_student(ckpt)["mode"] == "linear-map"
    result = run_cli("export", HF, "--student-checkpoint", ckpt, "--out", tmp_path / "hf", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["max_logit_difference"] <= 1e-4
    result = run_cli("evaluate", HF, "--student-checkpoint", ckpt, "--device", "cpu", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["student"]["perplexity"] > 1, result.output


def test_a_linear_map_needs_decoder_layers_and_a_store_of_the_recipe(tiny_recipe, tiny_store, llama_store, tmp_path,
                                                                       monkeypatch):
    result = run_cli("baseline", HF, "--store", tiny_store, "--student", "layers2", "--out", tmp_path / "x")
    assert_clean_error(result, f"Store {str(tiny_store)!r} was extracted for recipe")
    assert not (tmp_path / "x").exists()
    result = run_cli("baseline", HF, "--store", llama_store, "--student", "layers2", "--method", "lstsq",
                     "--out", tmp_path / "x")
    assert result.exit_code != 0 and not (tmp_path / "x").exists()


def test_students_start_from_the_teacher_layers_given(llama_store, model_dirs, tmp_path):
    common = ["train-blocks", HF, "--store", llama_store, "--student", "layers2", "--epochs", "1", "--lr", "1e-12",
              "--batch-size", "16", "--device", "cpu", "--no-eval"]
    result = run_cli(*common, "--teacher-layers", "1,3", "--out", tmp_path / "given")
    assert result.exit_code == 0, result.output
    assert "sections start from the teacher's blocks [[1], [3]] (--teacher-layers)" in result.output
    student = read_student(tmp_path / "given" / "layers2" / "student.pt")
    assert student["config"]["teacher_layers"] == [1, 3]
    teacher = transformers.AutoModelForCausalLM.from_pretrained(model_dirs["llama"]).state_dict()
    for j, pick in enumerate((1, 3)):  # lr 1e-12: the blocks are still the teacher's
        torch.testing.assert_close(student["state_dict"][f"model.layers.{j}.mlp.down_proj.weight"],
                                   teacher[f"model.layers.{pick}.mlp.down_proj.weight"])
    result = run_cli(*common, "--out", tmp_path / "default")
    assert result.exit_code == 0 and "[[0], [2]] (evenly spaced" in result.output, result.output
    assert read_student(tmp_path / "default" / "layers2" / "student.pt")["config"]["teacher_layers"] is None

    for layers, message in (("2,3", "--teacher-layers gives student 'layers2' section 1 teacher blocks [2]"),
                            ("1", "Expected --teacher-layers to name 2 teacher blocks")):
        result = run_cli(*common, "--teacher-layers", layers, "--out", tmp_path / "bad")
        assert_clean_error(result, message)
    result = run_cli(*common, "--teacher-layers", "1,x", "--out", tmp_path / "bad")
    assert result.exit_code != 0 and "Invalid value for '--teacher-layers'" in result.output
    assert_clean_error(run_cli(*common, "--teacher-layers", "1,3", "--student-init", "scratch", "--out",
                               tmp_path / "bad"), "--teacher-layers chooses")


# --- block libraries (litcache library, litcache search) ---------------------------------------------


def test_a_student_of_skipped_sections_only_is_refused_training_in_one_line(llama_store, tmp_path):
    from litcache import BlockTrainOptions, train_blocks
    from litcache.errors import OptionError

    with pytest.raises(OptionError, match="Student 'mix-0-0' has no parameters that --mode lit trains"):
        train_blocks(load_recipe(HF), llama_store, ["mix-0-0"], tmp_path / "out",
                     BlockTrainOptions(mode="lit", epochs=1, batch_size=16, student_init="scratch", verify=False),
                     log=quiet)
    assert not (tmp_path / "out" / "mix-0-0" / "student.pt").exists()


def test_a_block_library_of_decoder_layers_searches_and_exports(llama_store, tmp_path, monkeypatch):
    """Sections of 2 decoder layers, candidates of 0 (the section skipped), 1 and 2 (the teacher's own) layers;
    a searched mix is the HF class with fewer layers: it exports and loads with from_pretrained."""
    from litcache.library import LibraryOptions, build_library, search
    from litcache.library.search import assemble_mix

    recipe = load_recipe(HF)
    heldout = tmp_path / "heldout.zarr"
    extract(recipe, heldout, ExtractOptions(split="test", dtype="float32", chunk_rows=16, batch_size=16,
                                            device="cpu", limit=32), progress=False, log=quiet)
    library = build_library(recipe, llama_store, heldout, tmp_path / "lib", LibraryOptions(
        training={"epochs": 1, "batch_size": 16}, workers=1, score_rows=0, latency_rows=4), log=quiet)
    table = {c["candidate"]: c for c in library["candidates"]}
    assert sorted(table) == ["s1-d0", "s1-d1", "s1-d2", "s2-d0", "s2-d1", "s2-d2"]
    assert table["s1-d0"]["kind"] == "skip" and table["s1-d0"]["params"] == 0 == table["s1-d0"]["macs"]
    assert table["s2-d2"]["kind"] == "teacher" and table["s2-d2"]["swap_kl_delta"] == pytest.approx(0, abs=1e-5)
    assert table["s2-d2"]["swap_perplexity_delta"] == pytest.approx(0, abs=1e-3)
    assert table["s1-d1"]["swap_perplexity"] > 1.0 and table["s1-d1"]["kind"] == "trained"
    layer = table["s1-d2"]["params"] - table["s1-d1"]["params"]
    whole = library["teacher"]["whole"]["params"]
    found = search(tmp_path / "lib", f"params={whole - layer}", top=2, out=tmp_path / "search", log=quiet)
    for row in found["students"]:
        assert row["params"] == row["predicted_params"] and "perplexity" in row
    assert all(r["params"] <= whole - layer for r in found["students"] if r["kind"] == "searched")

    skipped = assemble_mix(recipe, library, [table["s1-d0"], table["s2-d2"]], tmp_path / "mixes", tmp_path / "lib")
    out = tmp_path / "exported"
    result = run_cli("export", HF, "--student-checkpoint", skipped, "--out", out, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["num_hidden_layers"] == 2 and report["missing_keys"] == [] == report["unexpected_keys"]
    assert report["max_logit_difference"] <= 1e-4
    _generate_same_with_and_without_cache(out)
