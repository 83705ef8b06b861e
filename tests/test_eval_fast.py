"""Scoring each context once (strata.evaluation.shared_context) gives the reference scorer's numbers.

The reference is ``score_choices(..., reuse_context=False)``: one ``context + choice`` row per
(example, choice), itself tested against hand-computed log-probabilities (tests/test_eval_scoring.py)
and training rows' losses (tests/test_encoding_contract.py).
"""

from __future__ import annotations

import pytest
import torch
from test_encoding_contract import _bart, _t5, decoder_tokenizer, tiny_llama
from test_eval_scoring import PROMPTS, bos_tokenizer

from strata.evaluation.scoring import score_choices

MULTI = [" negative", " positive", " neutral ."]  # the last is several tokens for every tokenizer here
MORE_PROMPTS = [*PROMPTS, "", "the movie was great sentiment :", "ok . sentiment :"]  # empty prompt, duplicate


def _assert_same(model, tok, prompts, choices, **kwargs) -> None:
    fast = score_choices(model, tok, prompts, choices, **kwargs)
    ref = score_choices(model, tok, prompts, choices, reuse_context=False, **kwargs)
    torch.testing.assert_close(fast.loglik.double(), ref.loglik.double(), atol=1e-5, rtol=0)
    assert torch.equal(fast.num_tokens, ref.num_tokens)
    assert torch.equal(fast.is_greedy, ref.is_greedy)
    assert fast.loglik.argmax(-1).tolist() == ref.loglik.argmax(-1).tolist()
    assert fast.per_char.argmax(-1).tolist() == ref.per_char.argmax(-1).tolist()


def _single_token_pair(tok) -> list[str]:
    """Two continuations that are one token each for ``tok`` (checked, not assumed)."""
    for pair in ([" negative", " positive"], [" bad", " great"], [" a", " b"], ["a", "b"]):
        if all(len(tok(w, add_special_tokens=False)["input_ids"]) == 1 for w in pair):
            return pair
    raise AssertionError(f"no single-token pair for {type(tok).__name__}")


@pytest.mark.parametrize("family", ["gpt2", "llama-bos", "byt5"])
@pytest.mark.parametrize("truncate", [False, True])
def test_decoder_only_matches_reference(family, truncate, tmp_path):
    tok, _ = decoder_tokenizer(family, tmp_path)
    model = tiny_llama(len(tok))
    # 6 tokens past the longest choice's row: the longer prompts are cut, differently per choice length
    max_length = len(tok(MULTI[2], add_special_tokens=False)["input_ids"]) + 6 if truncate else None
    for choices in (_single_token_pair(tok), MULTI):
        for side in ("right", "left"):
            tok.padding_side = side
            _assert_same(model, tok, MORE_PROMPTS, choices, batch_size=2, max_length=max_length)


def test_gpt2_word_level_bos_and_per_example_choices(tmp_path):
    from test_eval_scoring import GPT2_DIR

    if not GPT2_DIR.is_dir():
        pytest.skip(f"GPT-2 files not at {GPT2_DIR}")
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(str(GPT2_DIR))
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=64, vocab_size=len(tok),
                                      initializer_range=0.2)).eval()
    per_example = [[" yes", " no"], [" maybe so", " no"], [" no", " yes it is"]]
    _assert_same(gpt2, tok, ["a", "b", "c d"], per_example, batch_size=2)
    _assert_same(gpt2, tok, MORE_PROMPTS, MULTI, batch_size=3, max_length=9)
    word = bos_tokenizer()
    llama = tiny_llama(len(word), seed=1)
    _assert_same(llama, word, MORE_PROMPTS, MULTI, batch_size=2)
    _assert_same(llama, word, MORE_PROMPTS, MULTI, batch_size=2, max_length=6)


@pytest.mark.parametrize("arch", ["t5", "bart"])
def test_encoder_decoder_matches_reference(arch):
    model, tok, _, _ = _t5() if arch == "t5" else _bart()
    for choices in (_single_token_pair(tok), MULTI):
        _assert_same(model, tok, MORE_PROMPTS, choices, batch_size=2)
        _assert_same(model, tok, MORE_PROMPTS, choices, batch_size=2, max_length=16)  # cuts the longer prompts


