"""The older pipeline's command lines: --batch_size, --fp16/--bf16, --ddp_backend, --local-rank, main.py.

Expected values are the seed README's meaning of each flag, written out by hand; refusals are one line, exit 2,
nothing created.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT
from helpers import FAST, final_weights, max_weight_diff, only_run, run_strata

from strata.config import build_parser, parse_run_config
from strata.errors import StrataError
from strata.training.launch import plan_launch

LAUNCH_ENV = ("WORLD_SIZE", "LOCAL_WORLD_SIZE", "RANK", "LOCAL_RANK", "TORCHELASTIC_RUN_ID")


@pytest.fixture(autouse=True)
def no_launcher(monkeypatch):
    """Each test starts as a plain `python train.py` (pytest might itself run under a launcher)."""
    for name in LAUNCH_ENV:
        monkeypatch.delenv(name, raising=False)


def _one_line_error(capsys, *args: str) -> str:
    code = run_strata(*args)
    err = capsys.readouterr().err
    # bitsandbytes 0.50 logs a missing optional `kernels` package once per process, on first import
    # (not a Strata line; tests/test_cli_errors.py meets it too when it runs first).
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("WARNING bitsandbytes")]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize("argv, train, eval_", [
    (["--batch_size", "8"], 8, 8),                                           # both batches, as in the seed
    (["--batch_size=8"], 8, 8),
    (["--batch-size", "8"], 8, 8),
    (["--batch_size", "8", "--per_device_eval_batch_size", "3"], 8, 3),      # an explicit eval batch is kept
    (["--per_device_eval_batch_size", "3", "--batch_size", "8"], 8, 3),
    (["--batch_size", "8", "--per_device_train_batch_size", "8"], 8, 8),     # the same value twice: no conflict
    ([], 16, 16),                                                           # the defaults are untouched
])
def test_batch_size_sets_the_train_and_eval_batch(argv, train, eval_):
    parsed = parse_run_config(argv)
    assert (parsed.train.per_device_train_batch_size, parsed.train.per_device_eval_batch_size) == (train, eval_)


@pytest.mark.parametrize("argv, precision", [
    (["--fp16"], "fp16"), (["--bf16"], "bf16"), (["--bf16", "--precision", "bf16"], "bf16"), ([], "auto"),
])
def test_fp16_and_bf16_are_precision(argv, precision):
    assert parse_run_config(argv).model.precision == precision


@pytest.mark.parametrize("argv, message", [
    (["--batch_size", "8", "--per_device_train_batch_size", "4"],
     "--batch_size 8 conflicts with --per_device_train_batch_size 4"),
    (["--batch_size", "8", "--batch_size", "4"], "--batch_size is given twice"),
    (["--fp16", "--precision", "bf16"], "--fp16 conflicts with --precision bf16"),
    (["--fp16", "--bf16"], "--fp16 and --bf16 both given"),
    (["--fp16=true"], "--fp16 is a switch"),
    (["--batch_size", "eight"], "--batch_size 'eight' is not a whole number"),
    (["--ddp_backend", "mpi"], "--ddp_backend 'mpi' is not one of nccl, gloo"),
    (["--local-rank=0"], "$LOCAL_RANK is not set"),
])
def test_conflicts_are_refused_in_one_line(capsys, tmp_path, argv, message):
    line = _one_line_error(capsys, "train", *argv, "--runs_dir", str(tmp_path / "runs"))
    assert message in line
    assert not (tmp_path / "runs").exists()


def test_help_shows_each_alias_beside_its_flag():
    text = " ".join(build_parser().format_help().split())
    assert "--per_device_train_batch_size PER_DEVICE_TRAIN_BATCH_SIZE, --per-device-train-batch-size " \
           "PER_DEVICE_TRAIN_BATCH_SIZE, --batch_size PER_DEVICE_TRAIN_BATCH_SIZE" in text
    assert "--fp16 / --bf16 are the same as --precision fp16 / bf16" in text   # in --precision's own help
    # --fp16/--bf16/--local_rank are TrainingArguments fields now (their own help says what they mean)
    for alias, meaning in (("--fp16 [FP16]", "same as --precision fp16"), ("--bf16 [BF16]", "same as --precision bf16"),
                           ("--local_rank LOCAL_RANK, --local-rank LOCAL_RANK",
                            "set by `python -m torch.distributed.launch`; checked against $LOCAL_RANK")):
        assert f"{alias} {meaning}" in text, alias
    rl = " ".join(build_parser(mode="rl").format_help().split())
    for alias, target in (("--grpo_beta", "--beta"), ("--grpo_group_size", "--num_generations"),
                          ("--rl_learning_rate", "--learning_rate"), ("--rl_warmup_steps", "--warmup_steps")):
        assert f"{alias} VALUE same as {target}" in rl, alias


def test_config_file_aliases_mean_the_same(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("batch_size: 8\nfp16: true\n")
    parsed = parse_run_config(["--config", str(config), "--device", "cpu"])
    assert (parsed.train.per_device_train_batch_size, parsed.train.per_device_eval_batch_size) == (8, 8)
    assert parsed.model.precision == "fp16"
    # flags on the command line still win over the file; an eval batch in the file is kept by --batch_size
    config.write_text("batch_size: 8\n")
    assert parse_run_config(["--config", str(config), "--per_device_train_batch_size", "2"]).train \
        .per_device_train_batch_size == 2
    config.write_text("per_device_eval_batch_size: 3\n")
    parsed = parse_run_config(["--config", str(config), "--batch_size", "5"])
    assert (parsed.train.per_device_train_batch_size, parsed.train.per_device_eval_batch_size) == (5, 3)


@pytest.mark.parametrize("text, message", [
    ("batch_size: 8\nper_device_train_batch_size: 4\n", "batch_size 8 conflicts with per_device_train_batch_size 4"),
    ("fp16: true\nbf16: true\n", "fp16 and bf16 both set"),
    ("fp16: true\nprecision: bf16\n", "fp16: true conflicts with precision: bf16"),
    ("fp16: false\n", "fp16: False has no Strata meaning"),
    ("batch_size: big\n", "batch_size: 'big' is not an integer"),
])
def test_config_file_alias_conflicts(capsys, tmp_path, text, message):
    config = tmp_path / "run.yaml"
    config.write_text(text)
    line = _one_line_error(capsys, "train", "--config", str(config), "--runs_dir", str(tmp_path / "runs"))
    assert str(config) in line and message in line


def _launched(monkeypatch, world: int, local_rank: int = 0) -> None:
    for name, value in (("WORLD_SIZE", world), ("LOCAL_WORLD_SIZE", world), ("RANK", local_rank),
                        ("LOCAL_RANK", local_rank), ("TORCHELASTIC_RUN_ID", "test")):
        monkeypatch.setenv(name, str(value))


def test_the_seeds_torch_distributed_launch_line_gets_past_parsing(monkeypatch):
    # `python -m torch.distributed.launch --nproc_per_node=4 main.py --multi_gpu ...` gives each worker
    # --local-rank=N before the script's own flags, and the same N in $LOCAL_RANK.
    _launched(monkeypatch, world=4, local_rank=2)
    for spelling in (["--local-rank=2"], ["--local_rank", "2"]):
        parsed = parse_run_config([*spelling, "--multi_gpu", "--model", "gpt2", "--dataset", "stanfordnlp/imdb",
                                   "--mode", "sft"])
        assert parsed.train.multi_gpu and parsed.model.model == "gpt2"
        assert plan_launch(parsed) is None  # a worker: train here, no second launch
    with pytest.raises(StrataError, match=r"--local-rank 1 disagrees with \$LOCAL_RANK=2"):
        parse_run_config(["--local-rank=1", "--multi_gpu"])


def test_ddp_backend_in_a_single_process_is_refused(capsys, tmp_path):
    line = _one_line_error(capsys, "train", *FAST, "--ddp_backend", "gloo", "--runs_dir", str(tmp_path / "runs"))
    assert "single process" in line and "--multi_gpu" in line and "torchrun" in line
    assert not (tmp_path / "runs").exists()


def test_ddp_backend_nccl_without_cuda_is_refused(capsys, tmp_path, monkeypatch):
    _launched(monkeypatch, world=2)  # a multi-process run, so only the missing CUDA can be objected to
    line = _one_line_error(capsys, "train", *FAST, "--device", "cpu", "--ddp_backend", "nccl",
                           "--runs_dir", str(tmp_path / "runs"))
    assert "--ddp_backend nccl needs CUDA" in line and "--device cpu" in line and "gloo" in line
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="this machine has 2 GPUs: --multi_gpu would launch")
def test_multi_gpu_without_gpus_names_the_count(capsys, tmp_path):
    line = _one_line_error(capsys, "train", *FAST, "--multi_gpu", "--runs_dir", str(tmp_path / "runs"))
    count = torch.cuda.device_count()
    assert f"needs at least 2 GPUs, and {count} {'is' if count == 1 else 'are'} visible" in line
    assert "--device cpu --nproc_per_node 2" in line
    assert not (tmp_path / "runs").exists()


def test_multi_gpu_under_a_one_process_launch_is_one_line(capsys, tmp_path, monkeypatch):
    _launched(monkeypatch, world=1)
    line = _one_line_error(capsys, "train", *FAST, "--multi_gpu", "--device", "cpu",
                           "--runs_dir", str(tmp_path / "runs"))
    assert "needs at least 2 processes, and this launch has 1" in line and "--nproc_per_node=2" in line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv, gpus, expected", [
    (["--multi_gpu"], 4, 4),                                   # one worker per visible GPU
    (["--multi_gpu", "--nproc_per_node", "2"], 4, 2),
    (["--multi_gpu", "--nproc_per_node", "8"], 4, "more workers than the 4 visible GPUs"),
    (["--multi_gpu"], 1, "1 is visible"),
    (["--multi_gpu", "--device", "cpu", "--nproc_per_node", "3"], 0, 3),
    (["--multi_gpu", "--device", "cpu"], 0, "needs --nproc_per_node N"),
    (["--multi_gpu", "--device", "cpu", "--nproc_per_node", "1"], 0, "--nproc_per_node 1 is one process"),
    (["--nproc_per_node", "2", "--device", "cpu"], 0, "add --multi_gpu"),
    ([], 4, None),                                             # no --multi_gpu: train right here
])
def test_how_many_workers_the_self_launch_starts(monkeypatch, argv, gpus, expected):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    parsed = parse_run_config(argv)
    if isinstance(expected, str):
        with pytest.raises(StrataError, match=expected):
            plan_launch(parsed)
    else:
        assert plan_launch(parsed) == expected


def test_nproc_per_node_under_a_launcher_must_match_it(monkeypatch):
    _launched(monkeypatch, world=2)
    assert plan_launch(parse_run_config(["--multi_gpu", "--device", "cpu", "--nproc_per_node", "2"])) is None
    with pytest.raises(StrataError, match="disagrees with the launcher's 2 processes"):
        plan_launch(parse_run_config(["--multi_gpu", "--device", "cpu", "--nproc_per_node", "4"]))


def test_main_py_and_train_py_train_the_same_run(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "error::FutureWarning",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    for script in ("main.py", "train.py"):
        done = subprocess.run([sys.executable, str(REPO_ROOT / script), *FAST, "--max_steps", "2", "--device", "cpu",
                               "--batch_size", "4", "--runs_dir", str(tmp_path / script)],
                              env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
    main_run, train_run = only_run(tmp_path / "main.py"), only_run(tmp_path / "train.py")
    assert main_run.name.split("_", 2)[2] == train_run.name.split("_", 2)[2]  # the same run key
    assert max_weight_diff(final_weights(main_run), final_weights(train_run)) == 0.0


def test_train_called_directly_refuses_what_only_the_cli_can_launch(tmp_path):
    from strata.training.run import train

    for argv, message in ((["--multi_gpu", "--device", "cpu", "--nproc_per_node", "2"], "started by `strata train`"),
                          (["--ddp_backend", "gloo"], "single process")):
        with pytest.raises(StrataError, match=message):
            train(parse_run_config([*FAST, *argv, "--runs_dir", str(tmp_path / "runs")]))
    assert not (tmp_path / "runs").exists()
