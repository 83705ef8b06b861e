"""Tokenization: completion-only labels, left truncation of the prompt, EOS, BOS handling, chunking."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from datasets import Dataset
from transformers import AutoTokenizer, ByT5Tokenizer

from strata.data.encoding import SpecialTokens, special_tokens
from strata.data.tokenization import (
    tokenize_completions,
    tokenize_pretraining,
    tokenize_seq2seq,
)
from strata.errors import StrataError

PROMPT = (
    "Classify the sentiment of this movie review as either 'positive' or 'negative'.\n\n"
    "Review: {sentence}\nSentiment:"
)


@pytest.fixture(scope="module")
def gpt2_tok(hub_mirror: Path):
    return AutoTokenizer.from_pretrained(str(hub_mirror / "models/openai-community/gpt2"))


def _sft(sentences: list[str], completions: list[str]) -> Dataset:
    return Dataset.from_dict(
        {
            "prompt": [PROMPT.format(sentence=s) for s in sentences],
            "completion": completions,
            "label": [int(c == " positive") for c in completions],
            "domain": ["movies"] * len(sentences),
        }
    )


def test_completion_only_labels_and_eos_with_gpt2(gpt2_tok) -> None:
    ds = _sft(["a gorgeous , witty film ", "dull"], [" positive", " negative"])
    out = tokenize_completions(ds, gpt2_tok, max_length=64)
    assert out.column_names == ["input_ids", "labels"]  # label/domain dropped
    eos = gpt2_tok.eos_token_id
    for row, ex in zip(out, ds):
        prompt_ids = gpt2_tok(ex["prompt"])["input_ids"]
        target = gpt2_tok(ex["completion"])["input_ids"] + [eos]
        assert row["input_ids"] == prompt_ids + target  # separate tokenization, concatenated
        assert row["labels"] == [-100] * len(prompt_ids) + target
    # GPT-2 merges nothing across "Sentiment:" + " positive", so joint tokenization agrees here too
    assert out[0]["input_ids"][:-1] == gpt2_tok(ds[0]["prompt"] + ds[0]["completion"])["input_ids"]


def test_prompt_is_cut_from_the_left_keeping_the_cue(gpt2_tok) -> None:
    long_review = "this film is long and winding and " * 40
    ds = _sft([long_review, "short"], [" negative", " positive"])
    out = tokenize_completions(ds, gpt2_tok, max_length=32)
    cue = gpt2_tok("\nSentiment:", add_special_tokens=False)["input_ids"]
    row = out[0]
    assert len(row["input_ids"]) == 32
    target = gpt2_tok(" negative")["input_ids"] + [gpt2_tok.eos_token_id]
    assert row["input_ids"][-len(target) :] == target  # the completion is intact
    assert row["input_ids"][-len(target) - len(cue) : -len(target)] == cue  # the cue survives
    assert row["labels"].count(-100) == 32 - len(target)
    assert len(out[1]["input_ids"]) < 32  # short rows are not padded or cut


def test_completion_that_cannot_fit_raises_with_count_and_length(gpt2_tok) -> None:
    ds = Dataset.from_dict(
        {"prompt": ["Q:", "Q:", "Q:"], "completion": [" a b c d e f", " yes", " g h i j k l"]}
    )
    with pytest.raises(StrataError, match=r"2 of 3 examples .* max_length=5 .* use max_length >= 8"):
        tokenize_completions(ds, gpt2_tok, max_length=5)
    assert len(tokenize_completions(ds, gpt2_tok, max_length=8)) == 3


def test_empty_completion_without_eos_is_an_error(gpt2_tok) -> None:
    ds = Dataset.from_dict({"prompt": ["Q:"], "completion": [""]})
    with pytest.raises(StrataError, match="empty completion"):
        tokenize_completions(ds, gpt2_tok, max_length=8, add_eos=False)
    assert tokenize_completions(ds, gpt2_tok, max_length=8)[0]["labels"][-1] == gpt2_tok.eos_token_id


def test_missing_columns_are_a_strata_error(gpt2_tok) -> None:
    with pytest.raises(StrataError, match="needs column"):
        tokenize_completions(Dataset.from_dict({"text": ["x"]}), gpt2_tok, max_length=8)


class _BosTokenizer:
    """A Llama-style stand-in: add_special_tokens=True puts BOS (id 1) in front; ids are bytes + 3."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, None

    def __call__(self, texts, add_special_tokens=True, truncation=False):
        single = isinstance(texts, str)
        batch = [texts] if single else texts
        ids = [([1] if add_special_tokens else []) + [b + 3 for b in t.encode()] for t in batch]
        return {"input_ids": ids[0] if single else ids}


