"""Every dataset in the shared mirror, formatted from real rows and checked against its label mapping.

The expected label words are written out here independently of the registry, and the raw rows are read
straight from the mirror's JSON lines, so a wrong id → word mapping in the registry fails these tests.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from strata.data.formatting import SFT_COLUMNS, load_formatted
from strata.errors import StrataError

MOVIE = "Classify the sentiment of this movie review as either 'positive' or 'negative'.\n\nReview: {}\nSentiment:"


def raw_rows(hub_mirror: Path, rel: str, n: int) -> list[dict]:
    with open(hub_mirror / "datasets" / rel, encoding="utf-8") as handle:
        return [json.loads(next(handle)) for _ in range(n)]


def check_against_raw(fd, rows: list[dict], words: dict[int, str], text_key: str) -> None:
    assert fd.dataset.column_names == list(SFT_COLUMNS)
    assert len(fd.dataset) == len(rows)
    for got, raw in zip(fd.dataset, rows):
        word = words[raw["label"]]
        assert got["completion"] == " " + word
        assert got["reference"] == word
        assert fd.label_words[got["label"]] == word
        assert raw[text_key].strip() in got["prompt"]


def test_sst2_known_validation_rows(hub_mirror):
    fd = load_formatted("glue", "sst2", "validation[:2]", purpose="eval")
    first, second = fd.dataset[0], fd.dataset[1]
    assert first["prompt"] == MOVIE.format("it 's a charming and often affecting journey .")
    assert (first["completion"], first["label"], first["domain"]) == (" positive", 1, "sst2")
    assert second["prompt"] == MOVIE.format("unflinchingly bleak and desperate")
    assert (second["completion"], second["label"]) == (" negative", 0)
    assert fd.tag == "glue-sst2" and fd.label_words == ["negative", "positive"]


def test_sst2_test_split_is_unlabelled(hub_mirror):
    message = "split test[:20] of 'nyu-mll/glue' has no labels; use --eval_split validation"
    with pytest.raises(StrataError, match=re.escape(message)):
        load_formatted("glue", "sst2", "test[:20]", purpose="eval")


@pytest.mark.parametrize(
    ("config", "words", "text_key", "first_completion"),
    [
        ("cola", {0: "unacceptable", 1: "acceptable"}, "sentence", " acceptable"),
        ("mrpc", {0: "no", 1: "yes"}, "sentence1", " yes"),
        ("rte", {0: "yes", 1: "no"}, "sentence1", " no"),  # rte: 0 entailment, 1 not_entailment
        ("wnli", {0: "no", 1: "yes"}, "sentence1", " no"),  # wnli: 0 not_entailment, 1 entailment
    ],
)
def test_glue_tasks(hub_mirror, config, words, text_key, first_completion):
    rows = raw_rows(hub_mirror, f"nyu-mll/glue/{config}/validation.jsonl", 5)
    fd = load_formatted("nyu-mll/glue", config, "validation[:5]", purpose="eval")
    check_against_raw(fd, rows, words, text_key)
    assert fd.dataset[0]["completion"] == first_completion
    assert fd.dataset[0]["domain"] == config and fd.tag == f"glue-{config}"
    if "sentence2" in rows[0]:  # pair tasks show both sentences
        assert rows[0]["sentence2"].strip() in fd.dataset[0]["prompt"]
        assert "Sentence 2:" in fd.dataset[0]["prompt"]


def test_wnli_entailment_row(hub_mirror):
    fd = load_formatted("glue", "wnli", "validation[:2]", purpose="eval")
    assert fd.dataset[1]["prompt"] == (
        "Does the first sentence imply the second? Answer 'yes' or 'no'.\n\n"
        "Sentence 1: Jane knocked on Susan's door but she did not answer.\nSentence 2: Susan did not answer.\nAnswer:"
    )
    assert fd.dataset[1]["completion"] == " yes"


def test_rotten_tomatoes(hub_mirror):
    fd = load_formatted("rotten_tomatoes", split="validation[533:534]", purpose="eval")
    row = fd.dataset[0]
    assert row["prompt"] == MOVIE.format(
        "it's difficult to discern if this is a crazy work of disturbed genius or merely 90 minutes of "
        "post-adolescent electra rebellion ."
    )
    assert (row["completion"], row["domain"]) == (" negative", "rotten_tomatoes")
    rows = raw_rows(hub_mirror, "cornell-movie-review-data/rotten_tomatoes/validation.jsonl", 3)
    check_against_raw(load_formatted("rotten_tomatoes", split="validation[:3]"), rows, {0: "negative", 1: "positive"}, "text")


def test_rotten_tomatoes_max_examples_is_shuffled(hub_mirror):
    # The split lists all positives first: a seeded subset must still hold both labels.
    fd = load_formatted("rotten_tomatoes", purpose="eval", max_examples=40, seed=0)
    assert set(fd.dataset["label"]) == {0, 1}
    again = load_formatted("rotten_tomatoes", purpose="eval", max_examples=40, seed=0)
    assert fd.dataset["prompt"] == again.dataset["prompt"]


def test_imdb_eval_uses_test(hub_mirror):
    fd = load_formatted("imdb", purpose="eval", max_examples=10)
    assert fd.split == "test" and fd.tag == "imdb-sentiment"
    rows = raw_rows(hub_mirror, "stanfordnlp/imdb/train.jsonl", 2)
    check_against_raw(load_formatted("imdb", split="train[:2]"), rows, {0: "negative", 1: "positive"}, "text")
    assert "<br />" in load_formatted("imdb", split="train[:1]").dataset[0]["prompt"]  # raw text kept


def test_tweet_eval_sentiment(hub_mirror):
    rows = raw_rows(hub_mirror, "cardiffnlp/tweet_eval/sentiment/validation.jsonl", 6)
    fd = load_formatted("tweet_eval", "sentiment", "validation[:6]", purpose="eval")
    check_against_raw(fd, rows, {0: "negative", 1: "neutral", 2: "positive"}, "text")
    assert fd.dataset[0]["completion"] == " neutral" and fd.dataset[1]["completion"] == " positive"
    assert fd.dataset[0]["prompt"].startswith("Classify the sentiment of this tweet as 'negative', 'neutral' or 'positive'.")


def test_tweet_eval_train_missing_names_existing_splits(hub_mirror):
    with pytest.raises(StrataError, match=r"split 'train' is not in dataset 'cardiffnlp/tweet_eval' \(config sentiment\); "
                                          r"available splits: validation, test"):
        load_formatted("tweet_eval", purpose="train")


@pytest.mark.parametrize("config", ["sentences_allagree", "sentences_75agree", "sentences_66agree", "sentences_50agree"])
def test_financial_phrasebank_configs(hub_mirror, config):
    rows = raw_rows(hub_mirror, f"takala/financial_phrasebank/{config}/train.jsonl", 4)
    fd = load_formatted("financial_phrasebank", config, "train[:4]")
    check_against_raw(fd, rows, {0: "negative", 1: "neutral", 2: "positive"}, "sentence")
    assert fd.dataset[0]["prompt"].endswith(
        "Sentence: According to Gran , the company has no plans to move all production to Russia , although that "
        "is where the company is growing .\nSentiment:"
    )
    assert fd.dataset[0]["completion"] == " neutral" and fd.dataset[0]["domain"] == "fpb"


def test_financial_phrasebank_carve_is_disjoint_and_seeded(hub_mirror):
    train = load_formatted("fpb", "sentences_allagree", purpose="train")
    evaluation = load_formatted("fpb", "sentences_allagree", purpose="eval")
    assert (len(train.dataset), len(evaluation.dataset)) == (2264 - 226, 226)
    assert not set(train.dataset["prompt"]) & set(evaluation.dataset["prompt"]) or (
        # a few sentences are duplicated in the source file itself; the rows must still be different rows
        len(set(train.dataset["prompt"]) & set(evaluation.dataset["prompt"])) < 5
    )
    assert "seed 0" in evaluation.split_note and evaluation.split == "train"
    assert evaluation.dataset["prompt"] == load_formatted("fpb", "sentences_allagree", purpose="eval").dataset["prompt"]
    assert set(evaluation.dataset["label"]) == {0, 1, 2}


def test_twitter_financial_news_bearish_bullish_mapping(hub_mirror):
    rows = raw_rows(hub_mirror, "zeroshot/twitter-financial-news-sentiment/validation.jsonl", 40)
    fd = load_formatted("zeroshot/twitter-financial-news-sentiment", split="validation[:40]", purpose="eval")
    check_against_raw(fd, rows, {0: "negative", 1: "positive", 2: "neutral"}, "text")
    assert fd.dataset[0]["completion"] == " negative"  # "$ALLY - Ally Financial pulls outlook" is bearish
    bullish = fd.dataset[34]
    assert "Baird bullish on beat-up Canada Goose" in bullish["prompt"] and bullish["completion"] == " positive"
    assert fd.label_words == ["negative", "positive", "neutral"] and bullish["domain"] == "twitter_fin"


@pytest.mark.parametrize("config", ["main", "socratic"])
def test_gsm8k_keeps_reference_answer(hub_mirror, config):
    fd = load_formatted("gsm8k", config, "test[:1]", purpose="eval", mode="rl")
    row = fd.dataset[0]
    assert row["prompt"].startswith("Solve the problem step by step")
    assert "Janet’s ducks lay 16 eggs per day." in row["prompt"] and row["prompt"].endswith("\nAnswer:")
    assert row["reference"] == "18" and row["completion"].endswith("#### 18")
    assert row["label"] == -1 and row["domain"] == "gsm8k" and fd.family == "math" and fd.label_words is None


def test_gsm8k_socratic_has_no_train_in_mirror(hub_mirror):
    with pytest.raises(StrataError, match="available splits: test"):
        load_formatted("gsm8k", "socratic", purpose="train")


def test_tiny_shakespeare_pretrain_chunks(hub_mirror):
    fd = load_formatted("tiny_shakespeare", mode="pretrain", purpose="eval")
    texts = fd.dataset["text"]
    assert fd.dataset.column_names == ["text"] and len(texts) > 50
    assert max(len(t) for t in texts) <= 1024
    assert texts[0].startswith("?\n\nGREMIO:\nGood morrow, neighbour Baptista.")
    raw = raw_rows(hub_mirror, "karpathy/tiny_shakespeare/validation.jsonl", 1)[0]["text"]
    assert len(raw) == 55_770 and all(t in raw for t in texts)
    assert 55_770 - 2 * len(texts) - 2 <= sum(len(t) for t in texts) <= 55_770  # only "\n\n" joins dropped


def test_tiny_shakespeare_rejects_sft(hub_mirror):
    with pytest.raises(StrataError, match="does not support --mode sft; it supports pretrain"):
        load_formatted("tiny_shakespeare", mode="sft")


def test_classification_in_pretrain_mode_is_prompt_plus_completion(hub_mirror):
    fd = load_formatted("glue", "sst2", "validation[:1]", mode="pretrain")
    assert fd.dataset[0] == {"text": MOVIE.format("it 's a charming and often affecting journey .") + " positive"}


def test_explicit_task_must_match_family(hub_mirror):
    with pytest.raises(StrataError, match="is a classification dataset, not math; use --task auto or --task classification"):
        load_formatted("imdb", split="test[:5]", task="math")
    assert load_formatted("imdb", split="test[:5]", task="classification").family == "classification"


def test_empty_split_is_an_error(hub_mirror):
    with pytest.raises(StrataError, match=r"split 'validation\[:0\]' of 'nyu-mll/glue' is empty; pick a wider slice or another split"):
        load_formatted("glue", "sst2", "validation[:0]")
