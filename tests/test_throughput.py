"""Throughput and MFU: FLOPs per token against hand counts, the cached peak probe, and the logged numbers."""

from __future__ import annotations

import logging
import math
import time

import pytest
import torch
from helpers import FAST, metrics, only_run, run_events, run_strata
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, MixtralConfig

from strata.training import throughput
from strata.training.throughput import (
    FlopCounter,
    ThroughputMeter,
    measure_peak_flops,
    mfu_unavailable_reason,
)


def _tiny_llama() -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, tie_word_embeddings=False)
    return LlamaForCausalLM(config)


def test_flops_tiny_llama_by_hand():
    counter = FlopCounter.from_model(_tiny_llama())
    # Per layer: q 64x64=4096, k and v 64x32=2048 each (2 kv heads x head_dim 16), o 4096,
    # gate/up/down 64x128=8192 each, two RMSNorms 64 each -> 4096+2048+2048+4096+3*8192+128 = 36,992.
    # 2 layers + final norm 64 = 74,048. LM head 256x64 = 16,384. The 256x64 embedding is a lookup: not counted.
    body, head = 74_048, 16_384
    assert (counter.trainable_params, counter.frozen_params, counter.head_params) == (body, 0, head)
    # 30 real tokens in rows of 10, 4 of them carry loss. Attention per token: 12 x 2 layers x (4 x 16) x 10.
    attention = 12 * 2 * 64 * 10 * 30  # 460,800
    assert counter.flops(30, 4, "all", 10) == 6 * body * 30 + 6 * head * 30 + attention  # 16,738,560
    assert counter.flops(30, 4, "loss", 10) == 6 * body * 30 + 6 * head * 4 + attention  # 14,182,656
    assert counter.flops(30, 4, "all", 10) == 16_738_560 and counter.flops(30, 4, "loss", 10) == 14_182_656
    with pytest.raises(ValueError):
        counter.flops(30, 4, "some", 10)


def test_flops_tied_gpt2_and_frozen_lora_weights():
    config = GPT2Config(vocab_size=100, n_embd=32, n_layer=1, n_head=2, n_positions=16)
    counter = FlopCounter.from_model(GPT2LMHeadModel(config))
    # ln_1 64, c_attn 32x96+96, attn c_proj 32x32+32, ln_2 64, c_fc 32x128+128, mlp c_proj 128x32+32, ln_f 64;
    # wte (tied LM head, 100x32) is counted once, as the head; wpe 16x32 is a lookup.
    assert counter.trainable_params == 64 + 3168 + 1056 + 64 + 4224 + 4128 + 64 == 12_768
    assert counter.head_params == 3_200 and counter.attention_width == 32 and counter.n_layers == 1
    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(GPT2LMHeadModel(config), LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True))
    counted = FlopCounter.from_model(lora)
    adapters = 2 * 32 + 96 * 2  # A: r x in, B: out x r
    assert (counted.trainable_params, counted.frozen_params) == (adapters, 12_768)
    assert not counted.head_trainable
    # frozen weights: forward + input gradient (4); adapters 6; frozen head 4 per position
    assert counted.flops(5, 1, "all", 5) == 5 * (6 * adapters + 4 * 12_768) + 4 * 3_200 * 5 + 12 * 32 * 5 * 5


def test_peak_probe_is_cached_per_key(tmp_path, monkeypatch):
    monkeypatch.setenv("STRATA_CACHE", str(tmp_path / "strata"))
    start = time.perf_counter()
    first = measure_peak_flops("cpu", torch.float32)
    assert time.perf_counter() - start < 3.0
    assert first.flops_per_second > 1e8 and "(now;" in first.how
    assert (tmp_path / "strata" / "peak_flops.json").is_file()

    def no_matmul(*args, **kwargs):
        raise AssertionError("the cached peak ran a matmul")

    monkeypatch.setattr(throughput, "_probe", no_matmul)
    monkeypatch.setattr(torch, "matmul", no_matmul)
    second = measure_peak_flops("cpu", torch.float32)
    assert second.flops_per_second == first.flops_per_second and "(cached" in second.how
    threads = torch.get_num_threads()
    try:  # another thread count is another key: it would be measured again
        torch.set_num_threads(threads + 1)
        with pytest.raises(AssertionError, match="ran a matmul"):
            measure_peak_flops("cpu", torch.float32)
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(AssertionError, match="ran a matmul"):
        measure_peak_flops("cpu", torch.bfloat16)