def test_single_token_choices_take_one_short_forward_per_example(tmp_path):
    """The prompt is not repeated per choice, and logits are computed at one position per row."""
    tok, _ = decoder_tokenizer("llama-bos", tmp_path)
    model = tiny_llama(len(tok))
    choices = _single_token_pair(tok)
    rows: list[int] = []
    logit_positions: list[int] = []

    def record(module, args, kwargs, output):
        rows.append(int(kwargs["input_ids"].shape[0]))
        logit_positions.append(int(output.logits.shape[1]))

    handle = model.register_forward_hook(record, with_kwargs=True)
    try:
        score_choices(model, tok, PROMPTS, choices, batch_size=8)
        assert rows == [len(PROMPTS)] and logit_positions == [1]
        rows.clear()
        score_choices(model, tok, PROMPTS, choices, batch_size=8, reuse_context=False)
        assert rows == [len(PROMPTS) * len(choices)]
    finally:
        handle.remove()


def _own_architectures():
    from strata.models.stratified.configuration_stratified import StratifiedConfig
    from strata.models.stratified.modeling_stratified import StratifiedForCausalLM
    from strata.models.ttt.configuration_ttt import TTTConfig
    from strata.models.ttt.modeling_ttt import TTTForCausalLM

    tok = bos_tokenizer()
    for layer_type, mamba in (("linear", False), ("mlp", True)):
        torch.manual_seed(0)
        yield TTTForCausalLM(TTTConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, mini_batch_size=4, ttt_layer_type=layer_type,
                                       share_qk=mamba, use_gate=mamba)).eval(), tok
    for kind, source in (("routing", "learned"), ("moe", "hash"), ("attention", "lid_bins")):
        torch.manual_seed(0)
        yield StratifiedForCausalLM(StratifiedConfig(
            vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_strata=4, stratified_type=kind, stratum_source=source, pad_token_id=0, eos_token_id=2,
            lid_reference_size=32, lid_k=8)).eval(), tok


def test_ttt_and_stratified_models_match_reference():
    """Our own architectures: TTT's recurrent cache and the stratified routers continue a context exactly."""
    for model, tok in _own_architectures():
        for side in ("right", "left"):
            tok.padding_side = side
            _assert_same(model, tok, MORE_PROMPTS, MULTI, batch_size=2)
            _assert_same(model, tok, MORE_PROMPTS, MULTI, batch_size=2, max_length=6)


@pytest.mark.parametrize("asked", [{}, {"eval_loss": True}, {"metric_for_best_model": "eval_loss"}])
def test_token_loss_pass_runs_only_when_asked(asked, tmp_path):
    """With task metrics, evaluate() skips Trainer's loss loop unless --eval_loss or a loss metric asks."""
    import datasets
    from transformers import TrainingArguments

    from strata.evaluation import evaluate_dataset
    from strata.training.trainer import StrataTrainer

    tok = bos_tokenizer()
    model = tiny_llama(len(tok))
    rows = datasets.Dataset.from_dict({"prompt": PROMPTS, "completion": [" positive", " negative", " neutral"],
                                       "label": [1, 0, 1]})
    ids = [tok("the movie was great sentiment : positive")["input_ids"]] * 2
    token_rows = datasets.Dataset.from_dict({"input_ids": ids, "labels": ids})
    spec = {"name": "toy", "dataset": rows, "family": "classification", "label_words": ["negative", "positive"],
            "method": "loglik", "batch_size": 2, "max_length": 32, "max_examples": None}
    metric = asked.get("metric_for_best_model")
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], metric_for_best_model=metric,
                             per_device_eval_batch_size=2)
    trainer = StrataTrainer(model=model, args=args, processing_class=tok, eval_dataset=token_rows,
                            task_eval=[spec], eval_loss=asked.get("eval_loss", False))
    loops: list[str] = []
    original = trainer.evaluation_loop
    trainer.evaluation_loop = lambda *a, **k: loops.append("loop") or original(*a, **k)
    got = trainer.evaluate()
    reference = evaluate_dataset(model.eval(), tok, rows, "classification", ["negative", "positive"],
                                 batch_size=2, max_length=32)
    assert got["eval_accuracy"] == reference["accuracy"]
    if asked:
        assert loops == ["loop"] and "eval_loss" in got and "eval_perplexity" in got
        with torch.no_grad():  # the model's own loss on the one (repeated) row
            expected = float(model(input_ids=torch.tensor(ids[:1]), labels=torch.tensor(ids[:1])).loss)
        assert got["eval_loss"] == pytest.approx(expected, abs=1e-5)
    else:
        assert loops == [] and "eval_loss" not in got
    assert [e for e in trainer.state.log_history if "eval_accuracy" in e] == [{**got, "step": 0}]
