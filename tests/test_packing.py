"""Packing must be invisible to the loss: every packed example scores exactly as it would alone."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from strata.data.collate import PackingCollator, PaddingCollator, example_spans
from strata.data.packing import best_fit_decreasing, pack_examples, packing_efficiency
from strata.errors import StrataError

VOCAB = 211
PAD = 7  # deliberately a real token id, like GPT-2's EOS-as-pad


def _examples(n: int = 14, seed: int = 0) -> list[dict[str, list[int]]]:
    """Prompt/completion-shaped examples: -100 on a prompt prefix, labels on the tail (incl. PAD as EOS)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(3, 21, (1,), generator=g))
        ids = torch.randint(0, VOCAB, (length,), generator=g).tolist()
        ids[-1] = PAD  # EOS == pad id: its label must survive collation
        n_target = int(torch.randint(1, 3, (1,), generator=g))
        labels = [-100] * (length - n_target) + ids[-n_target:]
        out.append({"input_ids": ids, "labels": labels})
    return out


def _model(arch: str, attn: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if arch == "gpt2":
        cfg = GPT2Config(
            vocab_size=VOCAB,
            n_positions=64,
            n_embd=32,
            n_layer=2,
            n_head=4,
            bos_token_id=PAD,
            eos_token_id=PAD,
        )
        model = GPT2LMHeadModel(cfg)
    else:
        cfg = LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
        )
        model = LlamaForCausalLM(cfg)
    model.set_attn_implementation(attn)
    return model.float().eval()


