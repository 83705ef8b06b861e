"""LM head only at loss positions: loss and gradients equal the model's own full-logits ``labels=`` path.

The reference is always the model called the ordinary way (``model(**batch, labels=...)``: its head over
every position, transformers' ForCausalLMLoss with its own shift), so the sparse code is checked against
code it does not share. Each case also asserts the head really saw only the N loss positions.
"""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MixtralConfig,
    T5Config,
    T5ForConditionalGeneration,
    TrainingArguments,
)

from strata.data.collate import PackingCollator, PaddingCollator
from strata.models.stratified import StratifiedConfig, StratifiedForCausalLM
from strata.models.ttt import TTT_PRESETS, TTTForCausalLM
from strata.training.sparse_loss import LossPositionsOnly, loss_positions
from strata.training.trainer import StrataTrainer

VOCAB = 97
TOL = 1e-6


def llama(seed: int = 0, vocab: int = VOCAB, tied: bool = False) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      pad_token_id=0, tie_word_embeddings=tied)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")


def sft_features(n: int = 4, seed: int = 0) -> list[dict[str, list[int]]]:
    """Prompt-then-answer rows: only the last 1-3 tokens carry labels (as SST-2 prompts do)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        length = 9 + 3 * i
        ids = torch.randint(2, VOCAB, (length,), generator=g).tolist()
        answer = 1 + i % 3
        rows.append({"input_ids": ids, "labels": [-100] * (length - answer) + ids[-answer:]})
    return rows


def padded_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    return PaddingCollator(pad_token_id=0)(sft_features(seed=seed))


def head_outputs(model: torch.nn.Module) -> tuple[list[tuple[int, ...]], object]:
    """Record the output shape of every call of the model's output head."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    shapes: list[tuple[int, ...]] = []
    handle = base.get_output_embeddings().register_forward_hook(lambda m, a, out: shapes.append(tuple(out.shape)))
    return shapes, handle


def loss_and_grads(model, batch, num_items, sparse: LossPositionsOnly | None):
    model.zero_grad(set_to_none=True)
    kwargs = {} if num_items is None else {"num_items_in_batch": num_items}
    if sparse is None:
        out = model(**batch, **kwargs)
    else:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        with sparse.patched(base, batch["labels"]):
            out = model(**batch, **kwargs)
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.loss.detach(), grads


def assert_same(model, batch, num_items=None, chunk_tokens: int = 1024):
    """Sparse == full in loss and every gradient; the head gave [1, N, V] on the sparse path."""
    ref_loss, ref_grads = loss_and_grads(model, batch, num_items, None)
    shapes, handle = head_outputs(model)
    try:
        loss, grads = loss_and_grads(model, batch, num_items, LossPositionsOnly(chunk_tokens=chunk_tokens))
    finally:
        handle.remove()
    n = int(loss_positions(batch["labels"])[1].numel())
    assert shapes == [(1, n, shapes[0][-1])], (shapes, n)
    assert torch.isfinite(ref_loss)
    assert abs(float(loss - ref_loss)) <= TOL * max(1.0, abs(float(ref_loss))), (float(loss), float(ref_loss))
    assert grads.keys() == ref_grads.keys() and grads
    for name, g in grads.items():
        ref = ref_grads[name]
        assert torch.allclose(g, ref, atol=TOL, rtol=TOL), (name, float((g - ref).abs().max()))
    return float(ref_loss)


@pytest.mark.parametrize("num_items", [None, 7])
def test_llama_padded_batch(num_items):
    batch = padded_batch()
    assert_same(llama(), batch, None if num_items is None else torch.tensor(num_items))


def test_packed_batch():
    from strata.data.packing import pack_examples

    rows = list(pack_examples(Dataset.from_list(sft_features(6)), max_length=40))
    batch = PackingCollator(pad_token_id=0)(rows)
    assert "attention_mask" not in batch and int(batch["position_ids"].eq(0).sum()) > batch["input_ids"].shape[0]
    assert_same(llama(), batch, torch.tensor(11))


