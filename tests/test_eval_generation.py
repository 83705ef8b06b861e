"""Greedy generation, label/answer parsing and the ``evaluate_dataset`` dispatcher.

A "constant" GPT-2 makes outcomes hand-computable: its final LayerNorm has weight 0, so every
position's hidden state is the LayerNorm bias ``v``; the untied LM head is zero except the
preferred token's row, which is ``v``. Every next-token distribution is then the same: logit
``|v|^2`` for the preferred token and 0 for all others, whatever the input.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import (
    AutoTokenizer,
    ByT5Tokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    T5Config,
    T5ForConditionalGeneration,
)

from strata.errors import StrataError
from strata.evaluation import evaluate_dataset
from strata.evaluation.generation import (
    cut_after_final_answer,
    generate_texts,
    parse_label,
    score_math_answer,
)
from strata.evaluation.perplexity import perplexity_from_rows, perplexity_from_texts

GPT2_DIR = Path(__file__).resolve().parents[2] / "shared" / "hub" / "models" / "openai-community" / "gpt2"
LABELS = ["negative", "neutral", "positive"]
PREFERRED_LOGIT = 9.0


@pytest.fixture(scope="module")
def tok():
    if not GPT2_DIR.is_dir():
        pytest.skip(f"GPT-2 tokenizer files not at {GPT2_DIR}")
    return AutoTokenizer.from_pretrained(str(GPT2_DIR))


def constant_model(tok, word: str) -> GPT2LMHeadModel:
    """A GPT-2 whose next-token distribution is fixed and prefers the single token ``word``."""
    (token,) = tok(word, add_special_tokens=False)["input_ids"]
    config = GPT2Config(
        n_embd=32, n_layer=1, n_head=2, n_positions=64, vocab_size=len(tok), tie_word_embeddings=False
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    v = torch.zeros(32)
    v[0] = math.sqrt(PREFERRED_LOGIT)
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(v)
        model.lm_head.weight.zero_()
        model.lm_head.weight[token] = v
    return model.eval()


@pytest.fixture(scope="module")
def positive_model(tok):
    return constant_model(tok, " positive")


def sentiment_dataset(labels: list[int], domains: list[str] | None = None) -> Dataset:
    rows = {
        "prompt": [f"Review {i}: it was fine. Sentiment:" + " really" * (i % 3) for i in range(len(labels))],
        "completion": [" " + LABELS[y] for y in labels],
        "label": labels,
        "reference": [LABELS[y] for y in labels],
        "domain": domains or ["sst"] * len(labels),
    }
    return Dataset.from_dict(rows)


# ----------------------------------------------------------------------------- parsing
def test_parse_label_reads_the_first_word():
    assert parse_label("Positive.", LABELS) == 2
    assert parse_label("  **negative** because the plot drags", LABELS) == 0
    assert parse_label("I think it is positive", LABELS) is None
    assert parse_label("", LABELS) is None


def test_math_answer_uses_the_first_final_line():
    text = "3 + 4 = 7\n#### 7\n\nQuestion: what is 2+6?\n#### 8"
    assert cut_after_final_answer(text) == "3 + 4 = 7\n#### 7"
    graded = score_math_answer(text, "She has 3 + 4 = 7 apples.\n#### 7")
    assert graded["correct"] and graded["pred"] == 7.0 and graded["has_final_line"]
    assert not score_math_answer("no idea", "#### 7")["correct"]


# ----------------------------------------------------------------------------- generation
def test_generate_texts_greedy_and_pad_free_tokenizer(tok, positive_model):
    assert tok.pad_token is None
    out = generate_texts(positive_model, tok, ["a", "a much longer prompt here"], max_new_tokens=3)
    assert out == [" positive positive positive"] * 2
    assert tok.pad_token is None  # the caller's tokenizer is not mutated


def test_left_padded_batch_generation_matches_one_by_one(tok):
    torch.manual_seed(5)
    config = GPT2Config(
        n_embd=32, n_layer=2, n_head=2, n_positions=64, vocab_size=len(tok), initializer_range=0.3
    )
    model = GPT2LMHeadModel(config).eval()
    prompts = ["Hello", "The quick brown fox jumps over", "1 2 3"]
    one_by_one = generate_texts(model, tok, prompts, max_new_tokens=4, batch_size=1)
    batched = generate_texts(model, tok, prompts, max_new_tokens=4, batch_size=3)
    assert batched == one_by_one
    assert all(text for text in batched)


def test_stop_strings_cut_the_text(tok, positive_model):
    out = generate_texts(positive_model, tok, ["x"], max_new_tokens=3, stop=["\n", "ve pos"])
    assert out == [" positi"]  # cut at the first occurrence of any stop string


# ----------------------------------------------------------------------------- evaluate_dataset
def test_constant_model_scores_the_majority_baseline(tok, positive_model):
    labels = [2, 2, 2, 0, 1, 2, 0]  # positive is the majority: 4 / 7
    result = evaluate_dataset(positive_model, tok, sentiment_dataset(labels), "classification", LABELS)
    assert result["accuracy"] == pytest.approx(4 / 7)
    assert result["majority_baseline"] == pytest.approx(4 / 7)
    assert result["confusion_matrix"] == [[0, 0, 2], [0, 0, 1], [0, 0, 4]]
    # f1: positive p=4/7, r=1 -> 8/11; the others 0; negative and neutral occur in y_true so they count
    assert result["macro_f1"] == pytest.approx((8 / 11) / 3)
    assert result["method"] == "loglik" and result["n"] == 7
    assert "per_domain" not in result
    json.dumps(result, allow_nan=False)


def test_generate_method_parses_labels(tok, positive_model):
    labels = [2, 0, 2, 1]
    result = evaluate_dataset(
        positive_model,
        tok,
        sentiment_dataset(labels),
        "classification",
        LABELS,
        method="generate",
        max_new_tokens=2,
    )
    assert result["accuracy"] == pytest.approx(0.5)
    assert result["parse_failure_rate"] == 0.0
    assert result["samples"][0]["generation"] == " positive positive"


def test_unparseable_generations_count_as_wrong(tok):
    model = constant_model(tok, " banana")
    result = evaluate_dataset(
        model,
        tok,
        sentiment_dataset([2, 0, 2]),
        "classification",
        LABELS,
        method="generate",
        max_new_tokens=2,
    )
    assert result["accuracy"] == 0.0
    assert result["parse_failure_rate"] == 1.0
    assert result["n_invalid"] == 3
    assert result["confusion_matrix"] == [[0, 0, 0]] * 3


def test_per_domain_breakdown(tok, positive_model):
    labels = [2, 0, 2, 2, 1, 0]
    domains = ["sst", "sst", "sst", "imdb", "imdb", "imdb"]
    result = evaluate_dataset(
        positive_model, tok, sentiment_dataset(labels, domains), "multiple_choice", LABELS, batch_size=4
    )
    assert result["accuracy"] == pytest.approx(3 / 6)
    assert set(result["per_domain"]) == {"sst", "imdb"}
    assert result["per_domain"]["sst"]["accuracy"] == pytest.approx(2 / 3)
    assert result["per_domain"]["imdb"]["accuracy"] == pytest.approx(1 / 3)
    assert result["per_domain"]["imdb"]["confusion_matrix"] == [[0, 0, 1], [0, 0, 1], [0, 0, 1]]
    assert result["per_domain"]["sst"]["n"] == 3


def test_unlabelled_rows_fall_back_to_completion_or_are_skipped(tok, positive_model):
    ds = sentiment_dataset([2, 0, 2])
    ds = ds.map(lambda row, i: {"label": -1 if i else row["label"]}, with_indices=True)
    ds = ds.map(lambda row, i: {"completion": "" if i == 2 else row["completion"]}, with_indices=True)
    result = evaluate_dataset(positive_model, tok, ds, "classification", LABELS)
    assert result["n"] == 2 and result["n_unlabelled"] == 1  # row 1 via " negative", row 2 skipped
    assert result["accuracy"] == pytest.approx(0.5)


def test_math_exact_match(tok):
    model = constant_model(tok, " 7")
    ds = Dataset.from_dict(
        {
            "prompt": ["Q: 3+4?", "Q: 4+4?", "Q: say hi"],
            "completion": [" 3+4=7\n#### 7", " #### 8", " hi"],
            "label": [-1, -1, -1],
            "reference": ["3 + 4 = 7\n#### 7", "4 + 4 = 8\n#### 8", "hi"],
            "domain": ["gsm8k"] * 3,
        }
    )
    result = evaluate_dataset(model, tok, ds, "math", None, max_new_tokens=3)
    assert result["exact_match"] == pytest.approx(0.5)
    assert result["n"] == 2 and result["n_no_gold_number"] == 1
    assert result["extraction_failure_rate"] == 0.0
    assert result["final_answer_format_rate"] == 0.0
    json.dumps(result, allow_nan=False)


def test_qa_token_f1(tok):
    model = constant_model(tok, " Paris")
    ds = Dataset.from_dict(
        {
            "prompt": ["Capital of France?", "Capital of Italy?"],
            "completion": [" Paris", " Rome"],
            "label": [-1, -1],
            "reference": ["Paris", ""],
            "domain": ["squad", "squad"],
        }
    )
    result = evaluate_dataset(model, tok, ds, "qa", None, max_new_tokens=3)
    # "Paris Paris Paris" vs "Paris": p=1/3, r=1 -> f1 1/2; vs "Rome" (completion fallback): 0
    assert result["token_f1"] == pytest.approx(0.25)
    assert result["exact_match"] == 0.0


def test_pretrain_perplexity_matches_hand_computation(tok, positive_model):
    text = "I feel positive about this positive thing"
    # a document as the pretraining stream holds it: its tokens, then EOS
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    (pos,) = tok(" positive", add_special_tokens=False)["input_ids"]
    log_z = math.log(math.exp(PREFERRED_LOGIT) + len(tok) - 1)
    scored = ids[1:]  # the first token has no context
    nll = sum(log_z - (PREFERRED_LOGIT if t == pos else 0.0) for t in scored) / len(scored)
    assert sum(t == pos for t in scored) == 2

    ds = Dataset.from_dict(
        {"text": [text], "prompt": [""], "completion": [""], "label": [-1], "domain": ["w"]}
    )
    result = evaluate_dataset(positive_model, tok, ds, "pretrain", None)
    assert result["mean_nll"] == pytest.approx(nll, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(nll), rel=1e-4)
    assert result["n_tokens"] == len(scored)
    assert perplexity_from_texts(positive_model, tok, [text])["mean_nll"] == pytest.approx(nll, rel=1e-5)
    with torch.no_grad():
        loss = positive_model(torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
    assert loss == pytest.approx(nll, rel=1e-5)


def test_perplexity_rows_are_token_weighted_and_ignore_masked_labels(tok, positive_model):
    (pos,) = tok(" positive", add_special_tokens=False)["input_ids"]
    log_z = math.log(math.exp(PREFERRED_LOGIT) + len(tok) - 1)
    rows = [
        {"input_ids": [5, pos, pos], "labels": [-100, -100, pos]},  # one scored token, preferred
        {"input_ids": [5, 6, 7, 8], "labels": [5, 6, 7, 8]},  # three scored tokens, none preferred
    ]
    result = perplexity_from_rows(positive_model, rows, batch_size=2)
    assert result["n_tokens"] == 4
    assert result["mean_nll"] == pytest.approx((log_z - PREFERRED_LOGIT + 3 * log_z) / 4, rel=1e-5)


def test_encoder_decoder_classification_and_generation_run():
    torch.manual_seed(2)
    config = T5Config(
        d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16, vocab_size=384, decoder_start_token_id=0
    )
    model = T5ForConditionalGeneration(config)
    ds = Dataset.from_dict(
        {
            "prompt": ["good film", "bad film", "fine"],
            "completion": [" positive", " negative", " neutral"],
            "label": [2, 0, 1],
            "reference": ["positive", "negative", "neutral"],
            "domain": ["a", "b", "b"],
        }
    )
    for method in ("loglik", "generate"):
        result = evaluate_dataset(
            model, ByT5Tokenizer(), ds, "classification", LABELS, method=method, max_new_tokens=3
        )
        assert 0.0 <= result["accuracy"] <= 1.0 and result["n"] == 3
        assert set(result["per_domain"]) == {"a", "b"}
        json.dumps(result, allow_nan=False)


def test_dispatcher_errors_and_max_examples(tok, positive_model):
    ds = sentiment_dataset([2, 0, 2, 1])
    with pytest.raises(StrataError):
        evaluate_dataset(positive_model, tok, ds, "classification", LABELS, method="beam")
    with pytest.raises(StrataError):
        evaluate_dataset(positive_model, tok, ds, "summarisation", LABELS)
    with pytest.raises(StrataError):
        evaluate_dataset(positive_model, tok, ds, "classification", None)
    result = evaluate_dataset(positive_model, tok, ds, "classification", LABELS, max_examples=2)
    assert result["n"] == 2 and result["accuracy"] == pytest.approx(0.5)


def test_training_mode_is_restored(tok, positive_model):
    positive_model.train()
    try:
        evaluate_dataset(positive_model, tok, sentiment_dataset([2, 0]), "classification", LABELS)
        assert positive_model.training
    finally:
        positive_model.eval()


def test_label_generation_is_capped(tok, positive_model):
    result = evaluate_dataset(
        positive_model,
        tok,
        sentiment_dataset([2]),
        "classification",
        LABELS,
        method="generate",
        max_new_tokens=256,
    )
    assert result["samples"][0]["generation"] == " positive" * 9  # 1-token label + 8 slack tokens
