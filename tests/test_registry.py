"""The dataset registry: every required dataset, aliases, local files, vision guard, table and describe."""

from __future__ import annotations

import json

import pytest
from transformers import GPT2Config

from strata import cli_datasets
from strata.data import local_files, registry
from strata.data.formatting import format_example, load_formatted
from strata.errors import StrataError

REQUIRED = [
    "stanfordnlp/imdb", "nyu-mll/glue", "takala/financial_phrasebank", "zeroshot/twitter-financial-news-sentiment",
    "TheFinAI/fiqa-sentiment-classification", "cais/mmlu", "TIGER-Lab/MMLU-Pro",
    "cornell-movie-review-data/rotten_tomatoes", "cardiffnlp/tweet_eval", "LLukas22/fiqa", "gbharti/finance-alpaca",
    "JanosAudran/financial-reports-sec", "ashraq/financial-news-articles", "sujet-ai/Sujet-Finance-QA-Vision-100k",
    "openai/gsm8k", "yale-nlp/FinanceMath", "deepmind/math_dataset", "bigcode/bigcodebench", "PleIAs/common_corpus",
    "bookcorpus/bookcorpus", "AdaptLLM/finance-tasks", "open-web-math/open-web-math", "Salesforce/wikitext",
    "karpathy/tiny_shakespeare", "strata/synthetic-strata", "virattt/financial-qa-10K",
]
MIRRORED = {
    "stanfordnlp/imdb", "nyu-mll/glue", "takala/financial_phrasebank", "zeroshot/twitter-financial-news-sentiment",
    "cornell-movie-review-data/rotten_tomatoes", "cardiffnlp/tweet_eval", "openai/gsm8k", "karpathy/tiny_shakespeare",
    "strata/synthetic-strata",
}


def test_every_required_dataset_is_registered_with_valid_fields():
    assert sorted(registry.REGISTRY) == sorted(REQUIRED)
    for hub_id, spec in registry.REGISTRY.items():
        assert spec.family in registry.FAMILIES, hub_id
        assert set(spec.modes) <= set(registry.MODES), hub_id
        assert spec.verified_offline == (hub_id in MIRRORED) == (spec.status == "verified_offline"), hub_id
        assert spec.default_config is None or spec.default_config in spec.configs, hub_id
    glue = registry.get_spec("glue")
    assert glue.configs == ("cola", "sst2", "mrpc", "qqp", "mnli", "qnli", "rte", "wnli")
    assert registry.get_spec("financial_phrasebank").configs == (
        "sentences_allagree", "sentences_75agree", "sentences_66agree", "sentences_50agree")
    assert registry.get_spec("AdaptLLM/finance-tasks").configs == ("ConvFinQA", "FPB", "FiQA_SA", "Headline", "NER")
    assert registry.get_spec("mmlu").label_words == ("A", "B", "C", "D")
    assert registry.get_spec("mmlu-pro").label_words == tuple("ABCDEFGHIJ")
    assert registry.get_spec("gsm8k").configs == ("main", "socratic")


def test_sentiment_words_are_harmonised():
    three = ("negative", "neutral", "positive")
    assert registry.get_spec("tweet_eval").label_words == three
    assert registry.get_spec("fpb").label_words == three
    assert registry.get_spec("synthetic").label_words == three
    # twitter financial news ids: 0 bearish, 1 bullish, 2 neutral
    assert registry.get_spec("twitter_fin").label_words == ("negative", "positive", "neutral")
    assert registry.get_spec("imdb").label_words == ("negative", "positive")
    assert registry.get_spec("glue").for_config("cola").label_words == ("unacceptable", "acceptable")


def test_fiqa_score_is_binned_to_three_classes():
    spec = registry.get_spec("TheFinAI/fiqa-sentiment-classification")
    labels = [
        format_example(spec, None, {"sentence": "Shares up", "score": score}, "sft")["completion"]
        for score in (-0.6, -0.1, 0.0, 0.1, 0.35)
    ]
    assert labels == [" negative", " neutral", " neutral", " neutral", " positive"]