def test_cache_location_follows_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("STRATA_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert throughput.cache_file() == tmp_path / "xdg" / "strata" / "peak_flops.json"
    monkeypatch.setenv("STRATA_CACHE", str(tmp_path / "mine"))
    assert throughput.cache_file() == tmp_path / "mine" / "peak_flops.json"


def test_meter_mfu_is_model_flops_over_time_and_peak(monkeypatch):
    clock = iter([100.0, 102.0, 105.0, 106.5, 110.0])
    monkeypatch.setattr(throughput.time, "perf_counter", lambda: next(clock))
    counter = FlopCounter.from_model(_tiny_llama())
    peak = throughput.PeakFlops(1e9, "k", "test")
    meter = ThroughputMeter(counter, peak)
    meter.on_train_begin(None, None, None)  # t=100
    meter.observe(30, 4, "loss", 10)
    meter.on_step_end(None, None, None)  # t=102
    meter.on_evaluate(None, None, None)  # t=105: 3 s of evaluation leave the clock
    meter.observe(30, 4, "loss", 10)
    logs = meter.close_window()  # t=106.5: 6.5 s elapsed, 3 paused -> 3.5 s of training
    assert logs["tokens_per_second"] == pytest.approx(60 / 3.5)
    assert logs["loss_tokens_per_second"] == pytest.approx(8 / 3.5)
    assert logs["mfu"] == pytest.approx(2 * 14_182_656 / 3.5 / 1e9)


def test_mfu_not_reported_for_quantized_moe_and_seq2seq(tmp_path, monkeypatch, caplog):
    from transformers import TrainingArguments

    from strata.training.trainer import StrataTrainer

    model = _tiny_llama()
    assert mfu_unavailable_reason(model) is None
    trainer = StrataTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True,
                                                                report_to=[]))
    model.hf_quantizer = object()  # what from_pretrained(quantization_config=BitsAndBytesConfig(...)) sets
    monkeypatch.setattr("strata.training.trainer.measure_peak_flops",
                        lambda *a, **k: pytest.fail("probed a peak for a quantized model"))
    with caplog.at_level(logging.WARNING, logger="strata.training.trainer"):
        meter = trainer._throughput_meter()
    said = [r.getMessage() for r in caplog.records if "MFU is not reported" in r.getMessage()]
    assert len(said) == 1 and "4/8-bit" in said[0]
    meter.on_train_begin(None, None, None)
    meter.observe(10, 2, "all", 10)
    logs = meter.close_window()
    assert "tokens_per_second" in logs and "mfu" not in logs
    summary = meter.summary()
    assert "mfu" not in summary and "4/8-bit" in summary["mfu_not_reported"] and "peak_flops_per_second" not in summary
    moe = MixtralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=1, num_local_experts=4, num_experts_per_tok=2)
    from transformers import MixtralForCausalLM, T5Config, T5ForConditionalGeneration

    assert "2 of 4 experts" in mfu_unavailable_reason(MixtralForCausalLM(moe))
    t5 = T5ForConditionalGeneration(T5Config(vocab_size=64, d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16))
    assert "encoder-decoder" in mfu_unavailable_reason(t5)


