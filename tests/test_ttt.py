"""TTT language models: official-fixture match, dual form vs. primal, causality, cache, padding, HF integration."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from strata.models.ttt import TTT_PRESETS, TTTCache, TTTConfig, TTTForCausalLM
from strata.models.ttt.modeling_ttt import _SeqInfo, ln_fused_l2_bwd, ln_fwd

FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "ttt" / "linear_attn_tiny"
VOCAB = 97


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------


def make_model(layer_type: str = "linear", backbone: str = "transformer", seed: int = 0, **overrides):
    """A tiny model whose weights are scaled up (like the fixture) so the inner loop visibly changes the output."""
    torch.manual_seed(seed)
    cfg = TTT_PRESETS[f"ttt-{layer_type}-tiny"](VOCAB, backbone=backbone, **overrides)
    model = TTTForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("proj.weight"):
                p.mul_(4)
            elif name.endswith(("W1", "W2")):
                p.mul_(5)
            elif name.endswith("embed_tokens.weight"):
                p.mul_(25)
            elif "learnable_token_idx" in name or "ttt_norm" in name or name.endswith(("b1", "b2")):
                p.add_(0.1 * torch.randn_like(p))
    return model


def ids_for(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


ALL_VARIANTS = [("linear", "transformer"), ("mlp", "transformer"), ("linear", "mamba"), ("mlp", "mamba")]


# ----------------------------------------------------------------------------------------------------------------
# 1. official fixture
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fixture_model_and_io():
    if not FIXTURE.is_dir():
        pytest.skip(f"TTT fixture not found at {FIXTURE}")
    from safetensors.torch import load_file

    expected = json.loads((FIXTURE / "expected.json").read_text())
    for name, digest in expected["sha256"].items():
        assert hashlib.sha256((FIXTURE / name).read_bytes()).hexdigest() == digest, f"{name} is corrupted"
    cfg = TTTConfig(**json.loads((FIXTURE / "config.json").read_text()))
    model = TTTForCausalLM(cfg).eval()
    state = load_file(str(FIXTURE / "model.safetensors"))
    assert {k: list(v.shape) for k, v in state.items()} == expected["parameters"]
    model.load_state_dict(state, strict=True)
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == expected["parameters"]
    return model, load_file(str(FIXTURE / "io.safetensors")), expected


@pytest.mark.parametrize("tag", ["multiple", "partial"])
def test_fixture_logits_and_loss(fixture_model_and_io, tag):
    model, io, expected = fixture_model_and_io
    ids = io[f"input_ids_{tag}"]
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids)
    assert out.logits.dtype == torch.float32
    torch.testing.assert_close(out.logits, io[f"logits_{tag}"], rtol=1e-4, atol=1e-4)
    assert abs(out.loss.item() - expected[f"loss_{tag}"]) <= 1e-5
    assert abs(out.loss.item() - io[f"loss_{tag}"].item()) <= 1e-5


@pytest.mark.parametrize("prefix", ["decode", "decode_partial"])
def test_fixture_prefill_and_decode(fixture_model_and_io, prefix):
    model, io, _ = fixture_model_and_io
    ids = io[f"{prefix}_input_ids"]
    prefill_key = "prefill_last_logits" if prefix == "decode" else "prefill_partial_last_logits"
    L = ids.shape[1] - 3
    with torch.no_grad():
        out = model(input_ids=ids[:, :L], use_cache=True)
        assert isinstance(out.cache, TTTCache)
        steps = [out.logits[:, -1]]
        for s in range(3):
            out = model(
                input_ids=ids[:, L + s : L + s + 1], cache=out.cache, use_cache=True
            )
            steps.append(out.logits[:, -1])
    want = torch.cat([io[prefill_key][:, None], io[f"{prefix}_logits"]], dim=1)
    torch.testing.assert_close(torch.stack(steps, 1), want, rtol=1e-4, atol=1e-4)


def test_fixture_generate_uses_the_cache(fixture_model_and_io):
    """The official config says use_cache=false; generate() still decodes recurrently, and matches no-cache."""
    model, io, _ = fixture_model_and_io
    ids = io["input_ids_partial"]
    kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=0, attention_mask=torch.ones_like(ids))
    with torch.no_grad():
        out = model.generate(ids, return_dict_in_generate=True, **kw)
        ref = model.generate(ids, use_cache=False, **kw)
    assert isinstance(out.cache, TTTCache) and out.cache.get_seq_length() == 44
    assert torch.equal(out.sequences, ref)


def test_fixture_inner_loop_matters(fixture_model_and_io):
    """Sanity: with the inner learning rate at zero the fixture is not matched (so the test above is meaningful)."""
    model, io, _ = fixture_model_and_io
    cfg = TTTConfig(**{**model.config.to_dict(), "ttt_base_lr": 0.0})
    frozen = TTTForCausalLM(cfg).eval()
    frozen.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        diff = (frozen(input_ids=io["input_ids_multiple"]).logits - io["logits_multiple"]).abs().max()
    assert diff > 1.0


# ----------------------------------------------------------------------------------------------------------------
# 2. dual form == naive primal (token by token, mini-batch gradient descent, autograd gradients)
# ----------------------------------------------------------------------------------------------------------------


def primal_reference(layer, xq, xk, xv, lr, tau_table):
    """Token-by-token TTT for one sequence, written from the paper's definition (not from the dual form).

    Every token's gradient is taken at the state of the start of its mini-batch; token i sees
    W_start - tau_i * sum_{j<=i} lr_j grad_j; the state after the last token of a mini-batch starts the next.
    """
    H, L, d = xq.shape
    K = layer.mini_batch_size
    gamma, beta = layer.ttt_norm_weight.detach().double(), layer.ttt_norm_bias.detach().double()
    names = layer.inner_param_names
    outs = torch.zeros(H, L, d, dtype=torch.float64)
    for h in range(H):

        def f(params, x, h=h):
            if len(names) == 2:
                z = x @ params["W1"] + params["b1"][0]
            else:
                hid = F.gelu(x @ params["W1"] + params["b1"][0], approximate="tanh")
                z = hid @ params["W2"] + params["b2"][0]
            return F.layer_norm(z, (d,), gamma[h], beta[h], eps=1e-6)

        current = {n: getattr(layer, n).detach()[h].double() for n in names}
        for t in range(L):
            i = t % K
            if i == 0:  # a new mini-batch starts from the state after the previous one
                start = current
                acc = {n: torch.zeros_like(v) for n, v in start.items()}
            params = {n: v.clone().requires_grad_(True) for n, v in start.items()}
            k, v = xk[h, t].double(), xv[h, t].double()
            loss = 0.5 * ((f(params, k) - (v - k)) ** 2).sum()
            grads = torch.autograd.grad(loss, list(params.values()))
            acc = {n: acc[n] + lr[h, t].double() * g for n, g in zip(params, grads)}
            current = {n: start[n] - tau_table[i].double() * acc[n] for n in start}
            q = xq[h, t].double()
            outs[h, t] = q + f(current, q)
    return outs


@pytest.mark.parametrize("layer_type", ["linear", "mlp"])
@pytest.mark.parametrize("length", [40])
def test_dual_form_equals_primal(layer_type, length):
    model = make_model(layer_type, seed=3)
    layer = model.model.layers[0].seq_modeling_block
    K, H, d = layer.mini_batch_size, layer.num_heads, layer.head_dim
    g = torch.Generator().manual_seed(5)
    xq, xk, xv = (torch.randn(1, H, length, d, generator=g) * 2 for _ in range(3))
    lr = torch.rand(1, H, length, generator=g) * (0.5 if layer_type == "linear" else 0.1)
    base = 1.0 / torch.arange(1, K + 1, dtype=torch.float32)
    tau_table = torch.clamp_min(base + layer.learnable_token_idx.detach(), 0.0)
    pos = (torch.arange(length) % K)[None]
    info = _SeqInfo(pos=pos, offset=0, valid=None, n_valid=None)
    with torch.no_grad():
        # heads are folded into the batch inside the scan: [B, H, L, d] -> [BH, L, d]
        args = (xq[0], xk[0], xv[0], lr[0], tau_table[pos], tau_table[K - 1], layer._initial_state(1), info)
        z, _ = layer._scan(*args)
        dual = xq[0] + ln_fwd(z, layer.ttt_norm_weight[:, None, :], layer.ttt_norm_bias[:, None, :])
    primal = primal_reference(layer, xq[0], xk[0], xv[0], lr[0], tau_table)
    torch.testing.assert_close(dual.double(), primal, rtol=1e-4, atol=1e-4)
    # and the inner loop is not a no-op on this data
    frozen = primal_reference(layer, xq[0], xk[0], xv[0], torch.zeros_like(lr[0]), tau_table)
    assert (primal - frozen).abs().max() > 1e-2


def test_ln_l2_gradient_is_exact():
    """The analytic inner gradient (reference formula and the fused one used in the loop) equals autograd's."""
    g = torch.Generator().manual_seed(0)
    z, target = (
        torch.randn(3, 5, 16, generator=g, dtype=torch.float64),
        torch.randn(3, 5, 16, dtype=torch.float64),
    )
    gamma, beta = torch.rand(3, 1, 16, dtype=torch.float64) + 0.5, torch.randn(3, 1, 16, dtype=torch.float64)
    zr = z.clone().requires_grad_(True)
    (0.5 * (F.layer_norm(zr, (16,), eps=1e-6) * gamma + beta - target).pow(2).sum()).backward()
    torch.testing.assert_close(ln_fused_l2_bwd(z, target, gamma, beta), zr.grad)
    layer = make_model("linear").model.layers[0].seq_modeling_block
    torch.testing.assert_close(layer._ln_l2_bwd(z, gamma * (beta - target), gamma * gamma), zr.grad)


