"""Issue 14: the command line says the same thing the same way everywhere (store and recipe spellings,
--device, the training flags, --json and -q, help texts), progress lines in logs, Ctrl-C advice."""

from __future__ import annotations

import importlib
import io
import json

import pytest
import torch
from conftest import TINY, assert_clean_error, run_cli

from litcache import cli
from litcache.errors import OptionError
from litcache.runtime.devices import resolve_device
from litcache.runtime.progress import PlainProgress, progress_bar

TRAINING_FLAGS = {"epochs", "batch_size", "lr", "momentum", "weight_decay", "milestones", "schedule", "warmup",
                  "nesterov"}
DISTILL_FLAGS = {"alpha", "tau", "beta", "loss_scale"}
REPORTING = ["info", "verify", "evaluate", "bench", "train-blocks", "train-teacher", "extract", "sweep", "show"]
RUNS_A_NETWORK = ["train-teacher", "extract", "train-blocks", "sweep", "evaluate", "bench"]
#: The module of `litcache evaluate`.
EVALUATE = importlib.import_module("litcache.evaluation")


def _params(command: str) -> dict:
    return {p.name: p for p in cli.main.commands[command].params}


def _small_extract(out, ckpt, *extra):
    return ["extract", TINY, "--teacher", ckpt, "--out", out, "--limit", "16", "--chunk-rows", "8", "--batch-size", "8",
            "--dtype", "float32", *extra]


# --- 1. the store, the recipe and the student checkpoint are spelled alike ---------------------------