def test_train_logs_mfu_to_tensorboard_and_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("STRATA_CACHE", str(tmp_path / "cache"))
    runs = tmp_path / "runs"
    assert run_strata("train", *FAST, "--max_steps", "5", "--logging_steps", "2", "--runs_dir", runs) == 0
    run = only_run(runs)
    events = run_events(run)
    scalars = set(events.Tags()["scalars"])
    for tag in ("train/mfu", "train/loss_tokens_per_second", "train/tokens_per_second"):
        assert tag in scalars, (tag, sorted(scalars))
    mfus = [e.value for e in events.Scalars("train/mfu")]
    assert len(mfus) == 3 and all(0 < m < 1 for m in mfus)  # steps 1, 2, 4 (logging_first_step)
    result = metrics(run)
    summary = result["run"]["throughput"]
    # The token count is the one transformers' Trainer keeps independently (include_num_input_tokens_seen).
    assert summary["tokens"] == result["train"]["num_input_tokens_seen"]
    assert 0 < summary["loss_tokens"] < summary["tokens"]
    seconds = summary["train_seconds_measured"]
    assert 0 < seconds <= result["train"]["train_runtime"]
    assert summary["tokens_per_second"] == pytest.approx(summary["tokens"] / seconds)
    assert summary["loss_tokens_per_second"] == pytest.approx(summary["loss_tokens"] / seconds)
    assert summary["flops_per_token"] == pytest.approx(summary["model_flops"] / summary["tokens"])
    assert summary["mfu"] == pytest.approx(summary["model_flops"] / seconds / summary["peak_flops_per_second"])
    # llama-tiny, no padding, rows of at most 96: between the per-token FLOPs at length 1 and at 96.
    from transformers import AutoModelForCausalLM

    counter = FlopCounter.from_model(AutoModelForCausalLM.from_pretrained(run / "final"))
    assert counter.flops(1, 0, "all", 1) < summary["flops_per_token"] <= counter.flops(1, 1, "all", 96)
    assert "matmul" in summary["peak_flops_how"] and (tmp_path / "cache" / "peak_flops.json").is_file()
    assert not math.isnan(summary["mfu"])



def test_batch_counts_padded_packed_and_flattened():
    from strata.data.collate import PackingCollator, PaddingCollator
    from strata.training.throughput import batch_counts

    rows = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8, 9], "labels": [-100, 9]}]
    padded = PaddingCollator(pad_token_id=0)(rows)
    # 5 real tokens in a 2x3 batch; loss-bearing after the shift: 6, 7 and 9.
    assert batch_counts(padded, 0, encoder_decoder=False) == (5, 3, 3)
    packed = [{"input_ids": [5, 6, 7, 8, 9], "labels": [5, 6, 7, 8, 9], "position_ids": [0, 1, 2, 0, 1]},
              {"input_ids": [4, 4], "labels": [4, 4], "position_ids": [0, 1]}]
    batch = PackingCollator(pad_token_id=0)(packed)
    # No attention_mask: real tokens are the non-pad ids (7 of 2x5); each example's first label is dropped and
    # the shift drops each row's first, leaving 6, 7, 9 and the second 4.
    assert batch_counts(batch, 0, encoder_decoder=False) == (7, 4, 5)
    flat = PackingCollator(pad_token_id=0, flatten=True)(packed)
    # One row of examples 3, 2, 2 long: length-weighted mean length (9 + 4 + 4) / 7.
    non_pad, loss, seq_len = batch_counts(flat, 0, encoder_decoder=False)
    assert (non_pad, loss) == (7, 4) and seq_len == pytest.approx(17 / 7)


def test_own_models_attention_convention():
    from strata.models.stratified import STRATIFIED_PRESETS, StratifiedForCausalLM
    from strata.models.ttt import TTT_PRESETS, TTTForCausalLM

    ttt = TTTForCausalLM(TTT_PRESETS["ttt-linear-tiny"](vocab_size=64))
    counted = FlopCounter.from_model(ttt)
    embeddings = sum(m.weight.numel() for m in ttt.modules() if isinstance(m, torch.nn.Embedding))
    head = ttt.get_output_embeddings().weight
    assert counted.attention_width == 0  # TTT: parameter term only (docs/throughput.md)
    tied = head is ttt.get_input_embeddings().weight
    assert counted.trainable_params + (0 if tied else head.numel()) + embeddings == ttt.num_parameters()
    config = STRATIFIED_PRESETS["stratified-routing-tiny"](vocab_size=64)
    stratified = FlopCounter.from_model(StratifiedForCausalLM(config))
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    assert stratified.attention_width == config.num_attention_heads * head_dim > 0
    assert stratified.n_layers == config.num_hidden_layers