@pytest.mark.parametrize("head", ["linear", "tied", "lora"])
def test_chunked_cross_entropy_every_position(head):
    """Pretraining-style labels (every real token), chunks of 8: a plain Linear head (own or tied to the
    embeddings) takes the fused chunked CE, a LoRA-adapted head the per-chunk checkpointed one; same loss/grads."""
    from peft import LoraConfig, get_peft_model

    batch = PaddingCollator(pad_token_id=0)([{"input_ids": f["input_ids"]} for f in sft_features()])
    n = int(loss_positions(batch["labels"])[1].numel())
    assert n > 3 * 8
    model = llama(tied=head == "tied")
    if head == "lora":
        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "lm_head"], init_lora_weights=False))
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == (head == "tied")
    assert_same(model, batch, None, chunk_tokens=8)
    assert_same(model, batch, torch.tensor(n + 5), chunk_tokens=8)


def test_mixtral_aux_loss_included():
    torch.manual_seed(0)
    cfg = MixtralConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                        output_router_logits=True, router_aux_loss_coef=0.5, pad_token_id=0)
    model = AutoModelForCausalLM.from_config(cfg)
    batch = padded_batch()
    out = model(**batch)
    assert out.aux_loss is not None and float(out.aux_loss.detach()) > 0.1  # the aux term is a real part of the loss
    assert_same(model, batch, torch.tensor(9))


def test_ttt_tiny():
    torch.manual_seed(0)
    model = TTTForCausalLM(TTT_PRESETS["ttt-linear-tiny"](VOCAB))
    assert_same(model, padded_batch(), torch.tensor(9))


@pytest.mark.parametrize("stratified_type", ["moe", "routing"])
def test_stratified_tiny_with_aux(stratified_type):
    torch.manual_seed(0)
    cfg = StratifiedConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_strata=4, stratified_type=stratified_type,
                           pad_token_id=0, eos_token_id=1, aux_loss_coef=0.3)
    model = StratifiedForCausalLM(cfg)
    batch = padded_batch()
    assert model(**batch).aux_loss is not None
    assert_same(model, batch, torch.tensor(9))
    assert_same(model, batch, None)


def test_peft_lora_including_the_head():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(llama(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "lm_head"],
                                               lora_dropout=0.0, init_lora_weights=False))
    assert_same(model, padded_batch(), torch.tensor(9))


def test_encoder_decoder_takes_full_path():
    cfg = T5Config(vocab_size=VOCAB, d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16,
                   decoder_start_token_id=0)
    reason = LossPositionsOnly().model_reason(T5ForConditionalGeneration(cfg))
    assert reason is not None and "encoder-decoder" in reason


class _Dataset(torch.utils.data.Dataset):
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


@pytest.mark.parametrize("packed", [False, True])
def test_gradient_accumulation_through_trainer(tmp_path, packed):
    """Two micro-batches per step (Trainer's num_items_in_batch spans both): same final weights on or off."""
    from strata.data.packing import pack_examples

    rows = sft_features(8, seed=3)
    if packed:
        rows = list(pack_examples(Dataset.from_list(rows), max_length=32))
    collator = PackingCollator(pad_token_id=0) if packed else PaddingCollator(pad_token_id=0)
    weights, shapes = [], []
    for on in (True, False):
        model = llama(seed=5)
        args = TrainingArguments(output_dir=str(tmp_path / str(on)), per_device_train_batch_size=2,
                                 gradient_accumulation_steps=2, max_steps=2, learning_rate=0.5, optim="sgd",
                                 lr_scheduler_type="constant", report_to=[], use_cpu=True, save_strategy="no",
                                 disable_tqdm=True, seed=0, logging_steps=1)
        trainer = StrataTrainer(model=model, args=args, train_dataset=_Dataset(rows), data_collator=collator,
                                loss_positions_only=on)
        seen, handle = head_outputs(model)
        trainer.train()
        handle.remove()
        shapes.append(seen)
        weights.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    assert all(s[0] == 1 for s in shapes[0]) and all(s[0] == 2 for s in shapes[1]), shapes
    start = llama(seed=5).state_dict()
    assert max(float((weights[0][k] - start[k]).abs().max()) for k in start) > 1e-3  # training moved weights
    for k in weights[0]:
        assert torch.allclose(weights[0][k], weights[1][k], atol=TOL, rtol=TOL), k


