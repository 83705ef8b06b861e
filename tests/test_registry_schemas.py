"""Issue 17: every registry entry not in the mirror, formatted from rows written in its real (card) schema.

The rows are in tests/fixtures/datasets (hub layout, so the folder is passed as --hub_mirror). Expected prompts,
completions and references are written out here by hand from those rows, not produced by the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from strata.data import registry
from strata.data.formatting import load_formatted
from strata.errors import StrataError

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE_DATASETS = FIXTURES / "datasets"


def rows(rel: str) -> list[dict]:
    lines = (FIXTURE_DATASETS / rel).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def fmt(dataset_id: str, config: str | None = None, split: str | None = None, **kwargs):
    return load_formatted(dataset_id, config, split, mirror=FIXTURES, **kwargs)


def test_every_unverified_entry_has_a_fixture_and_a_source():
    for hub_id, spec in registry.REGISTRY.items():
        assert spec.schema_source, hub_id
        assert spec.status in registry.STATUSES, hub_id
        if spec.status != "verified_offline":
            assert (FIXTURE_DATASETS / hub_id).is_dir(), f"no fixture for {hub_id}"
        if spec.status == "unsupported":
            assert spec.status_reason, hub_id


# --- Why, bullet 1: fiqa-sentiment's eval split is `valid`, and the score belongs to a (sentence, target) pair
def test_fiqa_sentiment_evaluates_on_valid_and_keeps_the_target():
    spec = registry.get_spec("fiqa-sa")
    assert (spec.train_split, spec.eval_split) == ("train", "valid")
    held = fmt("fiqa-sa", purpose="eval")
    assert held.split == "valid" and len(held.dataset) == 2
    assert held.dataset[0] == {
        "prompt": "Classify the sentiment of this financial text towards the target as 'negative', 'neutral' or "
                  "'positive'.\n\nText: $TSLA breaking down below support\nTarget: TSLA\nSentiment:",
        "completion": " negative", "label": 0, "reference": "negative", "domain": "fiqa_sa",
    }
    train = fmt("fiqa-sa", split="train[:2]")
    # one sentence, two targets, two scores (0.32 → positive, -0.45 → negative): two different examples
    sentence = "Tesco and Sainsbury's shares diverge as Tesco cuts prices"
    assert [r["prompt"].split("Text: ")[1] for r in train.dataset] == [
        f"{sentence}\nTarget: Tesco\nSentiment:", f"{sentence}\nTarget: Sainsbury's\nSentiment:"]
    assert train.dataset["completion"] == [" positive", " negative"]


# --- Why, bullet 3: MMLU subject configs have no auxiliary_train
def test_mmlu_subject_config_trains_on_validation_and_all_on_auxiliary_train():
    assert registry.get_spec("mmlu").for_config("all").train_split == "auxiliary_train"
    subject = registry.get_spec("mmlu").for_config("abstract_algebra")
    assert (subject.train_split, subject.eval_split) == ("validation", "test")
    fd = fmt("mmlu", "abstract_algebra")
    assert fd.split == "validation"
    assert fd.dataset[0]["prompt"] == (
        "The following is a multiple choice question about abstract algebra. Answer with the letter of the correct "
        "option.\n\nIs Z_5 a field?\nA. Yes\nB. No\nC. Only mod 2\nD. Undefined\nAnswer:")
    assert (fd.dataset[0]["completion"], fd.dataset[0]["reference"]) == (" A", "A")
    aux = fmt("mmlu", "all", split="auxiliary_train[:2]")
    assert aux.dataset["completion"] == [" B", " B"]


# --- Why, bullet 4: FinanceMath trains and evaluates on different rows; tables are text, not a Python repr
def test_financemath_carves_validation_and_renders_tables():
    train = fmt("financemath")
    held = fmt("financemath", purpose="eval")
    assert (len(train.dataset), len(held.dataset)) == (8, 2)  # 10 validation rows, seeded 80/20
    assert not set(train.dataset["prompt"]) & set(held.dataset["prompt"])
    assert held.split_note.startswith("validation shuffled with seed 0")
    first = fmt("financemath", split="validation[:1]").dataset[0]
    assert first["prompt"] == (
        "Solve this financial problem. Write a Python function `solution()` that returns the numeric answer, then "
        "give the answer on a last line as '#### <number>'.\n\nQuestion: How many days does the company take to "
        "collect its receivables?\n\n| Item | Value |\n|---|---|\n| Revenue | 600000 |\n\n| Item | Value |\n|---|---|"
        "\n| Receivables | 50000 |\nSolution:\n")
    assert "['" not in first["prompt"]
    assert first["completion"] == ("def solution():\n    revenue = 600000\n    receivables = 50000\n"
                                   "    return 365 / (revenue / receivables)\n#### 30.417")
    assert first["reference"] == "30.417"


# --- Why, bullet 6: AdaptLLM ConvFinQA has id, input, label: completions and references must not be empty
def test_adaptllm_convfinqa_uses_label_and_fpb_uses_options():
    conv = fmt("AdaptLLM/finance-tasks", "ConvFinQA", split="test[:1]").dataset[0]
    assert conv == {"prompt": "Table: revenue 10 in 2019.\nQuestion: what was revenue?\nAnswer:",
                    "completion": " 10", "label": -1, "reference": "10", "domain": "adaptllm_convfinqa"}
    fpb = fmt("AdaptLLM/finance-tasks", "FPB", split="test[:1]").dataset[0]
    assert (fpb["prompt"], fpb["completion"], fpb["reference"]) == ("Profit rose 1%.\nSentiment?\nAnswer:",
                                                                    " positive", "positive")


@pytest.mark.parametrize(("dataset_id", "config", "split", "eval_split"), [
    ("AdaptLLM/finance-tasks", "ConvFinQA", "test", "test"),
    ("AdaptLLM/finance-tasks", "FPB", "test", "test"),
    ("yale-nlp/FinanceMath", None, "validation", "validation"),
    ("bigcode/bigcodebench", None, "v0.1.4", "v0.1.4"),
    ("virattt/financial-qa-10K", None, "train", "train"),
])
def test_single_labelled_split_is_carved_never_trained_on_whole(dataset_id, config, split, eval_split):
    spec = registry.get_spec(dataset_id).for_config(config)
    assert spec.eval_carve is not None and spec.eval_carve.source_split == split == spec.train_split
    assert spec.eval_split == eval_split
    train, held = fmt(dataset_id, config), fmt(dataset_id, config, purpose="eval")
    assert len(train.dataset) + len(held.dataset) == 10 and len(held.dataset) >= 1
    every = {json.dumps(r, sort_keys=True) for r in rows(f"{dataset_id}/{config + '/' if config else ''}{split}.jsonl")}
    assert len(every) == 10  # the fixture rows are distinct, so distinct prompts mean distinct rows
    assert not set(train.dataset["prompt"]) & set(held.dataset["prompt"])
    assert len(set(train.dataset["prompt"]) | set(held.dataset["prompt"])) == 10
    assert train.split_note and held.split_note


# --- Why, bullet 8: BigCodeBench completions are the code_prompt followed by the body
def test_bigcodebench_completion_is_code_prompt_plus_body_and_keeps_reward_columns():
    raw = rows("bigcode/bigcodebench/v0.1.4.jsonl")[0]
    assert raw["canonical_solution"] == "    return [math.sqrt(v) for v in values]\n"  # only the body
    out = fmt("bigcodebench", split="v0.1.4[:1]").dataset[0]
    program = "import math\ndef task_func(values):\n    return [math.sqrt(v) for v in values]"
    assert out["completion"] == out["reference"] == program
    assert out["prompt"] == ("Return the square root of every value.\nYou should write self-contained code starting "
                             "with:\n```\nimport math\ndef task_func(values):\n```\n")
    assert (out["code_prompt"], out["entry_point"]) == ("import math\ndef task_func(values):\n", "task_func")
    assert out["test"].startswith("import unittest")


# --- Why, bullet 9 and issue 12 item 4: financial-qa-10K; the card-matching entries format as expected
def test_financial_qa_10k():
    spec = registry.get_spec("virattt/financial-qa-10K")
    assert (spec.family, spec.question_column, spec.context_column, spec.answer_column) == (
        "qa", "question", "context", "answer")
    out = fmt("financial_qa_10k", split="train[:1]").dataset[0]
    assert out == {
        "prompt": "Answer the question from the context.\n\nContext: Since our original focus on PC graphics, we have "
                  "expanded into several other important markets.\n\nQuestion: What area did NVIDIA initially focus on "
                  "before expanding?\nAnswer:",
        "completion": " PC graphics.", "label": -1, "reference": "PC graphics.", "domain": "financial_qa_10k"}
    from strata.training.rewards import default_rewards_for_family

    assert default_rewards_for_family(spec.family) == ["token_f1"]


def test_card_matching_entries():
    pro = fmt("mmlu-pro", split="test").dataset[0]
    assert pro["completion"] == " F" and "F. 11" in pro["prompt"] and pro["domain"] == "mmlu_pro"
    fiqa = fmt("LLukas22/fiqa", purpose="eval").dataset[0]
    assert (fiqa["prompt"], fiqa["completion"]) == (
        "Answer the question.\n\nQuestion: What is a Roth IRA?\nAnswer:",
        " A retirement account funded with after-tax money.")
    alpaca = fmt("finance-alpaca", split="train[1:2]").dataset[0]
    assert alpaca["prompt"] == ("### Instruction:\nSummarise the sentence.\n\n### Input:\nRates rose again in March."
                                "\n\n### Response:\n")
    assert alpaca["completion"] == "Rates went up."
    news = fmt("ashraq/financial-news-articles", split="train[:1]", mode="pretrain").dataset[0]
    assert news == {"text": "Stocks rose on Monday after strong earnings."}
    wiki = fmt("wikitext", split="validation", mode="pretrain").dataset[0]
    assert wiki == {"text": "= Homarus gammarus ="}
    qqp = fmt("glue", "qqp", split="validation", purpose="eval").dataset[0]
    assert qqp["prompt"].endswith("Question 1: How do I learn Python?\nQuestion 2: What is the best way to learn "
                                  "Python?\nAnswer:") and qqp["completion"] == " yes"
    mnli = fmt("glue", "mnli", purpose="eval").dataset[0]
    assert mnli["completion"] == " yes" and "Hypothesis: A man is making music." in mnli["prompt"]
    qnli = fmt("glue", "qnli", split="validation", purpose="eval").dataset[0]
    assert qnli["completion"] == " yes" and "Sentence: The Eiffel Tower is in Paris." in qnli["prompt"]
    for corpus, text in [("common_corpus", "Open text number 0."), ("open_web_math", "Let $x^2 = 4$, so $x = \\pm 2$.")]:
        assert fmt(corpus, split="train[:1]", mode="pretrain").dataset[0] == {"text": text}


# --- Why, bullet 2 (a local copy of a script dataset still works through the mirror layout)
def test_a_mirrored_copy_of_a_script_dataset_is_formatted():
    out = fmt("math_dataset", "algebra__linear_1d", split="test").dataset[0]
    assert out["prompt"] == ("Solve the problem step by step, then give the final answer.\n\nQuestion: Solve 3*t = 12 "
                             "for t.\nAnswer:")
    assert (out["completion"], out["reference"]) == (" 4", "4")
    sec = fmt("financial_reports_sec", "small_lite", split="train[:1]", mode="pretrain").dataset[0]
    assert sec == {"text": "Net sales increased during 2020."}
    assert fmt("bookcorpus", split="train[:1]", mode="pretrain").dataset[0] == {"text": "the door creaked open ."}


# --- Why, bullet 5: the huge corpora are marked to stream (the streaming itself is built elsewhere)
def test_huge_corpora_stream_by_default():
    for name in ("PleIAs/common_corpus", "bookcorpus/bookcorpus", "open-web-math/open-web-math"):
        assert registry.get_spec(name).streams_by_default, name
    sec = registry.get_spec("JanosAudran/financial-reports-sec")
    assert [sec.for_config(c).streams_by_default for c in sec.configs] == [False, False, True, True]
    assert not registry.get_spec("imdb").streams_by_default


def test_a_schema_that_does_not_match_fails_in_one_line(tmp_path):
    folder = tmp_path / "datasets" / "AdaptLLM" / "finance-tasks" / "FPB"
    folder.mkdir(parents=True)
    (folder / "test.jsonl").write_text(json.dumps({"id": "1", "input": "x", "label": "positive"}) + "\n")
    with pytest.raises(StrataError) as err:
        load_formatted("AdaptLLM/finance-tasks", "FPB", "test", mirror=tmp_path)
    assert str(err.value) == ("'AdaptLLM/finance-tasks' (FPB) has no column(s) options, gold_index; its columns are "
                              "id, input, label (expected input, options, gold_index)")