@pytest.mark.parametrize("layer_type,mamba", [("linear", False), ("mlp", False), ("linear", True)])
def test_layer_gradients_gradcheck(layer_type, mamba):
    """Finite-difference check of the backward through the whole TTT layer (float64, tiny sizes).

    The inner loop uses an analytic LayerNorm gradient and fused ops; this checks the outer gradients
    (to the input, W1/b1, the learning-rate gate, the token-index offsets and the TTT norm) are exact.
    """
    from torch.func import functional_call

    cfg = TTTConfig(
        vocab_size=8,
        hidden_size=8,
        intermediate_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        mini_batch_size=4,
        ttt_layer_type=layer_type,
        share_qk=mamba,
        use_gate=mamba,
    )
    torch.manual_seed(0)
    model = TTTForCausalLM(cfg).double()
    layer = model.model.layers[0].seq_modeling_block
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    L = 10
    info = _SeqInfo(pos=(torch.arange(L) % 4)[None], offset=0, valid=None, n_valid=None)
    names = ["W1", "b1", "learnable_ttt_lr_weight", "learnable_token_idx", "ttt_norm_weight", "ttt_norm_bias"]
    names += ["conv_k.weight", "g_proj.weight"] if mamba else []
    params = {n: p.detach().clone().requires_grad_(True) for n, p in layer.named_parameters() if n in names}
    x = torch.randn(1, L, 8, dtype=torch.float64, requires_grad=True)

    def f(x, *values):
        return functional_call(layer, dict(zip(params, values)), (x, info))

    assert torch.autograd.gradcheck(f, (x, *params.values()), eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


# ----------------------------------------------------------------------------------------------------------------
# 3. causality and prefix consistency
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer_type,backbone", ALL_VARIANTS)
def test_causality(layer_type, backbone):
    model = make_model(layer_type, backbone)
    ids = ids_for(1, 40)
    with torch.no_grad():
        base = model(input_ids=ids).logits
        for t in (0, 16, 39):
            changed = ids.clone()
            changed[0, t] = (changed[0, t] + 1) % VOCAB
            logits = model(input_ids=changed).logits
            torch.testing.assert_close(logits[:, :t], base[:, :t], rtol=0, atol=1e-5)
            assert (logits[:, t:] - base[:, t:]).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------------------------------
# 4. cached decoding == full forward
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer_type,backbone", ALL_VARIANTS)
def test_cached_decoding_matches_full_forward(layer_type, backbone):
    model = make_model(layer_type, backbone)
    ids = ids_for(2, 45)
    with torch.no_grad():
        full = model(input_ids=ids).logits
        # prefill 13 (inside a mini-batch), one token at a time, then a multi-token chunk crossing boundaries
        out = model(input_ids=ids[:, :13], use_cache=True)
        pieces = [out.logits]
        cache = out.cache
        for t in range(13, 20):
            out = model(input_ids=ids[:, t : t + 1], cache=cache, use_cache=True)
            pieces.append(out.logits)
        out = model(input_ids=ids[:, 20:45], cache=cache, use_cache=True)
        pieces.append(out.logits)
    assert cache.get_seq_length() == 45
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------------------------
# 5. attention_mask: padded tokens are removed from the row
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer_type,backbone", [("linear", "transformer"), ("mlp", "mamba")])
def test_left_padding_equals_unpadded(layer_type, backbone):
    model = make_model(layer_type, backbone)
    long, short = ids_for(1, 37, seed=2), ids_for(1, 29, seed=3)
    pad = 37 - 29
    batch = torch.cat([long, torch.cat([torch.zeros(1, pad, dtype=torch.long), short], 1)])
    mask = torch.ones_like(batch)
    mask[1, :pad] = 0
    with torch.no_grad():
        padded = model(input_ids=batch, attention_mask=mask, use_cache=True)
        alone_long = model(input_ids=long).logits
        alone_short = model(input_ids=short, use_cache=True)
        torch.testing.assert_close(padded.logits[0], alone_long[0], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(padded.logits[1, pad:], alone_short.logits[0], rtol=1e-4, atol=1e-4)
        # the padded row's cache continues exactly like the unpadded row's (rows now sit at different offsets)
        nxt = ids_for(2, 3, seed=4)
        cache = padded.cache
        short_cache = alone_short.cache
        for s in range(3):
            full_mask = torch.cat([mask, torch.ones(2, s + 1, dtype=torch.long)], 1)
            step = model(input_ids=nxt[:, s : s + 1], attention_mask=full_mask, cache=cache)
            ref = model(input_ids=nxt[1:, s : s + 1], cache=short_cache, use_cache=True)
            torch.testing.assert_close(step.logits[1], ref.logits[0], rtol=1e-4, atol=1e-4)


def test_padding_in_the_middle_and_padding_tokens_are_ignored():
    model = make_model("linear")
    ids = ids_for(1, 30)
    holed = torch.cat([ids[:, :10], ids_for(1, 4, seed=9), ids[:, 10:]], 1)
    mask = torch.ones_like(holed)
    mask[:, 10:14] = 0
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        out = model(input_ids=holed, attention_mask=mask).logits
    torch.testing.assert_close(out[:, mask[0].bool()], ref, rtol=1e-4, atol=1e-4)


def test_generate_left_padded_batch_matches_single_rows():
    model = make_model("linear", "mamba")
    a, b = ids_for(1, 21, seed=6), ids_for(1, 12, seed=7)
    pad = 21 - 12
    batch = torch.cat([a, torch.cat([torch.zeros(1, pad, dtype=torch.long), b], 1)])
    mask = torch.ones_like(batch)
    mask[1, :pad] = 0
    kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        out = model.generate(batch, attention_mask=mask, **kw)
        out_a = model.generate(a, **kw)
        out_b = model.generate(b, **kw)
        no_cache = model.generate(batch, attention_mask=mask, use_cache=False, **kw)
    assert torch.equal(out[0, 21:], out_a[0, 21:])
    assert torch.equal(out[1, 21:], out_b[0, 12:])
    assert torch.equal(out, no_cache)


def test_generate_beam_search_runs():
    model = make_model("mlp")
    with torch.no_grad():
        out = model.generate(ids_for(2, 9), max_new_tokens=5, num_beams=2, do_sample=False, pad_token_id=0)
    assert out.shape == (2, 14)


# ----------------------------------------------------------------------------------------------------------------
# 6. labels, bf16, gradient checkpointing
# ----------------------------------------------------------------------------------------------------------------


def test_ignored_labels():
    model = make_model("linear")
    ids = ids_for(2, 24)
    labels = ids.clone()
    labels[0, :10] = -100
    labels[1, 20:] = -100
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels)
        logits = out.logits[:, :-1].reshape(-1, VOCAB)
        manual = F.cross_entropy(logits, labels[:, 1:].reshape(-1), ignore_index=-100)
        assert torch.allclose(out.loss, manual, atol=1e-6)
        # num_items_in_batch (from the Trainer) switches to sum / count
        n = int((labels[:, 1:] != -100).sum())
        summed = model(input_ids=ids, labels=labels, num_items_in_batch=torch.tensor(n)).loss
        assert torch.allclose(summed, manual, atol=1e-5)


def test_bf16_forward():
    model = make_model("mlp", "mamba").to(torch.bfloat16)
    ids = ids_for(1, 24)
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids, use_cache=True)
        ref = make_model("mlp", "mamba")(input_ids=ids).logits
        nxt = model(input_ids=ids[:, :1], cache=out.cache)
    assert out.logits.dtype == torch.float32 and torch.isfinite(out.logits).all() and torch.isfinite(out.loss)
    assert torch.isfinite(nxt.logits).all()
    assert (out.logits - ref).abs().mean() < 0.1 * ref.abs().mean()


