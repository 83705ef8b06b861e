"""GRPO wiring: data preparation, argument mapping and a 2-step CPU smoke run with a tiny model."""

from __future__ import annotations

import pytest
from datasets import Dataset
from helpers import grpo_args

from strata.config import parse_run_config
from strata.errors import StrataError
from strata.training.rewards import resolve_rewards
from strata.training.rl import build_grpo_trainer, prepare_rl_dataset, summarise_rl_logs

LABELS = ["positive", "negative"]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import ByT5Tokenizer

    tok = ByT5Tokenizer()
    assert tok.pad_token is not None
    return tok


def tiny_model(tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=256,
        n_embd=32,
        n_layer=1,
        n_head=2,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(config)


def sentiment_rows(n: int = 16) -> Dataset:
    words = ["great", "awful", "lovely", "terrible"]
    rows = []
    for i in range(n):
        word = words[i % 4]
        label = 0 if word in ("great", "lovely") else 1
        rows.append(
            {
                "prompt": f"Review: a {word} film number {i}.\nSentiment:",
                "completion": f" {LABELS[label]}",
                "label": label,
                "reference": LABELS[label],
                "domain": "sentiment",
            }
        )
    return Dataset.from_list(rows)


def small_trainer(tokenizer, output_dir, funcs, weights, **overrides):
    """A one-step GRPO trainer on four rows; tests override only what they check."""
    logged = {k: overrides.pop(k) for k in ("num_samples_to_log",) if k in overrides}  # a builder argument
    args = grpo_args(output_dir, **{"reward_weights": weights, "per_device_train_batch_size": 16, **overrides})
    return build_grpo_trainer(tiny_model(tokenizer), tokenizer, sentiment_rows(4), None, args, reward_funcs=funcs,
                              **logged)


def test_prepare_keeps_reward_columns_and_truncates_left(tokenizer):
    data = prepare_rl_dataset(sentiment_rows(4), tokenizer, max_prompt_length=12, label_words=LABELS)
    assert set(data.column_names) == {"prompt", "label", "reference", "domain", "label_words"}
    assert all(p.endswith("Sentiment:") and len(p.encode()) <= 12 for p in data["prompt"])
    assert data[0]["label_words"] == LABELS
    again = prepare_rl_dataset(data, tokenizer, max_prompt_length=12)
    assert again["prompt"] == data["prompt"]


def test_prepare_truncates_conversational_prompts(tokenizer):
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": "x" * 50 + "END"}], "reference": "a"}])
    out = prepare_rl_dataset(data, tokenizer, max_prompt_length=10)
    assert out[0]["prompt"][0]["content"].endswith("END")
    assert len(out[0]["prompt"][0]["content"]) <= 10


def test_prepare_needs_prompt_column(tokenizer):
    with pytest.raises(StrataError, match="prompt"):
        prepare_rl_dataset(Dataset.from_list([{"text": "hi"}]), tokenizer, 8)


def test_batch_must_hold_whole_groups(tokenizer, tmp_path):
    with pytest.raises(StrataError, match="divisible by --grpo_group_size"):  # at parse time, before any folder
        parse_run_config(["--mode", "rl", "--grpo_group_size", "4", "--per_device_train_batch_size", "6"])


def test_weights_must_match_rewards(tokenizer, tmp_path):
    funcs, _ = resolve_rewards(None, None, "classification", LABELS)
    with pytest.raises(StrataError, match="reward_weights"):
        small_trainer(tokenizer, tmp_path, funcs, [1.0, 2.0])


def test_grpo_smoke_two_steps(tokenizer, tmp_path):
    funcs, weights = resolve_rewards(["classification,format"], [1.0, 0.2], "classification", LABELS)
    args = grpo_args(tmp_path, reward_weights=weights, beta=0.1, num_generations=2, max_prompt_length=64,
                     max_completion_length=8, learning_rate=1e-4, warmup_steps=0, max_steps=2, temperature=1.0,
                     per_device_train_batch_size=4, seed=0, report_to=["tensorboard"], eval_strategy="steps",
                     eval_steps=2, per_device_eval_batch_size=4)
    trainer = build_grpo_trainer(tiny_model(tokenizer), tokenizer, sentiment_rows(16), sentiment_rows(4), args,
                                 reward_funcs=funcs)
    assert trainer.args.num_generations == 2 and trainer.args.beta == 0.1
    assert trainer.args.learning_rate == 1e-4 and trainer.args.max_completion_length == 8
    trainer.train()
    logged = {k for entry in trainer.state.log_history for k in entry}
    for key in (
        "reward",
        "reward_std",
        "rewards/classification/mean",
        "rewards/classification/std",
        "rewards/format/mean",
        "completions/mean_length",
        "kl",
        "eval_reward",
        "eval_rewards/classification/mean",
    ):
        assert key in logged, key
    summary = summarise_rl_logs(trainer.state.log_history)
    assert -0.5 <= summary["rewards/classification/mean"] <= 1.0
    assert "first_reward" in summary
    history = trainer.strata_samples_callback.history
    assert {tag for _, tag, _ in history} == {"rl/eval_samples", "rl/train_samples"}
    assert "classification" in history[0][2][0]["rewards"]
    assert list(tmp_path.rglob("events.out.tfevents*"))


def test_prompt_tokenizer_drops_appended_eos(tokenizer):
    from transformers import ByT5Tokenizer

    from strata.training.rl_tokenizer import prompt_tokenizer

    safe = prompt_tokenizer(tokenizer)
    assert tokenizer("ab")["input_ids"][-1] == tokenizer.eos_token_id  # what TRL would feed as the prompt
    assert safe(text=["ab", "c"])["input_ids"] == [[100, 101], [102]]
    assert isinstance(safe, ByT5Tokenizer) and type(safe).__name__ == "ByT5Tokenizer"
    assert tokenizer("ab")["input_ids"][-1] == tokenizer.eos_token_id  # the original is untouched


def test_samples_are_what_the_reward_functions_received(tokenizer, tmp_path):
    """The logged samples (public route: a recording wrapper around each reward) equal, text for text, what
    TRL handed the reward function, and TRL still names the reward by the function's own name."""
    seen = []

    def echo_length(prompts, completions, **kwargs):
        seen.append((list(prompts), list(completions)))
        return [float(len(c)) for c in completions]

    trainer = small_trainer(tokenizer, tmp_path, [echo_length], None, per_device_train_batch_size=4,
                            max_completion_length=6, num_samples_to_log=3, beta=0.0, bf16=False)
    trainer.train()
    step, tag, samples = trainer.strata_samples_callback.history[-1]
    prompts, completions = seen[-1]
    assert (step, tag, len(samples), len(completions)) == (1, "rl/train_samples", 3, 4)
    assert [s["prompt"] for s in samples] == [p[-400:] for p in prompts[-3:]]
    assert [s["completion"] for s in samples] == completions[-3:]
    assert [s["rewards"] for s in samples] == [{"echo_length": float(len(c))} for c in completions[-3:]]
    assert "rewards/echo_length/mean" in {k for entry in trainer.state.log_history for k in entry}


def test_prompt_tokenizer_drops_a_fast_tokenizers_appended_eos():
    """A tokenizers-backed tokenizer that frames text as ``<s> text </s>``: the prompt ids are ``<s>`` + the
    text's ids (the plain call without special tokens), for one text and a batch, as lists and tensors."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from strata.training.rl_tokenizer import prompt_tokenizer

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(["a great film", "an awful film"], trainer=trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    backend.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    texts = ["a great film", "awful"]
    safe = prompt_tokenizer(tok)
    plain = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert safe(text=texts)["input_ids"] == [[1, *ids] for ids in plain]
    assert safe(texts[0], return_tensors="pt")["input_ids"].tolist() == [[1, *plain[0]]]
    assert tok(texts[0])["input_ids"] == [1, *plain[0], 2]  # the original still frames with </s>


def test_reward_model_is_added_last_with_its_weight(tokenizer, tmp_path):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    rm_dir = tmp_path / "rm"
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=128, n_embd=32, n_layer=1, n_head=2, num_labels=1
    )
    config.pad_token_id = tokenizer.pad_token_id
    GPT2ForSequenceClassification(config).save_pretrained(rm_dir)
    tokenizer.save_pretrained(rm_dir)
    funcs, weights = resolve_rewards(
        ["classification"], None, "classification", LABELS, has_reward_model=True
    )
    trainer = small_trainer(tokenizer, tmp_path / "out", funcs, weights, reward_model=str(rm_dir), beta=0.0,
                            per_device_train_batch_size=4, bf16=False)
    assert len(trainer.reward_funcs) == 2 and trainer.reward_weights.tolist() == [1.0, 1.0]
    with pytest.raises(StrataError, match="reward_model"):
        small_trainer(tokenizer, tmp_path / "out2", funcs, None, reward_model=str(tmp_path / "missing"))


def test_reward_weights_and_model_reach_grpo_through_the_cli_parse():
    """--reward_weights is GRPOConfig's own field (not a copy): the parsed value is the one TRL reads."""
    parsed = parse_run_config(["--mode", "rl", "--reward_weights", "1.0", "0.5", "--temperature", "0.7"]).train
    assert (parsed.reward_weights, parsed.temperature) == ([1.0, 0.5], 0.7)
