"""The padding collators against the libraries' own on the same features: the tensors must be equal.

GPT-2 has no pad token and pads with EOS, so the features end in a real, labelled EOS whose id is also the
padding id: a collator that decides padding by id (transformers' DataCollatorForLanguageModeling) drops
that label; one that decides it by position (ours, TRL's, DataCollatorForSeq2Seq's label padding) keeps it.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, ByT5Tokenizer, DataCollatorForLanguageModeling, DataCollatorForSeq2Seq

from strata.data.collate import IGNORE_INDEX, PaddingCollator
from strata.hub import resolve_model_path

TEXTS = ["The film was a delight", "Profit fell", "Our waiter was rude to us at lunch downtown", "Ok"]


@pytest.fixture(scope="module")
def gpt2(hub_mirror):
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("gpt2"))
    tokenizer.pad_token = tokenizer.eos_token  # what strata.models.tokenizers does for GPT-2
    return tokenizer


def _causal_features(tokenizer) -> list[dict]:
    """Prompt/completion rows as tokenize_completions makes them: context labels -100, EOS labelled."""
    rows = []
    for text in TEXTS:
        ids = tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
        cut = max(1, len(ids) // 2)
        rows.append({"input_ids": ids, "labels": [IGNORE_INDEX] * cut + ids[cut:]})
    return rows


def _assert_same(ours: dict, theirs, keys: tuple[str, ...]) -> None:
    for key in keys:
        assert ours[key].dtype == theirs[key].dtype == torch.long, key
        assert torch.equal(ours[key], theirs[key]), key


@pytest.mark.parametrize("multiple", [None, 8])
def test_padding_collator_equals_transformers_seq2seq_collator(gpt2, multiple) -> None:
    features = _causal_features(gpt2)
    ours = PaddingCollator(gpt2, pad_to_multiple_of=multiple)(features)
    theirs = DataCollatorForSeq2Seq(gpt2, label_pad_token_id=IGNORE_INDEX, pad_to_multiple_of=multiple)(features)
    _assert_same(ours, theirs, ("input_ids", "attention_mask", "labels"))
    assert ours["input_ids"].shape[1] == (16 if multiple else max(len(f["input_ids"]) for f in features))
    ends = [len(f["input_ids"]) - 1 for f in features]
    assert [int(ours["labels"][i, end]) for i, end in enumerate(ends)] == [gpt2.eos_token_id] * len(features)


def test_padding_collator_without_labels_equals_trl_and_keeps_eos(gpt2) -> None:
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling as TRLCollator

    features = [{"input_ids": row["input_ids"]} for row in _causal_features(gpt2)]
    ours = PaddingCollator(gpt2)(features)
    _assert_same(ours, TRLCollator(pad_token_id=gpt2.pad_token_id)(features), ("input_ids", "attention_mask", "labels"))
    eos_labels = int((ours["labels"] == gpt2.eos_token_id).sum())
    assert eos_labels == len(features)  # every row's real EOS
    by_id = DataCollatorForLanguageModeling(gpt2, mlm=False)(features)  # masks "labels == pad id"
    assert int((by_id["labels"] == gpt2.eos_token_id).sum()) == 0


def test_padding_collator_keeps_stratum_ids_which_the_library_drops(gpt2) -> None:
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling as TRLCollator

    features = [{**row, "stratum_ids": i % 3} for i, row in enumerate(_causal_features(gpt2))]
    ours = PaddingCollator(gpt2)(features)
    assert ours["stratum_ids"].tolist() == [0, 1, 2, 0]
    assert "stratum_ids" not in TRLCollator(pad_token_id=gpt2.pad_token_id)(features)


def test_seq2seq_library_collator_pads_encoder_and_labels_apart() -> None:
    """DataCollatorForSeq2Seq, which the seq2seq pipeline uses, on ByT5's right-padding tokenizer (pad 0)."""
    from strata.data.collate import seq2seq_collator

    feats = [{"input_ids": [3, 4, 1], "labels": [5, 1]}, {"input_ids": [9, 1], "labels": [6, 7, 8, 1]}]
    batch = seq2seq_collator(ByT5Tokenizer())(feats)
    assert batch["input_ids"].tolist() == [[3, 4, 1], [9, 1, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[5, 1, -100, -100], [6, 7, 8, 1]]