def test_bos_goes_in_front_of_the_prompt_and_survives_truncation() -> None:
    tok = _BosTokenizer()
    assert special_tokens(tok) == SpecialTokens(prefix=(1,), suffix=(), eos=2)
    ds = Dataset.from_dict({"prompt": ["abcdefgh"], "completion": [" z"]})
    row = tokenize_completions(ds, tok, max_length=7)[0]
    # BOS + last 3 prompt bytes ("fgh") + " z" + EOS
    assert row["input_ids"] == [1, *(b + 3 for b in b"fgh"), ord(" ") + 3, ord("z") + 3, 2]
    assert row["labels"] == [-100] * 4 + [ord(" ") + 3, ord("z") + 3, 2]


def test_byt5_eos_suffix_is_not_put_inside_the_prompt() -> None:
    tok = ByT5Tokenizer()
    assert special_tokens(tok) == SpecialTokens(prefix=(), suffix=(tok.eos_token_id,), eos=tok.eos_token_id)
    row = tokenize_completions(Dataset.from_dict({"prompt": ["hi:"], "completion": [" ok"]}), tok, 16)[0]
    assert row["input_ids"].count(tok.eos_token_id) == 1 and row["input_ids"][-1] == tok.eos_token_id


def test_seq2seq_encoder_keeps_suffix_and_targets_end_in_eos() -> None:
    tok = ByT5Tokenizer()
    ds = Dataset.from_dict({"prompt": ["x" * 20 + "Sentiment:"], "completion": [" positive"], "label": [1]})
    row = tokenize_seq2seq(ds, tok, max_length=12, max_target_length=10)[0]
    assert set(row) == {"input_ids", "labels"}
    assert row["input_ids"] == tok("xSentiment:")["input_ids"]  # left-cut to 11 bytes, </s> kept at the end
    assert row["labels"] == tok(" positive")["input_ids"]  # ByT5 adds </s>: same as completion + EOS
    with pytest.raises(StrataError, match="max_target_length=5"):
        tokenize_seq2seq(ds, tok, max_length=12, max_target_length=5)


def test_pretraining_chunks_with_eos_separators(gpt2_tok) -> None:
    ds = Dataset.from_dict({"text": ["one two three four five", "six seven"]})
    out = tokenize_pretraining(ds, gpt2_tok, max_length=4)
    eos = gpt2_tok.eos_token_id
    stream = gpt2_tok(ds[0]["text"])["input_ids"] + [eos] + gpt2_tok(ds[1]["text"])["input_ids"] + [eos]
    assert len(stream) % 4 == 1  # 9 tokens: two full rows, and a 1-token tail (predicts nothing) is dropped
    assert out["input_ids"] == [stream[0:4], stream[4:8]]
    out3 = tokenize_pretraining(ds, gpt2_tok, max_length=3)
    assert [t for row in out3["input_ids"] for t in row] == stream  # nothing else is ever dropped
    assert all(len(r) == 4 for r in out["input_ids"][:-1]) and out["labels"] == out["input_ids"]


def test_pretraining_on_one_million_character_row(hub_mirror: Path, gpt2_tok) -> None:
    path = hub_mirror / "datasets/karpathy/tiny_shakespeare/train.jsonl"
    text = json.loads(path.read_text().splitlines()[0])["text"]
    assert len(text) > 1_000_000
    start = time.perf_counter()
    out = tokenize_pretraining(Dataset.from_dict({"text": [text]}), gpt2_tok, max_length=256)
    elapsed = time.perf_counter() - start
    assert len(out) == -(-301_967 // 256)  # 301,966 GPT-2 tokens + one EOS
    assert all(len(r) == 256 for r in out["input_ids"][:-1])
    assert elapsed < 60, f"took {elapsed:.1f}s"
