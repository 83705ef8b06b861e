"""Label log-likelihood scoring against hand-computed log-probabilities on tiny models."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoTokenizer,
    BartConfig,
    BartForConditionalGeneration,
    ByT5Tokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

from strata.errors import StrataError
from strata.evaluation.scoring import label_loglikelihoods, score_choices

GPT2_DIR = Path(__file__).resolve().parents[2] / "shared" / "hub" / "models" / "openai-community" / "gpt2"

PROMPTS = [
    "the movie was great sentiment :",
    "bad",
    "the movie was ok but the ending was bad . sentiment :",
]
CHOICES = [" negative", " positive", " neutral ."]


@pytest.fixture(scope="module")
def gpt2_tok():
    if not GPT2_DIR.is_dir():
        pytest.skip(f"GPT-2 tokenizer files not at {GPT2_DIR}")
    return AutoTokenizer.from_pretrained(str(GPT2_DIR))


@pytest.fixture(scope="module")
def gpt2(gpt2_tok):
    torch.manual_seed(0)
    config = GPT2Config(
        n_embd=32, n_layer=2, n_head=2, n_positions=64, vocab_size=len(gpt2_tok), initializer_range=0.2
    )
    return GPT2LMHeadModel(config).eval()


def bos_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer that prepends BOS like Llama's, so BOS handling is exercised."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = "the movie was great bad ok but ending sentiment : . positive negative neutral".split()
    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "<unk>", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


@pytest.fixture(scope="module")
def llama_pair():
    tok = bos_tokenizer()
    torch.manual_seed(1)
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=len(tok),
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        initializer_range=0.2,
    )
    return LlamaForCausalLM(config).eval(), tok


@pytest.fixture(scope="module")
def t5_pair():
    torch.manual_seed(2)
    config = T5Config(
        d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16, vocab_size=384, decoder_start_token_id=0
    )
    return T5ForConditionalGeneration(config).eval(), ByT5Tokenizer()


@pytest.fixture(scope="module")
def bart_pair():
    torch.manual_seed(3)
    config = BartConfig(
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        vocab_size=384,
        max_position_embeddings=128,
        init_std=0.2,
    )
    return BartForConditionalGeneration(config).eval(), ByT5Tokenizer()


def known_prefix(tok) -> list[int]:
    """What each decoder family here puts before a prompt, written from what it is built to do (not probed):
    GPT-2 nothing, the Llama-style word-level tokenizer its BOS."""
    return [] if type(tok).__name__.startswith("GPT2") else [tok.bos_token_id]


def manual_decoder_only(model, tok, prompt: str, choice: str, context: list[int] | None = None) -> float:
    """One unpadded forward of prompt+choice; sum log_softmax at the positions predicting the choice."""
    ctx = known_prefix(tok) + tok(prompt, add_special_tokens=False)["input_ids"] if context is None else context
    cont = tok(choice, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ctx + cont])).logits[0].double()
    logprobs = torch.log_softmax(logits, dim=-1)
    return sum(float(logprobs[len(ctx) - 1 + j, token]) for j, token in enumerate(cont))


def manual_encoder_decoder(model, tok, prompt: str, choice: str) -> float:
    """The model's own label shifting (``labels=``) gives the decoder logits; sum the choice log-probs."""
    enc = tok(prompt)["input_ids"]
    cont = tok(choice, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model(input_ids=torch.tensor([enc]), labels=torch.tensor([cont]))
    logprobs = torch.log_softmax(out.logits[0].double(), dim=-1)
    total = sum(float(logprobs[j, token]) for j, token in enumerate(cont))
    assert math.isclose(-float(out.loss) * len(cont), total, rel_tol=1e-4)  # the same thing the loss sees
    return total


@pytest.mark.parametrize("arch", ["gpt2", "llama", "t5", "bart"])
def test_matches_hand_computed_logprob(arch, request):
    if arch == "gpt2":
        tok = request.getfixturevalue("gpt2_tok")
        model = request.getfixturevalue("gpt2")
    else:
        model, tok = request.getfixturevalue(f"{arch}_pair")
    manual = manual_encoder_decoder if arch in ("t5", "bart") else manual_decoder_only
    scores = label_loglikelihoods(model, tok, PROMPTS, CHOICES, batch_size=2)
    assert scores.shape == (len(PROMPTS), len(CHOICES))
    expected = torch.tensor(
        [[manual(model, tok, p, c) for c in CHOICES] for p in PROMPTS], dtype=torch.float64
    )
    torch.testing.assert_close(scores.double(), expected, atol=2e-4, rtol=1e-5)
    # multi-token choices really sum several tokens: the 2-token choice is much less likely here
    assert len(tok(CHOICES[2], add_special_tokens=False)["input_ids"]) >= 2


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_padding_side_and_batching_do_not_change_scores(arch, request):
    if arch == "gpt2":
        tok = request.getfixturevalue("gpt2_tok")
        model = request.getfixturevalue("gpt2")
    else:
        model, tok = request.getfixturevalue("llama_pair")
    original_side = tok.padding_side
    try:
        tok.padding_side = "right"
        single = label_loglikelihoods(model, tok, PROMPTS, CHOICES, batch_size=1)
        right = label_loglikelihoods(model, tok, PROMPTS, CHOICES, batch_size=3)
        tok.padding_side = "left"
        left = label_loglikelihoods(model, tok, PROMPTS, CHOICES, batch_size=3)
    finally:
        tok.padding_side = original_side
    torch.testing.assert_close(right, single, atol=1e-4, rtol=0)
    torch.testing.assert_close(left, single, atol=1e-4, rtol=0)


def test_truncation_keeps_prompt_right_end_and_bos(llama_pair):
    model, tok = llama_pair
    prompt = "the movie was great but the ending was bad sentiment :"
    ids = tok(prompt)["input_ids"]
    assert ids[0] == tok.bos_token_id
    # choice " neutral ." is 2 tokens; the training row context + choice + EOS must fit in 6 -> context of 3
    got = label_loglikelihoods(model, tok, [prompt], [" neutral ."], max_length=6)
    kept = [ids[0]] + ids[-2:]
    expected = manual_decoder_only(model, tok, prompt, " neutral .", context=kept)
    assert got[0, 0].item() == pytest.approx(expected, abs=1e-4)
    untruncated = manual_decoder_only(model, tok, prompt, " neutral .")
    assert abs(expected - untruncated) > 1e-3  # truncation did change the context


def test_normalised_variants_and_per_example_choices(gpt2, gpt2_tok):
    per_example = [[" yes", " no"], [" maybe so", " no"]]
    result = score_choices(gpt2, gpt2_tok, ["a", "b"], per_example)
    expected = torch.tensor(
        [[manual_decoder_only(gpt2, gpt2_tok, p, c) for c in row] for p, row in zip(["a", "b"], per_example)],
        dtype=torch.float64,
    )
    torch.testing.assert_close(result.loglik.double(), expected, atol=2e-4, rtol=0)
    assert result.num_tokens.tolist() == [[1, 1], [2, 1]]
    assert result.num_chars.tolist() == [[4, 3], [9, 3]]
    torch.testing.assert_close(result.per_token, result.loglik / torch.tensor([[1.0, 1.0], [2.0, 1.0]]))
    torch.testing.assert_close(result.per_char, result.loglik / result.num_chars.float())


def test_empty_prompt_conditions_on_eos(gpt2, gpt2_tok):
    got = label_loglikelihoods(gpt2, gpt2_tok, [""], [" positive"])
    expected = manual_decoder_only(gpt2, gpt2_tok, "", " positive", context=[gpt2_tok.eos_token_id])
    assert got[0, 0].item() == pytest.approx(expected, abs=1e-4)


def test_eval_mode_is_used_and_training_mode_restored(gpt2_tok):
    torch.manual_seed(4)
    config = GPT2Config(
        n_embd=32, n_layer=1, n_head=2, n_positions=64, vocab_size=len(gpt2_tok), resid_pdrop=0.5
    )
    model = GPT2LMHeadModel(config)
    model.train()
    first = label_loglikelihoods(model, gpt2_tok, PROMPTS, CHOICES)
    second = label_loglikelihoods(model, gpt2_tok, PROMPTS, CHOICES)
    assert model.training  # handed back as it came (the trainer calls evaluation mid-run)
    torch.testing.assert_close(first, second, atol=0, rtol=0)  # dropout was off


def test_bad_inputs_raise_strata_error(gpt2, gpt2_tok):
    with pytest.raises(StrataError):
        label_loglikelihoods(gpt2, gpt2_tok, ["x"], [])
    with pytest.raises(StrataError):
        label_loglikelihoods(gpt2, gpt2_tok, ["x"], [""])
    with pytest.raises(StrataError):
        label_loglikelihoods(gpt2, gpt2_tok, ["x"], [" a b c d"], max_length=2)


def test_only_scored_positions_get_logits(gpt2, gpt2_tok):
    """With left padding every choice ends at the last position, so the LM head sees only those."""
    seen: list[tuple[int, ...]] = []
    handle = gpt2.lm_head.register_forward_hook(lambda _m, args, _out: seen.append(tuple(args[0].shape)))
    original_side = gpt2_tok.padding_side
    try:
        gpt2_tok.padding_side = "left"
        score_choices(gpt2, gpt2_tok, PROMPTS, CHOICES, batch_size=3, reuse_context=False)  # the reference path
        reference, _ = list(seen), seen.clear()
        label_loglikelihoods(gpt2, gpt2_tok, PROMPTS, CHOICES, batch_size=3)
    finally:
        handle.remove()
        gpt2_tok.padding_side = original_side
    longest_choice = max(len(gpt2_tok(c, add_special_tokens=False)["input_ids"]) for c in CHOICES)
    assert [shape[:2] for shape in reference] == [(9, longest_choice)]
    # Context once: its last position for every choice's first token, then the one 2-token choice's
    # second token per example, continued from the context's cache.
    assert [shape[:2] for shape in seen] == [(3, 1), (3, longest_choice - 1)]