def test_cli_auto_equals_off(tmp_path, monkeypatch):
    """`strata train` with the default --sparse_lm_head auto takes the sparse path and ends with the weights of
    --sparse_lm_head off (two micro-batches per step, so Trainer's num_items_in_batch matters)."""
    from helpers import FAST, final_weights, max_weight_diff, only_run, run_strata

    import strata.training.sparse_loss as sparse_loss

    patched_calls = []
    original = sparse_loss.LossPositionsOnly.patched

    def spy(self, base, batch_labels):
        patched_calls.append(tuple(batch_labels.shape))
        return original(self, base, batch_labels)

    monkeypatch.setattr(sparse_loss.LossPositionsOnly, "patched", spy)
    finals = {}
    for setting in ("auto", "off"):
        runs = tmp_path / setting
        assert run_strata("train", *FAST, "--max_steps", "3", "--gradient_accumulation_steps", "2",
                          "--sparse_lm_head", setting, "--runs_dir", runs) == 0
        finals[setting] = final_weights(only_run(runs))
        if setting == "auto":
            assert len(patched_calls) == 3 * 2, patched_calls  # every training micro-batch, no eval batch
    assert len(patched_calls) == 6  # --sparse_lm_head off never patches
    assert max_weight_diff(finals["auto"], finals["off"]) <= 1e-6  # measured 1.2e-7 (Adam, 3 steps)


def test_bad_value_is_refused(tmp_path, capsys):
    from helpers import FAST, run_strata

    runs = tmp_path / "runs"
    assert run_strata("train", *FAST, "--sparse_lm_head", "maybe", "--runs_dir", runs) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--sparse_lm_head 'maybe' is not one of auto, off" in err[0]
    assert not runs.exists()


@pytest.mark.parametrize("quirk", ["head_called_twice", "loss_computed_inline"])
def test_a_model_that_breaks_the_layout_falls_back_to_the_full_path(caplog, quirk):
    """A head called twice in one forward, or a loss computed from the logits without loss_function: the
    sparse path notices (or trips), the same batch is rerun in full (the model's own loss), and the model is
    not patched again."""
    from transformers import LlamaForCausalLM

    class ExtraHeadCall(LlamaForCausalLM):
        def forward(self, *args, **kwargs):
            self.lm_head(torch.zeros(1, 1, self.config.hidden_size))
            return super().forward(*args, **kwargs)

    class InlineLoss(LlamaForCausalLM):
        def forward(self, labels=None, **kwargs):
            out = super().forward(**kwargs)
            logits = out.logits[:, :-1].reshape(-1, self.config.vocab_size)
            out.loss = torch.nn.functional.cross_entropy(logits, labels[:, 1:].reshape(-1))
            return out

    torch.manual_seed(0)
    model = (ExtraHeadCall if quirk == "head_called_twice" else InlineLoss)(llama().config).train()
    batch = padded_batch()
    reference = float(model(**batch).loss.detach())
    sparse = LossPositionsOnly()
    with caplog.at_level("WARNING", logger="strata.training.sparse_loss"):
        loss = sparse.run(model, model, batch, False, lambda: model(**batch).loss.detach())
    assert float(loss) == reference
    assert f"full LM head for {type(model).__name__} from now on" in caplog.text
    assert not sparse.applies(model, batch, False)
    assert "forward" not in model.lm_head.__dict__ and "_loss_function" not in model.__dict__  # restored


def test_errors_after_the_sparse_path_worked_are_not_swallowed():
    model = llama().train()
    batch = padded_batch()
    sparse = LossPositionsOnly()
    sparse.run(model, model, batch, False, lambda: model(**batch).loss)  # works: the variant is known good

    def failing():
        model(**batch)
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        sparse.run(model, model, batch, False, failing)
    assert sparse.applies(model, batch, False)
