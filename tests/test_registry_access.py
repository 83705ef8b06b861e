"""Issue 17: what is refused before anything is loaded (loading scripts, gated repos, images), the code reward with
BigCodeBench's code_prompt, and what `strata datasets` says about each entry."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from helpers import run_strata

from strata.data import registry, sources
from strata.data.formatting import load_formatted
from strata.errors import StrataError
from strata.training import rewards

FIXTURES = Path(__file__).parent / "fixtures"
SCRIPT_DATASETS = [("deepmind/math_dataset", "algebra__linear_1d", "math_dataset.py"),
                   ("bookcorpus/bookcorpus", None, "bookcorpus.py"),
                   ("JanosAudran/financial-reports-sec", "small_lite", "financial-reports-sec.py")]


@pytest.fixture
def no_hub_download(monkeypatch):
    """Any attempt to load from the hub fails the test (local json/parquet files still load); returns the calls."""
    calls: list[tuple] = []
    real_load = datasets.load_dataset

    def guarded(path, *args, **kwargs):
        if path in ("json", "parquet", "csv"):
            return real_load(path, *args, **kwargs)
        calls.append((path, args, kwargs))
        raise AssertionError(f"the hub was asked for {path}: {args} {kwargs}")

    def forbidden(*args, **kwargs):
        calls.append((args, kwargs))
        raise AssertionError(f"the hub was asked for split names: {args} {kwargs}")

    monkeypatch.setattr(datasets, "load_dataset", guarded)
    monkeypatch.setattr(datasets, "get_dataset_split_names", forbidden)
    return calls


def _online(monkeypatch):
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(name, "0")


# --- Why, bullet 2: loading scripts are refused with one line, before any download, offline and online
@pytest.mark.parametrize("online", [False, True])
@pytest.mark.parametrize(("hub_id", "config", "script"), SCRIPT_DATASETS)
def test_script_datasets_are_refused_before_any_download(monkeypatch, tmp_path, no_hub_download, online, hub_id,
                                                         config, script):
    if online:
        _online(monkeypatch)
    mode = "pretrain" if registry.get_spec(hub_id).family == "pretrain" else "sft"
    with pytest.raises(StrataError) as err:
        load_formatted(hub_id, config, mode=mode, mirror=tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"dataset '{hub_id}' cannot be loaded from the hub: its hub repo is a loading script "
                              f"({script}), which datasets >= 4 no longer runs")
    assert "--dataset PATH" in message
    assert not no_hub_download
    spec = registry.get_spec(hub_id)
    assert (spec.status, spec.loading_script, spec.revision) == ("unsupported", True, None)


def test_a_documented_parquet_revision_is_what_gets_loaded(monkeypatch, tmp_path):
    """With a revision in the spec the hub is asked for exactly that revision (none is confirmed today)."""
    _online(monkeypatch)
    spec = registry.REGISTRY["bookcorpus/bookcorpus"]
    monkeypatch.setitem(registry.REGISTRY, spec.hub_id, dataclasses.replace(spec, revision="refs/convert/parquet"))
    seen = {}

    def fake_load(path, name=None, split=None, revision=None):
        seen.update(path=path, name=name, split=split, revision=revision)
        return datasets.Dataset.from_dict({"text": ["a line .", "another line ."]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    out = load_formatted("bookcorpus", split="train[:2]", mode="pretrain", mirror=tmp_path)
    assert seen == {"path": "bookcorpus/bookcorpus", "name": None, "split": "train[:2]",
                    "revision": "refs/convert/parquet"}
    assert out.dataset["text"] == ["a line .", "another line ."]


# --- Why, bullet 4: a gated dataset without a token is refused before anything is loaded; with one it goes on
@pytest.mark.parametrize("online", [False, True])
def test_gated_dataset_without_a_token(monkeypatch, tmp_path, no_hub_download, online):
    import huggingface_hub

    if online:
        _online(monkeypatch)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(StrataError) as err:
        load_formatted("financemath", mirror=tmp_path)
    assert str(err.value) == (
        "dataset 'yale-nlp/FinanceMath' is gated on the hub: accept its terms at "
        "https://huggingface.co/datasets/yale-nlp/FinanceMath, then log in with `hf auth login` or set HF_TOKEN "
        "(or pass a local copy with --dataset PATH)")
    assert not no_hub_download


def test_gated_dataset_with_a_token_goes_on(monkeypatch, tmp_path):
    import huggingface_hub

    _online(monkeypatch)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_fixture")
    seen = {}

    def fake_load(path, name=None, split=None, revision=None):
        seen.update(path=path, split=split)
        return datasets.Dataset.from_list([
            {"question_id": "v-0", "question": "What is 10% of 50?", "tables": [],
             "python_solution": "def solution():\n    return 50 * 0.1", "ground_truth": 5.0, "topic": "x"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    out = load_formatted("financemath", split="validation[:1]", mirror=tmp_path).dataset[0]
    assert seen == {"path": "yale-nlp/FinanceMath", "split": "validation[:1]"}
    assert out["completion"] == "def solution():\n    return 50 * 0.1\n#### 5.0" and out["reference"] == "5.0"


def test_a_mirrored_copy_of_a_gated_dataset_needs_no_token(monkeypatch, no_hub_download):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    assert len(load_formatted("financemath", split="validation", mirror=FIXTURES).dataset) == 8  # the carve
    assert not no_hub_download


# --- Why, bullet 7: the vision set is refused for a text model; a vision-language model takes it through its
# processor (training/vision.py, tests/test_vision.py), and the text formatter never sees it
def test_vision_dataset_is_refused_for_a_text_model(capsys, tmp_path):
    from transformers import GPT2Config

    spec = registry.get_spec("sujet_finance_qa_vision")
    assert spec.status == "checked_against_card" and spec.requires_vision
    with pytest.raises(StrataError, match="needs a vision-language model .* 'gpt2' is text-only; use --model llava-tiny"):
        registry.check_model_supports(spec, GPT2Config())

    class VisionConfig:
        model_type = "llava"
        vision_config = object()

    registry.check_model_supports(spec, VisionConfig())  # a vision-language model goes on to the vision path
    with pytest.raises(StrataError, match="has images: it trains only with a vision-language model"):
        load_formatted(spec.hub_id, mirror=FIXTURES)  # as text it would lose the images
    code = run_strata("train", "--dataset", spec.hub_id, "--runs_dir", str(tmp_path / "runs"), "--max_steps", "1")
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]  # (library warnings aside)
    assert code == 2 and len(errors) == 1 and "needs a vision-language model" in errors[0]
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists()


# --- Why, bullet 8: the code reward judges a body-only completion together with code_prompt
CODE_PROMPT = "import math\ndef task_func(values):\n"
BODY = "    return [math.sqrt(v) for v in values]\n"
WRONG_BODY = "    return [v * v for v in values]\n"
TEST = ("import unittest\n\nclass TestCases(unittest.TestCase):\n    def test_roots(self):\n"
        "        self.assertEqual(task_func([4, 9]), [2.0, 3.0])\n")


def _run_locally(source: str, timeout_s: float = 10.0) -> bool:
    """A second path for the sandbox in tests: the same program run by a plain interpreter."""
    return subprocess.run([sys.executable, "-I", "-c", source], capture_output=True, timeout=timeout_s).returncode == 0


def test_code_reward_uses_code_prompt(monkeypatch):
    prompt = ["Return the square roots.\n```\nimport math\ndef task_func(values):\n```\n"] * 3
    completions = [BODY, WRONG_BODY, "def task_func(values):\n" + BODY]
    columns = {"entry_point": ["task_func"] * 3, "code_prompt": [CODE_PROMPT] * 3, "test": [TEST] * 3}
    # defining the function is enough without execution: the body alone is completed by the code_prompt
    assert rewards.code(["no code in this prompt"] * 3, completions, **columns) == [1.0, 1.0, 1.0]
    assert rewards.code(["no code in this prompt"], [BODY], entry_point=["task_func"]) == [0.0]  # no code_prompt
    programs: list[str] = []

    def run(source: str, timeout_s: float = 10.0) -> bool:
        programs.append(source)
        return _run_locally(source, timeout_s)

    monkeypatch.setattr(rewards, "run_code_sandboxed", run)
    assert rewards.code(prompt, completions, code_execution=True, **columns) == [1.0, 0.0, 1.0]
    assert programs[0].startswith(CODE_PROMPT + BODY)  # imports and signature present when it runs
    assert programs[2].startswith("import math\ndef task_func(values):\n" + BODY)
    assert _run_locally(CODE_PROMPT + WRONG_BODY + "\n\n" + TEST)  # the TestCase alone would never fail ...
    assert not _run_locally(programs[1])  # ... so the reward runs it


# --- "Done when": `strata datasets` shows each entry's status and source; `show` the columns and the carve
def test_datasets_table_shows_status_and_source(capsys):
    assert run_strata("datasets") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["dataset", "aliases", "family", "configs", "train/eval", "modes", "status", "source"]
    expected = {"stanfordnlp/imdb": ("verified_offline", "mirror"),
                "TheFinAI/fiqa-sentiment-classification": ("checked_against_card", "hub card"),
                "deepmind/math_dataset": ("unsupported", "hub loader math_dataset.py"),
                "sujet-ai/Sujet-Finance-QA-Vision-100k": ("checked_against_card", "hub card + issue"),
                "yale-nlp/FinanceMath": ("checked_against_card+", "hub card")}
    for hub_id, (status, source) in expected.items():
        line = next(line for line in lines if line.startswith(hub_id + " "))
        assert f"  {status}  " in line and line.endswith(source), line
    assert sum(1 for line in lines if "/" in line.split(" ", 1)[0]) == len(registry.REGISTRY) == 26


def test_datasets_show_says_status_source_columns_and_carve(capsys):
    assert run_strata("datasets", "show", "financemath", "--hub_mirror", str(FIXTURES)) == 0
    out = capsys.readouterr().out
    assert "status:   checked_against_card (schema from the public card/loader; a fixture in that schema is " \
           "tested); gated on the hub (needs `hf auth login` or HF_TOKEN)" in out
    assert "source:   huggingface.co/datasets/yale-nlp/FinanceMath (card: question_id, question, tables" in out
    assert "columns:  question, tables, python_solution, ground_truth (expected in the raw rows)" in out
    assert "carve:    validation shuffled with seed 0: first 80% for training, last 20% for evaluation" in out
    assert "completion: 'def solution():" in out
    assert run_strata("datasets", "show", "math_dataset") == 0
    out = capsys.readouterr().out
    assert "status:   unsupported: its hub repo is a loading script (math_dataset.py)" in out
    assert "example:  not available offline (dataset 'deepmind/math_dataset' cannot be loaded from the hub" in out


def test_hub_refusal_is_none_for_ordinary_entries():
    assert registry.hub_refusal("stanfordnlp/imdb") is None
    assert registry.hub_refusal("not/registered") is None
    assert sources.resolve_dataset("imdb").kind == "mirror"
