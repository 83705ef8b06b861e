"""Answer extraction shared by evaluation and rewards, including every real GSM8K training answer."""

from __future__ import annotations

import json

import pytest

from strata.evaluation.answers import (
    extract_number,
    first_label_word,
    has_final_answer_line,
    numbers_match,
    token_f1,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She has 3 apples.\n#### 72", 72.0),
        ("#### 1,234", 1234.0),
        ("#### -5", -5.0),
        ("#### $18.50", 18.5),
        ("The answer is 1,234,567 dollars.", 1234567.0),
        ("It costs $5.50 each", 5.5),
        ("It costs -$3 net", -3.0),
        ("growth of 50%", 50.0),
        ("the box weighs 12kg", 12.0),
        ("the temperature was -3 degrees", -3.0),
        ("pages 3-5 of the book", 5.0),
        ("about 0.25 or .5", 0.5),
        ("three quarters is 3/4", 0.75),
        ("5 apples then 7 pears. Final: 12", 12.0),
        ("\\boxed{42} and later 7", 42.0),
        ("#### 10 (ignoring 99 later)", 10.0),
        ("no digits here", None),
        ("", None),
    ],
)
def test_extract_number(text, expected):
    assert extract_number(text) == expected


def test_hash_without_number_falls_back_to_last_number():
    assert extract_number("I think 7.\n#### ") == 7.0


def test_numbers_match():
    assert numbers_match(72.0, 72)
    assert numbers_match(1000.00001, 1000.0)
    assert not numbers_match(448001.0, 448000.0)  # whole numbers must be equal, whatever the tolerance
    assert numbers_match(2.50000001, 2.5)
    assert not numbers_match(71.0, 72.0)
    assert numbers_match(0.0, 0.0)
    assert not numbers_match(None, 1.0)
    assert not numbers_match(1.0, None)
    assert not numbers_match(float("nan"), float("nan"))
    assert numbers_match(1.05, 1.0, rel_tol=0.1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (" positive", "positive"),
        ("Positive.", "positive"),
        ("**NEGATIVE** because it was bad", "negative"),
        ("\n  neutral!", "neutral"),
        ("I think positive", None),
        ("positively", None),
        ("", None),
    ],
)
def test_first_label_word(text, expected):
    assert first_label_word(text, ["positive", "negative", "neutral"]) == expected


def test_first_label_word_multiword_and_original_spelling():
    labels = ["not_entailment", "Entailment", "not equivalent", "not"]
    assert first_label_word("entailment.", labels) == "Entailment"
    assert first_label_word("Not equivalent, sadly", labels) == "not equivalent"
    assert first_label_word("not sure", labels) == "not"


def test_has_final_answer_line():
    assert has_final_answer_line("work\n#### 42")
    assert has_final_answer_line("#### -3.5\n")
    assert has_final_answer_line("#### $1,000")
    assert not has_final_answer_line("the answer is 42")
    assert not has_final_answer_line("#### forty-two")
    assert not has_final_answer_line("")


def test_token_f1():
    assert token_f1("The cat sat.", "the cat sat") == 1.0
    assert token_f1("a dog", "the cat") == 0.0
    assert token_f1("cat sat on mat", "the cat sat") == pytest.approx(2 * (2 / 4) * 1.0 / (2 / 4 + 1.0))
    assert token_f1("", "") == 1.0
    assert token_f1("", "cat") == 0.0


def _gsm8k(hub_mirror, split):
    path = hub_mirror / "datasets/openai/gsm8k/main" / f"{split}.jsonl"
    if not path.is_file():
        pytest.skip(f"GSM8K is not in the mirror at {path}")
    with path.open() as f:
        return [json.loads(line) for line in f]


def test_every_gsm8k_train_answer_parses(hub_mirror):
    rows = _gsm8k(hub_mirror, "train")
    assert len(rows) == 7473
    for row in rows:
        answer = row["answer"]
        gold = float(answer.rsplit("####", 1)[1].strip().replace(",", ""))
        assert numbers_match(extract_number(answer), gold), answer[-80:]
        assert has_final_answer_line(answer), answer[-80:]