def test_gradient_checkpointing_and_scan_checkpointing_keep_gradients():
    ids = ids_for(2, 40)

    def grads(model):
        model.train()
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    ref = grads(make_model("mlp", "mamba"))
    model = make_model("mlp", "mamba")
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    assert model.is_activation_checkpointing
    ckpt = grads(model)
    scan = grads(make_model("mlp", "mamba", scan_checkpoint_group_size=1))
    assert ref.keys() == ckpt.keys() == scan.keys()
    assert "model.layers.0.seq_modeling_block.learnable_token_idx" in ref
    for name in ref:
        torch.testing.assert_close(ckpt[name], ref[name], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(scan[name], ref[name], rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# 7. Hugging Face integration: Auto classes, save/load, Trainer
# ----------------------------------------------------------------------------------------------------------------


def test_save_and_load_with_auto_classes(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    AutoConfig.register("ttt", TTTConfig, exist_ok=True)
    AutoModelForCausalLM.register(TTTConfig, TTTForCausalLM, exist_ok=True)
    model = make_model("mlp", "mamba")
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert (
        isinstance(loaded, TTTForCausalLM)
        and loaded.config.pre_conv
        and loaded.config.ttt_layer_type == "mlp"
    )
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    ids = ids_for(1, 20)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)


def test_fresh_init_is_sane():
    cfg = TTT_PRESETS["ttt-linear-tiny"](VOCAB)
    torch.manual_seed(0)
    model = TTTForCausalLM(cfg)
    block = model.model.layers[0].seq_modeling_block
    assert torch.all(block.learnable_token_idx == 0) and torch.all(block.ttt_norm_weight == 1)
    assert 0.005 < block.W1.std() < 0.05 and model.lm_head.weight is model.model.embed_tokens.weight
    ids = ids_for(1, 16)
    loss = model(input_ids=ids, labels=ids).loss
    assert abs(loss.item() - torch.log(torch.tensor(float(VOCAB))).item()) < 0.5


def test_trainer_lowers_loss(tmp_path):
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(0)
    model = TTTForCausalLM(TTT_PRESETS["ttt-linear-tiny"](VOCAB))
    # a learnable pattern: repeated short random motifs
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(0, VOCAB, (8,), generator=g).repeat(5) for _ in range(16)]
    data = [{"input_ids": row, "labels": row} for row in rows]
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        max_steps=10,
        learning_rate=3e-3,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) >= 10 and losses[-1] < losses[0] - 0.3, losses


def test_presets():
    names = {f"ttt-{t}-{s}" for t in ("linear", "mlp") for s in ("125m", "350m", "760m", "1.3b", "tiny")}
    assert names <= set(TTT_PRESETS)
    c = TTT_PRESETS["ttt-linear-125m"](50257)
    shape = (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size)
    assert shape == (768, 12, 12, 2048)
    assert c.ttt_base_lr == 1.0 and c.mini_batch_size == 16 and c.model_type == "ttt"
    c = TTT_PRESETS["ttt-mlp-1.3b"](32000, backbone="mamba", mini_batch_size=8)
    shape = (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size)
    assert shape == (2048, 24, 32, 5504)
    assert c.ttt_base_lr == 0.1 and c.pre_conv and c.share_qk and c.use_gate and c.mini_batch_size == 8
    c = TTT_PRESETS["ttt-mlp-tiny"](VOCAB)
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads) == (64, 2, 4)
    with pytest.raises(ValueError):
        TTT_PRESETS["ttt-linear-tiny"](VOCAB, ttt_layer_type="rnn")
