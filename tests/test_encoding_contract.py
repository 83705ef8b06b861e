"""One encoding contract: evaluation scores, and generation starts from, exactly what training built.

For each tokenizer family (ByT5 bytes that append ``</s>``, GPT-2 BPE, a byte-level BPE trained on the
data, a Llama-style BPE that prepends BOS; T5 and BART for encoder-decoder), the oracles here are
independent of the code under test:
* the ids a training row must hold are written out by hand from what each family is known to do;
* the gold label's log-likelihood must equal minus the model's *own* summed loss (``labels=``) of the
  gold tokens in the very training row.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    BartTokenizerFast,
    ByT5Tokenizer,
    GPT2TokenizerFast,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

from strata.data.tokenization import (
    IGNORE_INDEX,
    tokenize_completions,
    tokenize_pretraining,
    tokenize_seq2seq,
)
from strata.evaluation.generation import generate_texts
from strata.evaluation.perplexity import text_windows
from strata.evaluation.scoring import label_loglikelihoods
from strata.models.tokenizers import train_bpe_tokenizer

GPT2_DIR = Path(__file__).resolve().parents[2] / "shared" / "hub" / "models" / "openai-community" / "gpt2"
CORPUS = [
    "Review: the movie was great and the acting was fine.\nSentiment:",
    "Review: a dull, slow film with a bad ending.\nSentiment:",
    "Headline: shares fall after weak quarterly results\nSentiment:",
] * 20
PROMPTS = [
    "Review: the movie was great and the acting was fine.\nSentiment:",
    "Review: a dull, slow film with a bad ending that goes on and on.\nSentiment:",
]
GOLD = [" positive", " negative"]


def _byte_bpe(bos: bool) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on CORPUS; with ``bos``, a Llama-style post-processor prepends ``<s>``."""
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(CORPUS + GOLD, trainer=trainer)
    if bos:
        backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")


def decoder_tokenizer(family: str, tmp_path: Path):
    """(tokenizer, the ids it must put before a prompt) for each decoder-only family."""
    if family == "byt5":
        return ByT5Tokenizer(), []
    if family == "gpt2":
        if not GPT2_DIR.is_dir():
            pytest.skip(f"GPT-2 tokenizer files not at {GPT2_DIR}")
        return GPT2TokenizerFast.from_pretrained(str(GPT2_DIR)), []
    if family == "bpe-trained":
        return train_bpe_tokenizer("bpe:400", CORPUS + GOLD, tmp_path / "tok"), []
    tok = _byte_bpe(bos=True)
    return tok, [tok.bos_token_id]


def tiny_llama(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=vocab_size, max_position_embeddings=512,
                         initializer_range=0.2)
    return LlamaForCausalLM(config).eval()


def _sft_rows() -> Dataset:
    return Dataset.from_dict({"prompt": PROMPTS, "completion": GOLD})


def _gold_loss_sum(model, input_ids: list[int], labels: list[int], eos: int) -> float:
    """Minus the log-likelihood of the gold tokens through the model's own loss: EOS masked out."""
    gold_only = [IGNORE_INDEX if (lab == eos and i == len(labels) - 1) else lab for i, lab in enumerate(labels)]
    n = sum(1 for lab in gold_only[1:] if lab != IGNORE_INDEX)
    with torch.no_grad():
        out = model(input_ids=torch.tensor([input_ids]), labels=torch.tensor([gold_only]))
    return float(out.loss) * n