@pytest.mark.parametrize("command", ["info", "verify"])
def test_store_as_option_or_positional(command, tiny_store):
    positional = run_cli(command, tiny_store, "--json")
    assert positional.exit_code == 0, positional.output
    for args in (["--store", tiny_store], [tiny_store, "--store", tiny_store]):
        result = run_cli(command, *args, "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == json.loads(positional.stdout)


@pytest.mark.parametrize("command", ["info", "verify"])
def test_two_different_stores_are_refused(command, tiny_store, tmp_path):
    other = tmp_path / "other.zarr"
    result = run_cli(command, tiny_store, "--store", other)
    assert_clean_error(result, f"Expected one store, got '{tiny_store}' (STORE) and '{other}' (--store) instead.", 1)
    assert not other.exists()
    assert_clean_error(run_cli(command), "Missing the store: give it as STORE or --store.", 2)


def test_verify_takes_recipe_positionally(tiny_store, teacher_ckpt, tmp_path):
    for args in ([tiny_store, TINY], [TINY, "--store", tiny_store], [tiny_store, "--recipe", TINY]):
        result = run_cli("verify", *args, "--replay", "2", "--teacher", teacher_ckpt)
        assert result.exit_code == 0, result.output
        assert "2 rows replayed, 0 differ" in result.output
    # The positional RECIPE is the one replayed, not the store's recorded recipe.
    missing = tmp_path / "missing.py"
    assert_clean_error(run_cli("verify", tiny_store, missing, "--replay", "1"),
                       f"Expected a recipe file, but '{missing}'", 1)
    assert_clean_error(run_cli("verify", tiny_store, TINY, "--recipe", missing),
                       f"Expected one recipe, got '{TINY}' (RECIPE) and '{missing}' (--recipe) instead.", 1)


def test_evaluate_student_checkpoint_and_its_old_spelling(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(EVALUATE, "evaluate", lambda recipe, student, teacher, **kw: seen.append(student) or {})
    ckpt = str(tmp_path / "student.pt")
    for flag in ("--student-checkpoint", "--student"):
        result = run_cli("evaluate", TINY, flag, ckpt, "--json")
        assert result.exit_code == 0, result.output
    assert seen == [ckpt, ckpt]
    result = run_cli("evaluate", TINY, "--student-checkpoint", ckpt, "--student", tmp_path / "other.pt")
    assert_clean_error(result, "Expected one student checkpoint, got", 1)
    assert_clean_error(run_cli("evaluate", TINY), "give --student-checkpoint CKPT, --teacher CKPT, or both", 2)
    help_text = run_cli("evaluate", "--help").output
    assert "--student-checkpoint" in help_text and "--student " not in help_text  # the old spelling is hidden


# --- 2. --device ------------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", RUNS_A_NETWORK)
def test_cuda_device_that_is_not_here(command, tmp_path):
    # --device is checked as it is parsed: before the recipe loads or anything is written.
    out = ["--out", tmp_path / "out"] if "out" in _params(command) else []
    if command == "sweep":  # sweep checks it when it starts (see the test below), after its required --store
        out += ["--store", tmp_path / "none.zarr", "--student", "resnet8"]
    result = run_cli(command, TINY, "--device", "cuda:1", *out)
    assert_clean_error(result, "Expected a CUDA device for --device cuda:1, but torch sees none. "
                               "CUDA is not available here", 1)
    assert "use --device cpu or auto" in result.output
    assert not (tmp_path / "out").exists()


def test_sweep_on_a_scheduler_leaves_the_device_to_its_workers(tmp_path, monkeypatch):
    # The workers of a --scheduler may have the GPU this machine lacks: only the string is checked.
    seen = {}
    monkeypatch.setattr(importlib.import_module("litcache.sweeps"), "sweep",
                        lambda *args, **kwargs: seen.update(kwargs) or (_ for _ in ()).throw(OptionError("stop here")))
    result = run_cli("sweep", TINY, "--store", tmp_path / "s.zarr", "--student", "resnet8", "--scheduler", "tcp://gpus:8786",
                     "--device", "cuda:1", "--out", tmp_path / "out")
    assert_clean_error(result, "stop here", 1)
    assert seen["device"] == "cuda:1" and seen["scheduler"] == "tcp://gpus:8786"
    assert_clean_error(run_cli("sweep", TINY, "--store", tmp_path / "s.zarr", "--student", "resnet8", "--scheduler", "tcp://gpus:8786",
                               "--device", "gpu"), "Invalid value for '--device'", 2)


def test_any_torch_device_string(teacher_ckpt, tmp_path, monkeypatch):
    assert run_cli(*_small_extract(tmp_path / "s", teacher_ckpt, "--device", "cpu:0", "-q")).exit_code == 0
    assert_clean_error(run_cli(*_small_extract(tmp_path / "t", teacher_ckpt, "--device", "gpu")),
                       "Invalid value for '--device': Expected --device auto or a torch device", 2)
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(OptionError, match="torch cannot run on 'mps' here"):
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
        resolve_device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(OptionError, match=r"one of this machine's 1 cuda device\(s\) \(cuda:0\), got index 1"):
        resolve_device("cuda:1")


# --- 3, 4. one set of training flags, each defaulting to the recipe's value -------------------------


@pytest.mark.parametrize("command", ["train-teacher", "train-blocks", "sweep"])
def test_commands_that_train_share_the_flags(command):
    params = _params(command)
    wanted = TRAINING_FLAGS | (DISTILL_FLAGS if command != "train-teacher" else set())
    assert wanted <= set(params), wanted - set(params)
    for name in wanted:
        assert params[name].multiple == (command == "sweep"), name  # sweep sweeps each one's values


def test_train_blocks_flags_say_the_recipe_sets_the_default():
    params = _params("train-blocks")
    for name in TRAINING_FLAGS | DISTILL_FLAGS | {"precision"}:
        assert "the recipe's value" in params[name].help.lower(), name


def test_sweep_passes_schedule_flags_to_training(tiny_store, tmp_path):
    out = tmp_path / "sweep"
    result = run_cli("sweep", TINY, "--store", tiny_store, "--student", "resnet8", "--epochs", "1",
                     "--batch-size", "16", "--schedule", "cosine", "--warmup", "0.25", "--nesterov",
                     "--milestones", "1,2", "--workers", "1", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)["variants"]
    assert row["variant"] == "resnet8_seed0_epochs1_batch-size16_milestones1-2_schedulecosine_warmup0.25_nesterovTrue"
    assert (row["schedule"], row["warmup"], row["nesterov"], row["milestones"]) == ("cosine", 0.25, True, [1, 2])
    saved = torch.load(out / row["variant"] / "resnet8" / "student.pt", weights_only=True)["config"]
    assert ((saved["schedule"], saved["warmup"], saved["nesterov"], saved["milestones"])
            == ("cosine", 0.25, True, [1, 2]))


# --- 5, 6, 7. --json and -q everywhere, `litcache show`, the main help ------------------------------


@pytest.mark.parametrize("command", REPORTING)
def test_every_reporting_command_has_json_and_quiet(command):
    params = _params(command)
    assert {"as_json", "quiet"} <= set(params)
    assert "-q" in params["quiet"].opts and "--json" in params["as_json"].opts


def test_json_is_alone_on_stdout_and_quiet_prints_nothing(tiny_store, teacher_ckpt, tmp_path):
    result = run_cli(*_small_extract(tmp_path / "s", teacher_ckpt, "--json"))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["status"] == "created"
    assert "extract: 16/16 rows" in result.stderr  # the progress went to stderr
    for command in ("info", "verify"):
        assert json.loads(run_cli(command, tiny_store, "--json", "-q").stdout)["path"] == str(tiny_store)
        quiet = run_cli(command, tiny_store, "-q")
        assert quiet.exit_code == 0 and quiet.output == ""
    run = ["train-blocks", TINY, "--store", tiny_store, "--student", "resnet8", "--epochs", "1", "--batch-size", "16",
           "--no-eval"]
    result = run_cli(*run, "--out", tmp_path / "a", "--json")
    assert result.exit_code == 0, result.output
    [trained] = json.loads(result.stdout)
    assert trained["student"] == "resnet8" and trained["checkpoint"].endswith("student.pt")
    assert "resnet8 lit epoch 1/1" in result.stderr  # the log went to stderr
    assert run_cli(*run, "--out", tmp_path / "b", "-q").output == ""


def test_train_teacher_json(tmp_path):
    result = run_cli("train-teacher", TINY, "--out", tmp_path / "t.pt", "--epochs", "1", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["checkpoint"] == str(tmp_path / "t.pt") and len(report["history"]) == 1


def test_show_lists_students_splits_and_defaults():
    result = run_cli("show", TINY, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["name"] == "tiny" and [s["name"] for s in info["splits"]] == ["train", "test"]
    assert info["students"] == [{"name": "resnet8", "params": 2536, "blocks_per_section": [1, 1, 1]}]
    assert info["sections"] == ["layer1", "layer2", "layer3"] and info["boundaries"] == 4
    assert info["teacher_training"]["epochs"] == 2 and info["distill"]["lit"]["milestones"] == [100]
    assert info["distill"]["beta"] == 0.75 and info["precision"] == "auto"
    assert info["extract_defaults"]["dtype"] == "float16" and info["augment"]["type"] == "CropFlip"
    text = run_cli("show", TINY).output
    for expected in ("students      resnet8  (2,536 params", "splits        train (augmented), test",
                     "lit phase     epochs 175, batch_size 32, lr 0.1", "distill       alpha 0.95, tau 6.0, beta 0.75"):
        assert expected in text, text
    assert run_cli("show", TINY, "-q").output == ""


def test_main_help_names_url_stores_and_their_options():
    text = " ".join(run_cli("--help").output.split())
    assert "fsspec URL (s3://bucket/train.zarr" in text and "LITCACHE_STORAGE_OPTIONS" in text
    assert "show" in text


# --- 8. PSNR of identical outputs -------------------------------------------------------------------


def test_evaluate_prints_infinite_psnr_for_identical_outputs(monkeypatch):
    stats = {"samples": 4, "params": 10, "macs_per_sample": 1e6, "depth": 2, "cpu_latency_ms_per_batch": 1.0,
             "latency_batch_size": 4}
    report = {"task": "generation", "teacher": dict(stats),
              "student": {**stats, "mse_vs_teacher": 0.0, "psnr_vs_teacher_db": None, "compression_by_depth": 1.0,
                          "compression_by_params": 1.0, "compression_by_macs": 1.0}}
    monkeypatch.setattr(EVALUATE, "evaluate", lambda *a, **k: report)
    result = run_cli("evaluate", TINY, "--student-checkpoint", "s.pt")
    assert result.exit_code == 0, result.output
    assert "MSE vs teacher 0, PSNR inf dB" in result.output and "None" not in result.output


# --- 9. progress: bars on a terminal, plain lines elsewhere -----------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_plain_progress_writes_a_line_at_most_every_interval():
    stream, clock = io.StringIO(), _Clock()
    bar = progress_bar(1000, unit="row", desc="extract", file=stream, interval=10.0, clock=clock)
    assert isinstance(bar, PlainProgress)  # a StringIO is not a terminal
    times = []
    for step in range(100):  # one update every 0.5 s for 50 s
        clock.now = step * 0.5
        before = stream.getvalue().count("\n")
        bar.update(10)
        bar.set_postfix_str("3.0 MB/s raw", refresh=False)
        if stream.getvalue().count("\n") > before:
            times.append(clock.now)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert times == [10.0, 20.0, 30.0, 40.0]
    assert lines[0] == "extract: 210/1,000 rows (21%), 10 s, about 38 s left, 3.0 MB/s raw"
    assert lines[-1].startswith("extract: 1,000/1,000 rows (100%), ") and len(lines) == 5


def test_progress_bar_on_a_terminal_and_disabled():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    bar = progress_bar(10, unit="row", file=stream)
    assert not isinstance(bar, PlainProgress)
    bar.update(5)
    bar.close()
    assert "\r" in stream.getvalue()  # tqdm redraws in place
    quiet = io.StringIO()
    bar = progress_bar(10, enabled=False, file=quiet)
    bar.update(10)
    bar.close()
    assert quiet.getvalue() == ""


def test_extract_log_has_no_carriage_returns(teacher_ckpt, tmp_path):
    result = run_cli(*_small_extract(tmp_path / "s", teacher_ckpt))
    assert result.exit_code == 0, result.output
    assert "\r" not in result.output
    assert "extract: 16/16 rows (100%)" in result.stderr


# --- 10. Ctrl-C -------------------------------------------------------------------------------------


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_interrupt_suggests_resume_only_where_there_is_one(monkeypatch, tiny_store, tmp_path):
    monkeypatch.setattr(cli, "store_info", _interrupt)
    monkeypatch.setattr(cli, "extract", _interrupt)
    monkeypatch.setattr(EVALUATE, "evaluate", _interrupt)
    for args in (["info", tiny_store], ["evaluate", TINY, "--teacher", "t.pt"]):
        result = run_cli(*args)
        assert result.exit_code == 130
        assert result.output.strip() == "Error: interrupted."
    result = run_cli("extract", TINY, "--out", tmp_path / "s")
    assert result.exit_code == 130
    assert result.output.strip() == ("Error: interrupted. Committed work is kept; "
                                     "run the same command with --resume to continue.")
