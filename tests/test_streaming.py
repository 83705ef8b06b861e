"""--streaming: mirror files opened as datasets' IterableDataset, rows made on the fly, mixtures by rate, resume.

References are computed here independently: tokenization and cutting/packing by plain Python loops over the
documents the stream yields, the loaded (non-streamed) path on the same documents, and
``datasets.interleave_datasets`` for the mixture's source sequence.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import datasets
import pytest
from conftest import REPO_ROOT
from helpers import final_weights, max_weight_diff, metrics, only_run, run_strata
from transformers import AutoTokenizer

from strata.config import DataArguments
from strata.data import streaming
from strata.data.formatting import load_formatted
from strata.data.pipeline import SOURCE_COLUMN, load_examples
from strata.data.tokenization import tokenize_pretraining
from strata.training import run as run_module  # imported here: its bitsandbytes notice is not a CLI line

SHAKESPEARE = "karpathy/tiny_shakespeare"
# A 2x64 Llama, short rows, fp32, a constant learning rate: 6 steps of 4 rows of 64 tokens.
PRETRAIN = ["--model", "llama-tiny", "--mode", "pretrain", "--dataset", SHAKESPEARE, "--max_length", "64",
            "--per_device_train_batch_size", "4", "--max_eval_examples", "4", "--eval_steps", "0",
            "--warmup_steps", "0", "--precision", "fp32", "--learning_rate", "3e-3", "--seed", "3"]


@pytest.fixture(scope="module")
def gpt2(hub_mirror: Path):
    return AutoTokenizer.from_pretrained(str(hub_mirror / "models/openai-community/gpt2"))


def _stream_data(**kwargs) -> DataArguments:
    return DataArguments(**{"dataset": SHAKESPEARE, "streaming": "true", "max_eval_examples": 4, **kwargs})


def _first(stream, n: int) -> list[dict]:
    return list(itertools.islice(iter(stream), n))


def test_one_pass_of_the_stream_is_the_loaded_split_shuffled(hub_mirror):
    examples = load_examples(_stream_data(), "pretrain", seed=1)
    loaded = load_formatted(SHAKESPEARE, None, "train", "pretrain", str(hub_mirror)).dataset["text"]
    assert examples.streaming and isinstance(examples.train, datasets.IterableDataset)
    one_pass = [row["text"] for row in _first(examples.train, len(loaded))]
    assert Counter(one_pass) == Counter(loaded)  # the same documents, formatted and chunked alike
    assert one_pass != loaded  # ... in a shuffled order
    second_pass = [row["text"] for row in _first(examples.train, 2 * len(loaded))[len(loaded):]]
    assert second_pass == one_pass  # the stream never ends: it starts again, in the same order


def _reference_rows(tok, docs: list[str], max_length: int, batch: int) -> list[list[int]]:
    """Documents + EOS joined per batch of `batch` documents, cut every max_length tokens (by hand)."""
    rows = []
    for start in range(0, len(docs), batch):
        tokens = []
        for doc in docs[start:start + batch]:
            ids = tok(doc, add_special_tokens=False)["input_ids"]
            if ids:
                tokens += ids + [tok.eos_token_id]
        for i in range(0, len(tokens), max_length):
            if len(tokens[i:i + max_length]) >= 2:
                rows.append(tokens[i:i + max_length])
    return rows


def test_streamed_pretraining_rows_equal_a_reference_and_the_loaded_path(gpt2):
    examples = load_examples(_stream_data(), "pretrain", seed=0)
    n_docs = 2 * streaming.TOKENIZE_BATCH  # two whole map batches: rows cross a batch boundary
    docs = [row["text"] for row in _first(examples.train, n_docs)]
    expected = _reference_rows(gpt2, docs, 64, streaming.TOKENIZE_BATCH)
    rows = _first(streaming.tokenize_stream(examples.train, gpt2, 64, use_packing=False), len(expected))
    assert [r["input_ids"] for r in rows] == expected
    assert all(r["labels"] == r["input_ids"] for r in rows)
    loaded = tokenize_pretraining(datasets.Dataset.from_dict({"text": docs}), gpt2, 64)
    assert loaded["input_ids"] == expected  # the non-streamed path cuts the same documents into the same rows


def _reference_packed(tok, docs: list[str], max_length: int, batch: int) -> tuple[list, list]:
    """Greedy packing token by token: a row closes when full; positions count from each document's start
    within the row (a document cut by a row boundary restarts at 0)."""
    rows, positions = [], []
    for start in range(0, len(docs), batch):
        row, pos = [], []
        for doc in docs[start:start + batch]:
            ids = tok(doc, add_special_tokens=False)["input_ids"]
            if not ids:
                continue
            p = 0
            for token in ids + [tok.eos_token_id]:
                if len(row) == max_length:
                    rows.append(row)
                    positions.append(pos)
                    row, pos, p = [], [], 0
                row.append(token)
                pos.append(p)
                p += 1
        if len(row) >= 2:
            rows.append(row)
            positions.append(pos)
    return rows, positions


def test_streamed_packed_rows_restart_positions_per_document(gpt2, hub_mirror):
    # glue/sst2 as pretraining text: short documents, so each 64-token row holds several.
    data = _stream_data(dataset="glue", dataset_config="sst2")
    examples = load_examples(data, "pretrain", seed=0)
    docs = [row["text"] for row in _first(examples.train, 2 * streaming.TOKENIZE_BATCH)]
    ids, positions = _reference_packed(gpt2, docs, 64, streaming.TOKENIZE_BATCH)
    rows = _first(streaming.tokenize_stream(examples.train, gpt2, 64, use_packing=True), len(ids))
    assert [r["input_ids"] for r in rows] == ids
    assert [r["position_ids"] for r in rows] == positions
    assert sum(p.count(0) for p in positions) > 2 * len(positions)  # several documents per row


def test_mixture_stream_follows_the_rates_and_interleave_datasets():
    data = _stream_data(datasets=[SHAKESPEARE, "glue"], dataset_configs=[None, "sst2"], mixture_rates=[0.7, 0.3],
                        dataset=None)
    examples = load_examples(data, "pretrain", seed=5)
    n = 4000
    drawn = [row[SOURCE_COLUMN] for row in _first(examples.train, n)]
    share = drawn.count(0) / n
    assert abs(share - 0.7) < 0.03, share  # binomial sd at n=4000 is 0.007
    # The independent path: interleave_datasets over two never-ending constant streams, same probabilities/seed.
    constant = [datasets.Dataset.from_dict({SOURCE_COLUMN: [i]}).to_iterable_dataset().repeat(None) for i in (0, 1)]
    reference = datasets.interleave_datasets(constant, probabilities=[0.7, 0.3], seed=5,
                                             stopping_strategy="first_exhausted")
    assert drawn == [row[SOURCE_COLUMN] for row in _first(reference, n)]
    tag = examples.tag
    assert tag == "mix_tiny-shakespeare-70_glue-sst2-30"


def test_max_train_examples_takes_the_first_documents_and_repeats_them():
    examples = load_examples(_stream_data(max_train_examples=5), "pretrain", seed=0)
    rows = [row["text"] for row in _first(examples.train, 15)]
    assert rows[:5] == rows[5:10] == rows[10:]
    full = [row["text"] for row in _first(load_examples(_stream_data(), "pretrain", seed=0).train, 5)]
    assert rows[:5] == full


def test_eval_rows_are_the_first_rows_of_the_eval_stream(hub_mirror):
    examples = load_examples(_stream_data(max_eval_examples=6), "pretrain", seed=0)
    loaded = load_formatted(SHAKESPEARE, None, "validation", "pretrain", str(hub_mirror)).dataset["text"]
    assert isinstance(examples.evals[0].dataset, datasets.Dataset)
    assert examples.evals[0].dataset["text"] == loaded[:6]


@pytest.mark.parametrize(("extra", "message"), [
    ([], "--streaming needs --max_steps"),
    (["--max_steps", "-1"], "--streaming needs --max_steps"),
    (["--max_steps", "4", "--num_train_epochs", "2"], "--num_train_epochs has no meaning on a stream"),
    (["--max_steps", "4", "--train_split", "train[:90%]"], "a stream reads whole splits"),
    (["--max_steps", "4", "--streaming", "maybe"], "--streaming 'maybe' is not one of auto, true, false"),
])
def test_streaming_refusals_are_one_line_and_create_nothing(tmp_path, capsys, extra, message):
    runs = tmp_path / "runs"
    capsys.readouterr()
    assert run_strata("train", *PRETRAIN, "--streaming", *extra, "--runs_dir", runs) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1, err
    assert not runs.exists()


def test_streaming_is_refused_for_sft_and_on_by_default_for_a_huge_corpus(tmp_path, capsys):
    runs = tmp_path / "runs"
    capsys.readouterr()
    assert run_strata("train", "--mode", "sft", "--streaming", "--max_steps", "2", "--runs_dir", runs) == 2
    assert "--streaming is not used by --mode sft" in capsys.readouterr().err
    # bookcorpus is marked streams_by_default: without --max_steps it is refused before anything is read
    # (the hub is off, so reading would fail with another message).
    assert run_strata("train", "--mode", "pretrain", "--dataset", "bookcorpus", "--runs_dir", runs) == 2
    err = capsys.readouterr().err.strip()
    assert "--streaming needs --max_steps" in err and "on by default for this corpus" in err, err
    assert not runs.exists()
    marked = {(i, c): streaming.uses_streaming(DataArguments(dataset=i, dataset_config=c), "pretrain")
              for i, c in [("PleIAs/common_corpus", None), ("open-web-math", None), ("bookcorpus", None),
                           ("JanosAudran/financial-reports-sec", "large_full"),
                           ("JanosAudran/financial-reports-sec", "small_lite"), (SHAKESPEARE, None)]}
    assert list(marked.values()) == [True, True, True, True, False, False], marked
    assert not streaming.uses_streaming(DataArguments(dataset="bookcorpus", streaming="false"), "pretrain")


def test_pretrain_streaming_end_to_end(tmp_path, capsys):
    runs = tmp_path / "runs"
    capsys.readouterr()
    assert run_strata("train", *PRETRAIN, "--streaming", "--max_steps", "4", "--runs_dir", runs) == 0
    run = only_run(runs)
    result = metrics(run)
    assert result["run"]["streaming"] is True and result["run"]["train_rows"] == 16
    assert result["train"]["num_input_tokens_seen"] == 4 * 4 * 64  # every streamed row is a full 64-token row
    assert result["eval"]["eval_loss"] > 0
    assert "tiny-shakespeare eval: the first 4 rows of its eval stream" in capsys.readouterr().out
    assert json.loads((run / "args.json").read_text())["streaming"] == "true"


def _crash_after_step_3(runs: Path) -> Path:
    """A run of 6 steps cut off right after its step-3 checkpoint: later state is gone."""
    interrupted = only_run(runs)
    shutil.rmtree(interrupted / "checkpoints" / "checkpoint-6")
    shutil.rmtree(interrupted / "final")
    (interrupted / "metrics.json").unlink()
    return interrupted


def test_resumed_stream_equals_the_uninterrupted_run(tmp_path, monkeypatch):
    common = [*PRETRAIN, "--streaming", "--max_steps", "6", "--save_steps", "3", "--save_total_limit", "5",
              "--lr_scheduler_type", "constant"]
    assert run_strata("train", *common, "--runs_dir", tmp_path / "a") == 0
    uninterrupted = final_weights(only_run(tmp_path / "a"))
    assert run_strata("train", *common, "--runs_dir", tmp_path / "b") == 0
    interrupted = _crash_after_step_3(tmp_path / "b")
    shutil.copytree(tmp_path / "b", tmp_path / "c")  # the same crashed run, for the control below
    assert run_strata("train", *common, "--runs_dir", tmp_path / "b", "--resume_from_checkpoint", "latest") == 0
    assert max_weight_diff(uninterrupted, final_weights(interrupted)) <= 1e-6
    state = json.loads((interrupted / "checkpoints/checkpoint-6/trainer_state.json").read_text())
    assert state["global_step"] == 6
    # Control: the same resume without restoring the data position (steps 4-6 read batches 1-3 again) differs,
    # so the comparison above can fail.
    original = run_module.finish

    def no_data_skip(*args, **kwargs):
        return original(*args, **{**kwargs, "ignore_data_skip": True})

    monkeypatch.setattr(run_module, "finish", no_data_skip)
    assert run_strata("train", *common, "--runs_dir", tmp_path / "c", "--resume_from_checkpoint", "latest") == 0
    assert max_weight_diff(uninterrupted, final_weights(only_run(tmp_path / "c"))) > 1e-4


def test_two_processes_see_the_rows_of_one_process_with_twice_the_batch(tmp_path):
    """accelerate dispatches the stream (rank 0 reads, each rank gets its slice of the global batch)."""
    common = [*PRETRAIN, "--streaming", "--max_steps", "3", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "error::FutureWarning"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29537",
                str(REPO_ROOT / "train.py")]
    batch = common.index("--per_device_train_batch_size")
    two = [*common[:batch], *common[batch + 2:]]
    subprocess.run([*torchrun, *two, "--per_device_train_batch_size", "2", "--runs_dir", tmp_path / "ddp"],
                   check=True, env=env, capture_output=True)
    assert run_strata("train", *two, "--per_device_train_batch_size", "4", "--runs_dir", tmp_path / "one") == 0
    ddp_run, one_run = only_run(tmp_path / "ddp"), only_run(tmp_path / "one")
    assert metrics(ddp_run)["train"]["num_input_tokens_seen"] == metrics(one_run)["train"]["num_input_tokens_seen"]
    assert max_weight_diff(final_weights(ddp_run), final_weights(one_run)) <= 1e-5


def test_a_carved_eval_split_is_the_first_rows_and_training_skips_them(tmp_path):
    """A single-file corpus evaluates on rows carved from its train split: on a stream, the first rows."""
    docs = [f"document number {i} says {'la ' * (i % 7)}" for i in range(50)]
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    examples = load_examples(_stream_data(dataset=str(path), max_eval_examples=5), "pretrain", seed=0)
    assert examples.evals[0].dataset["text"] == [d.strip() for d in docs[:5]]
    trained = [row["text"] for row in _first(examples.train, 45)]
    assert sorted(trained) == sorted(d.strip() for d in docs[5:])
    assert examples.sources[0]["train_skips_first"] == 5


@pytest.mark.parametrize("written,expected", [("true", "true"), ("false", "false"), ('"auto"', "auto")])
def test_streaming_in_a_config_file_reads_yaml_booleans(tmp_path, written, expected):
    from strata.config import parse_run_config

    path = tmp_path / "run.yaml"
    path.write_text(f"mode: pretrain\ndataset: karpathy/tiny_shakespeare\nmax_steps: 3\nstreaming: {written}\n")
    assert parse_run_config(["--config", str(path)]).data.streaming == expected