FAMILIES = ["byt5", "gpt2", "bpe-trained", "llama-bos"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("truncate", [False, True])
def test_gold_loglik_is_minus_the_training_rows_loss(family, truncate, tmp_path):
    tok, prefix = decoder_tokenizer(family, tmp_path)
    model = tiny_llama(len(tok))
    full = [len(prefix) + len(tok(p + g, add_special_tokens=False)["input_ids"]) + 1 for p, g in zip(PROMPTS, GOLD)]
    max_length = min(full) - 4 if truncate else None  # 4 tokens short: every prompt loses its left end
    limit = max_length or 512
    rows = tokenize_completions(_sft_rows(), tok, limit)
    scores = label_loglikelihoods(model, tok, PROMPTS, GOLD, max_length=max_length)
    for i, (prompt, gold) in enumerate(zip(PROMPTS, GOLD)):
        ids, labels = rows[i]["input_ids"], rows[i]["labels"]
        # the row, written out by hand: prefix, the prompt's right end, the completion, EOS; EOS only there
        prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        gold_ids = tok(gold, add_special_tokens=False)["input_ids"]
        keep = limit - len(gold_ids) - 1 - len(prefix)
        expected = prefix + prompt_ids[-keep:] + gold_ids + [tok.eos_token_id]
        assert ids == expected
        assert ids.count(tok.eos_token_id) == 1
        if max_length is not None:
            assert len(prompt_ids) > keep  # the prompt really was cut
        got = float(scores[i, GOLD.index(gold)])
        assert got == pytest.approx(-_gold_loss_sum(model, ids, labels, tok.eos_token_id), abs=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_generation_starts_from_the_training_rows_prompt(family, tmp_path):
    tok, prefix = decoder_tokenizer(family, tmp_path)
    model = tiny_llama(len(tok))
    rows = tokenize_completions(_sft_rows(), tok, 512)
    seen: list[list[int]] = []
    original = model.generate

    def spy(input_ids, attention_mask, **kwargs):
        for row, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            seen.append([t for t, m in zip(row, mask) if m])  # left padding removed
        return original(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    model.generate = spy
    generate_texts(model, tok, PROMPTS, max_new_tokens=2, batch_size=2, max_length=512)
    for prompt, row, got in zip(PROMPTS, rows, seen):
        context = [t for t, lab in zip(row["input_ids"], row["labels"]) if lab == IGNORE_INDEX]
        assert got == context
        assert got == prefix + tok(prompt, add_special_tokens=False)["input_ids"]
        assert tok.eos_token_id not in got


def test_text_perplexity_windows_are_pretraining_documents(tmp_path):
    tok, _ = decoder_tokenizer("llama-bos", tmp_path)
    text = PROMPTS[0]
    stream = tokenize_pretraining(Dataset.from_dict({"text": [text]}), tok, 512)
    windows, _ = text_windows(tok, [text], 512)
    # one document: its tokens then EOS; no BOS, although the tokenizer adds one by default
    assert windows[0]["input_ids"] == stream[0]["input_ids"]
    assert windows[0]["input_ids"] == tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def _t5():
    torch.manual_seed(2)
    config = T5Config(d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16, vocab_size=384,
                      decoder_start_token_id=0)
    tok = ByT5Tokenizer()
    return T5ForConditionalGeneration(config).eval(), tok, [], [tok.eos_token_id]


def _bart():
    if not GPT2_DIR.is_dir():
        pytest.skip(f"GPT-2 tokenizer files not at {GPT2_DIR}")
    tok = BartTokenizerFast(vocab=str(GPT2_DIR / "vocab.json"), merges=str(GPT2_DIR / "merges.txt"))
    torch.manual_seed(3)
    config = BartConfig(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=len(tok),
                        max_position_embeddings=128, init_std=0.2)
    return BartForConditionalGeneration(config).eval(), tok, [tok.bos_token_id], [tok.eos_token_id]


@pytest.mark.parametrize("arch", ["t5", "bart"])
def test_encoder_decoder_scores_and_generates_from_the_training_row(arch):
    model, tok, before, after = _t5() if arch == "t5" else _bart()
    rows = tokenize_seq2seq(_sft_rows(), tok, 96, 16)
    scores = label_loglikelihoods(model, tok, PROMPTS, GOLD, max_length=96)
    seen: list[list[int]] = []
    original = model.generate

    def spy(input_ids, attention_mask, **kwargs):
        seen.extend([t for t, m in zip(r, k) if m] for r, k in zip(input_ids.tolist(), attention_mask.tolist()))
        return original(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    model.generate = spy
    generate_texts(model, tok, PROMPTS, max_new_tokens=2, max_length=96)
    for i, (prompt, gold) in enumerate(zip(PROMPTS, GOLD)):
        enc = before + tok(prompt, add_special_tokens=False)["input_ids"] + after
        gold_ids = tok(gold, add_special_tokens=False)["input_ids"]
        assert rows[i]["input_ids"] == enc and seen[i] == enc
        assert rows[i]["labels"] == gold_ids + [tok.eos_token_id]
        labels = gold_ids + [IGNORE_INDEX]  # EOS not part of the gold label's likelihood
        with torch.no_grad():
            out = model(input_ids=torch.tensor([enc]), labels=torch.tensor([labels]))
        assert float(scores[i, i]) == pytest.approx(-float(out.loss) * len(gold_ids), abs=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_rl_prompts_are_the_training_rows_context(family, tmp_path):
    """TRL tokenizes GRPO prompts itself (``processing_class(text=prompts)``): what it gets back must be
    the SFT row's context, so RL and SFT condition on the same ids."""
    from strata.training.rl_tokenizer import prompt_tokenizer

    tok, prefix = decoder_tokenizer(family, tmp_path)
    rows = tokenize_completions(_sft_rows(), tok, 512)
    got = prompt_tokenizer(tok)(text=PROMPTS)["input_ids"]
    for prompt, row, ids in zip(PROMPTS, rows, got):
        assert ids == prefix + tok(prompt, add_special_tokens=False)["input_ids"]
        assert ids == [t for t, lab in zip(row["input_ids"], row["labels"]) if lab == IGNORE_INDEX]