def _ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token CE of one example: logits[t] predicts labels[t + 1]."""
    return torch.nn.functional.cross_entropy(logits[:-1].double(), labels[1:], ignore_index=-100)


def test_best_fit_decreasing_is_deterministic_and_within_capacity() -> None:
    lengths = [5, 9, 3, 3, 8, 1, 7, 2, 10, 4]
    bins = best_fit_decreasing(lengths, 10, seed=1)
    assert bins == best_fit_decreasing(lengths, 10, seed=1)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 10 for b in bins)
    assert len(bins) == 6  # total 52 -> at least 6 bins of 10; BFD reaches the bound here
    with pytest.raises(StrataError, match="longer than the packing length 4"):
        best_fit_decreasing(lengths, 4)


def test_pack_examples_keeps_every_token_and_restarts_positions() -> None:
    examples = _examples(30)
    packed = pack_examples(Dataset.from_list(examples), max_length=48, seed=3)
    assert len(packed) < len(examples)
    assert packing_efficiency(packed, 48) > 0.85
    seen = []
    for row in packed:
        assert len(row["input_ids"]) == len(row["labels"]) == len(row["position_ids"]) <= 48
        pos = torch.tensor(row["position_ids"])
        for s, e in example_spans(pos[None])[0]:
            assert row["position_ids"][s:e] == list(range(e - s))
            seen.append((tuple(row["input_ids"][s:e]), tuple(row["labels"][s:e])))
    assert sorted(seen) == sorted((tuple(x["input_ids"]), tuple(x["labels"])) for x in examples)
    again = pack_examples(Dataset.from_list(examples), max_length=48, seed=3)
    assert again["input_ids"] == packed["input_ids"]
    view = Dataset.from_list(examples + examples[:5]).select(range(30))  # an indices mapping, not a copy
    assert pack_examples(view, max_length=48, seed=3)["labels"] == packed["labels"]
    shuffled = Dataset.from_list(examples).select(list(range(29, -1, -1)))  # a real indices mapping
    tokens = sorted(t for row in pack_examples(shuffled, max_length=48)["input_ids"] for t in row)
    assert tokens == sorted(t for x in examples for t in x["input_ids"])
    # The view's rows are read in view order: the same rows as the library's materialised copy.
    assert pack_examples(shuffled, max_length=48, seed=3)[:] == pack_examples(shuffled.flatten_indices(), 48, 3)[:]


def test_packing_collator_masks_boundaries_and_padding_not_eos() -> None:
    rows = [
        {"input_ids": [1, 2, PAD, 4, PAD], "labels": [-100, 2, PAD, 4, PAD], "position_ids": [0, 1, 2, 0, 1]},
        {"input_ids": [5, PAD], "labels": [5, PAD], "position_ids": [0, 1]},
    ]
    batch = PackingCollator(pad_token_id=PAD)(rows)
    assert "attention_mask" not in batch  # a mask would switch off transformers' packed-sequence detection
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]
    # first label of each example is -100 (the 4 at index 3), padding is -100, real EOS (=PAD) labels stay
    assert batch["labels"].tolist() == [[-100, 2, PAD, -100, PAD], [-100, PAD, -100, -100, -100]]
    flat = PackingCollator(pad_token_id=PAD, flatten=True)(rows)
    assert flat["input_ids"].shape == (1, 7)
    assert flat["cu_seq_lens_q"].tolist() == [0, 3, 5, 7] and flat["max_length_q"] == 3


def test_padding_collator_keeps_eos_label_when_eos_is_pad() -> None:
    feats = [{"input_ids": [3, 4, PAD], "labels": [-100, 4, PAD]}, {"input_ids": [9], "labels": [-100]}]
    batch = PaddingCollator(pad_token_id=PAD)(feats)
    assert batch["input_ids"].tolist() == [[3, 4, PAD], [9, PAD, PAD]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 4, PAD], [-100, -100, -100]]
    no_labels = PaddingCollator(pad_token_id=PAD)([{"input_ids": [3, PAD]}, {"input_ids": [9]}])
    assert no_labels["labels"].tolist() == [[3, PAD], [9, -100]]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_packed_example_loss_equals_loss_alone(arch: str, attn: str) -> None:
    examples = _examples(14)
    model = _model(arch, attn)
    packed = pack_examples(Dataset.from_list(examples), max_length=40, seed=0)
    batch = PackingCollator(pad_token_id=PAD)(list(packed))
    assert batch["input_ids"].shape[0] >= 2  # several rows, with padding in some of them
    assert max(len(s) for s in example_spans(batch["position_ids"])) >= 3  # rows hold >= 3 blocks

    alone = {}
    with torch.no_grad():
        for ex in examples:
            logits = model(input_ids=torch.tensor([ex["input_ids"]])).logits[0]
            alone[tuple(ex["input_ids"])] = _ce(logits, torch.tensor(ex["labels"]))
        assert batch["use_cache"] is False
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        leaky = model(  # control 1: an attention_mask switches packed-sequence detection off
            input_ids=batch["input_ids"],
            position_ids=batch["position_ids"],
            attention_mask=torch.ones_like(batch["input_ids"]),
            use_cache=False,
        ).logits
        cached = model(  # control 2: so does an (empty) cache, which config.use_cache=True creates
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=True
        ).logits

    checked, leaked, leaked_cache = 0, 0, 0
    for r, spans in enumerate(example_spans(batch["position_ids"])):
        row = packed[r]
        for s, e in spans:
            if s >= len(row["input_ids"]):
                continue  # the padding block
            key = tuple(row["input_ids"][s:e])
            labels = torch.tensor(row["labels"][s:e])
            got = _ce(logits[r, s:e], labels)
            torch.testing.assert_close(got, alone[key], rtol=1e-5, atol=0.0)
            checked += 1
            if s > 0 and not torch.allclose(_ce(leaky[r, s:e], labels), alone[key], rtol=1e-5, atol=0.0):
                leaked += 1
            if s > 0 and not torch.allclose(_ce(cached[r, s:e], labels), alone[key], rtol=1e-5, atol=0.0):
                leaked_cache += 1
    assert checked == len(examples)
    # the controls show the comparison can fail: without detection, examples see their neighbours
    assert leaked > 0 and leaked_cache > 0


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_packed_batch_loss_equals_padded_batch_loss(arch: str, attn: str) -> None:
    examples = _examples(12, seed=1)
    model = _model(arch, attn)
    padded = PaddingCollator(pad_token_id=PAD)(examples)
    packed = PackingCollator(pad_token_id=PAD)(list(pack_examples(Dataset.from_list(examples), 40)))
    n_padded = int((padded["labels"][:, 1:] != -100).sum())
    n_packed = int((packed["labels"][:, 1:] != -100).sum())
    assert n_padded == n_packed == sum(sum(t != -100 for t in ex["labels"][1:]) for ex in examples)
    with torch.no_grad():
        loss_padded = model(**padded).loss
        loss_packed = model(**packed).loss
    torch.testing.assert_close(loss_packed, loss_padded, rtol=1e-5, atol=0.0)


@pytest.mark.slow
def test_trainer_accepts_packed_batches(tmp_path) -> None:
    """The collator's extra ``use_cache=False`` and missing mask must survive Trainer's input handling."""
    from transformers import Trainer, TrainingArguments

    model = _model("gpt2", "sdpa").train()
    packed = pack_examples(Dataset.from_list(_examples(16, seed=2)), max_length=40)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        max_steps=2,
        learning_rate=1e-3,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=packed, data_collator=PackingCollator(pad_token_id=PAD)
    )
    seen = []
    original = trainer.compute_loss

    def spy(model, inputs, *a, **k):
        seen.append(set(inputs))
        return original(model, inputs, *a, **k)

    trainer.compute_loss = spy
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert seen and all("position_ids" in s and "attention_mask" not in s for s in seen)