def test_multiple_choice_formatting():
    spec = registry.get_spec("mmlu")
    row = {"question": "2 + 2 = ?", "subject": "elementary_mathematics", "choices": ["3", "4", "5", "22"], "answer": 1}
    out = format_example(spec, "all", row, "sft")
    assert out["prompt"] == (
        "The following is a multiple choice question about elementary mathematics. Answer with the letter of the "
        "correct option.\n\n2 + 2 = ?\nA. 3\nB. 4\nC. 5\nD. 22\nAnswer:"
    )
    assert (out["completion"], out["label"], out["reference"]) == (" B", 1, "B")
    pro = format_example(registry.get_spec("mmlu_pro"), None,
                         {"question": "q", "options": list("abcdefghij"), "answer_index": 9, "category": "law"}, "sft")
    assert pro["completion"] == " J" and "J. j" in pro["prompt"]


def test_get_spec_unknown_suggests_close_matches():
    with pytest.raises(StrataError) as err:
        registry.get_spec("imbd")
    message = str(err.value)
    assert message.startswith("unknown dataset 'imbd'; did you mean imdb")
    assert "pass a local .jsonl/.csv/.parquet file with --text_column and --label_column" in message
    assert "\n" not in message


def test_unknown_config_lists_configs():
    with pytest.raises(StrataError, match="dataset 'nyu-mll/glue' has no config 'sst3'; pass --dataset_config with one "
                                          "of cola, sst2, mrpc"):
        registry.get_spec("glue").for_config("sst3")


def _write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_local_jsonl_with_columns_and_label_names(tmp_path):
    path = tmp_path / "tickets.jsonl"
    _write_jsonl(path, [{"body": f"ticket {i}", "y": i % 3} for i in range(30)])
    spec = local_files.spec_for_local(str(path), "body", "y", "low,medium,high")
    assert (spec.family, spec.label_words, spec.prompt_template) == (
        "classification", ("low", "medium", "high"), "generic_classification")
    fd = load_formatted(str(path), split="train[:3]", text_column="body", label_column="y", label_names="low,medium,high")
    assert fd.dataset[2] == {
        "prompt": "Classify the following text as 'low', 'medium' or 'high'.\n\nText: ticket 2\nLabel:",
        "completion": " high", "label": 2, "reference": "high", "domain": "tickets",
    }
    # a single-file dataset is carved for evaluation, disjoint from training
    train = load_formatted(str(path), text_column="body", label_column="y", label_names="low,medium,high")
    held = load_formatted(str(path), purpose="eval", text_column="body", label_column="y", label_names="low,medium,high")
    assert (len(train.dataset), len(held.dataset)) == (27, 3)
    assert not set(train.dataset["prompt"]) & set(held.dataset["prompt"])


def test_local_csv_string_labels_and_custom_template(tmp_path):
    path = tmp_path / "news.csv"
    path.write_text("headline,sentiment\nStocks soar,up\nStocks sink,down\nFlat day,flat\n")
    fd = load_formatted(str(path), split="train[:1]", text_column="headline", label_column="sentiment",
                        prompt_template="Headline: {text}\nDirection:")
    assert fd.label_words == ["down", "flat", "up"]  # inferred: sorted distinct strings
    assert fd.dataset[0] == {"prompt": "Headline: Stocks soar\nDirection:", "completion": " up", "label": 2,
                             "reference": "up", "domain": "news"}


def test_local_missing_column_names_the_existing_ones(tmp_path):
    path = tmp_path / "data.jsonl"
    _write_jsonl(path, [{"body": "x", "y": 0}])
    with pytest.raises(StrataError, match=r"has no column 'text' \(--text_column, for --task classification\); its columns are body, y"):
        local_files.spec_for_local(str(path))


def test_local_label_out_of_range(tmp_path):
    path = tmp_path / "data.jsonl"
    _write_jsonl(path, [{"text": "a", "label": 0}, {"text": "b", "label": 3}])
    with pytest.raises(StrataError, match=r"gives 2 names but column 'label' .* holds label ids 0..3"):
        load_formatted(str(path), label_names="neg,pos")


def test_template_without_text_field_is_rejected(tmp_path):
    path = tmp_path / "data.jsonl"
    _write_jsonl(path, [{"text": "a", "label": 0}])
    with pytest.raises(StrataError, match=r"prompt template must contain \{text\}"):
        load_formatted(str(path), prompt_template="About {subject}:")
    with pytest.raises(StrataError, match=r"prompt template uses unknown field\(s\) \['review'\]"):
        load_formatted(str(path), prompt_template="Review: {review}")


def test_vision_dataset_fails_fast_for_text_model():
    spec = registry.get_spec("sujet-ai/Sujet-Finance-QA-Vision-100k")
    assert spec.requires_vision
    with pytest.raises(StrataError, match="needs a vision-language model .* 'gpt2' is text-only"):
        registry.check_model_supports(spec, GPT2Config())
    registry.check_model_supports(registry.get_spec("imdb"), GPT2Config())
    # a vision-language model takes it through its processor (tests/test_vision.py)


def test_format_table_lists_every_dataset():
    table = cli_datasets.format_table()
    lines = table.splitlines()
    assert lines[0].split() == ["dataset", "aliases", "family", "configs", "train/eval", "modes", "status", "source"]
    for hub_id in REQUIRED:
        assert any(line.startswith(hub_id + " ") for line in lines), hub_id
    fpb = next(line for line in lines if line.startswith("takala/financial_phrasebank"))
    assert "train/train*" in fpb and "  verified_offline  " in fpb and fpb.rstrip().endswith("mirror")


def test_describe_shows_a_real_example(hub_mirror):
    text = cli_datasets.describe("glue", "sst2")
    assert "dataset:  nyu-mll/glue (config sst2)" in text
    assert "labels:   0=negative, 1=positive" in text
    assert "completion: ' positive'" in text or "completion: ' negative'" in text


def test_describe_notes_missing_offline_data(hub_mirror):
    text = cli_datasets.describe("mmlu")
    assert "example:  not available offline (dataset 'cais/mmlu' (config all) not found offline" in text


def test_unsupported_mode_lists_supported_modes():
    with pytest.raises(StrataError, match="does not support --mode pretrain; it supports sft, rl"):
        load_formatted("mmlu", mode="pretrain")


def test_task_selects_the_family_of_a_local_file(tmp_path):
    """--task pretrain reads a text-only file as raw text; --task qa reads question/answer columns."""
    text_only = tmp_path / "notes.jsonl"
    _write_jsonl(text_only, [{"text": f"note number {i}"} for i in range(10)])
    raw = load_formatted(str(text_only), split="train[:2]", mode="pretrain")
    assert raw.family == "pretrain" and raw.dataset[1] == {"text": "note number 1"}
    assert load_formatted(str(text_only), split="train[:1]", mode="pretrain", task="pretrain").family == "pretrain"

    qa = tmp_path / "faq.jsonl"
    _write_jsonl(qa, [{"question": f"What is {i}+1?", "answer": str(i + 1)} for i in range(10)])
    fd = load_formatted(str(qa), split="train[:1]", task="qa")
    assert fd.family == "qa"
    assert fd.dataset[0] == {"prompt": "Answer the question.\n\nQuestion: What is 0+1?\nAnswer:", "completion": " 1",
                             "label": -1, "reference": "1", "domain": "faq"}
    # a labelled file in pretrain mode keeps being a classification set, written out as text
    labelled = tmp_path / "labelled.jsonl"
    _write_jsonl(labelled, [{"text": "fine", "label": 0}, {"text": "bad", "label": 1}] * 5)
    assert load_formatted(str(labelled), split="train[:1]", mode="pretrain").family == "classification"


def test_label_names_must_match_the_labels_present(tmp_path):
    path = tmp_path / "news.csv"
    path.write_text("headline,sentiment\nStocks soar,up\nStocks sink,down\n")
    with pytest.raises(StrataError, match=r"names \['flat'\], which column 'sentiment'"):
        load_formatted(str(path), text_column="headline", label_column="sentiment", label_names="down,flat,up")
    with pytest.raises(StrataError, match=r"labels \['up'\] of column 'sentiment' are not among"):
        load_formatted(str(path), text_column="headline", label_column="sentiment", label_names="down,flat")
