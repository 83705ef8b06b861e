"""Stratified decoder family: baseline equivalence at init, gradients, masks, HF integration, learnability."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, Trainer, TrainingArguments

from strata.experiments.diagnostics import collect_router_stats, planted_strata_batches, routing_diagnostics
from strata.models.stratified import (
    STRATIFIED_PRESETS,
    StratifiedConfig,
    StratifiedForCausalLM,
    count_parameters,
    fit_stratum_sources,
    match_params,
    parameter_report,
)
from strata.models.stratified.routers import StratifiedPart

TYPES = ["attention", "routing", "layers", "moe"]
SOURCES = ["learned", "clusters", "lid_bins", "domain", "hash"]
VOCAB = 61


def tiny_config(stratified_type: str = "none", **overrides) -> StratifiedConfig:
    kwargs = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_strata=4,
        stratified_type=stratified_type,
        pad_token_id=0,
        eos_token_id=1,
        lid_reference_size=32,
        lid_k=8,
    )
    kwargs.update(overrides)
    return StratifiedConfig(**kwargs)


def build(config: StratifiedConfig, seed: int = 0) -> StratifiedForCausalLM:
    torch.manual_seed(seed)
    return StratifiedForCausalLM(config).eval()


def perturb(model: StratifiedForCausalLM, scale: float = 0.1, seed: int = 1) -> StratifiedForCausalLM:
    """Give every stratum parameter (incl. the zero-init projections) random values, as after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, StratifiedPart):
                for p in module.parameters(recurse=False):
                    p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def random_batch(batch: int = 2, length: int = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (batch, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "stratum_ids": torch.arange(batch) % 4}


def fitted(model: StratifiedForCausalLM) -> StratifiedForCausalLM:
    if model.config.stratum_source in ("clusters", "lid_bins"):
        fit_stratum_sources(model, [random_batch(8, 12, seed=s) for s in range(2)])
    return model


# ----------------------------------------------------------------------------------------------------------------
# Step-0 equivalence
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stratified_type", TYPES)
@pytest.mark.parametrize("source", SOURCES)
def test_step0_equals_baseline_same_seed(stratified_type: str, source: str) -> None:
    batch = random_batch()
    base = build(tiny_config())
    variant = fitted(build(tiny_config(stratified_type, stratum_source=source)))
    with torch.no_grad():
        ref = base(input_ids=batch["input_ids"]).logits
        out = variant(input_ids=batch["input_ids"], stratum_ids=batch["stratum_ids"]).logits
    # the stratum modules draw from their own generator, so the same global seed gives the same backbone
    assert torch.equal(ref, out)


@pytest.mark.parametrize("stratified_type", TYPES)
def test_step0_equals_baseline_loaded_weights(stratified_type: str) -> None:
    base = build(tiny_config(), seed=3)
    variant = build(tiny_config(stratified_type), seed=4)
    missing, unexpected = variant.load_state_dict(base.state_dict(), strict=False)
    assert (
        not unexpected
        and missing
        and all("stratified_ffn" in k or "stratum" in k or "head_gate" in k for k in missing)
    )
    batch = random_batch()
    with torch.no_grad():
        assert torch.equal(base(**batch).logits, variant(**batch).logits)


# ----------------------------------------------------------------------------------------------------------------
# Gradients
# ----------------------------------------------------------------------------------------------------------------


def _router_params(model: StratifiedForCausalLM) -> list[torch.nn.Parameter]:
    return [layer.stratum_source.weight for layer in model.model.layers]


@pytest.mark.parametrize("stratified_type", TYPES)
@pytest.mark.parametrize("router_mode", ["soft", "top1"])
def test_router_receives_gradients(stratified_type: str, router_mode: str) -> None:
    batch = random_batch(4, 12)
    labels = batch["input_ids"]
    model = build(tiny_config(stratified_type, router_mode=router_mode)).train()

    # step 0: the zero-init output projections block the LM gradient, but the balance/z losses reach the router
    model(**batch, labels=labels).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in _router_params(model))

    # after one update of the zero-init projections, the LM loss alone reaches the router (soft or straight-through)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    opt.step()
    model.zero_grad()
    model.config.aux_loss_coef = 0.0
    out = model(**batch, labels=labels)
    out.loss.backward()
    assert out.aux_loss is not None
    for p in _router_params(model):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_hard_sources_have_no_aux_loss_but_moe_keeps_its_expert_loss() -> None:
    batch = random_batch()
    out = build(tiny_config("routing", stratum_source="hash"))(**batch, labels=batch["input_ids"])
    assert out.aux_loss is None
    out = build(tiny_config("moe", stratum_source="hash"))(**batch, labels=batch["input_ids"])
    assert out.aux_loss is not None and out.aux_loss > 0


# ----------------------------------------------------------------------------------------------------------------
# Causality and padding
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stratified_type", ["none", *TYPES])
@pytest.mark.parametrize("source", ["learned", "clusters", "lid_bins", "hash", "domain"])
def test_changing_token_t_never_changes_earlier_logits(stratified_type: str, source: str) -> None:
    if stratified_type == "none" and source != "learned":
        pytest.skip("the baseline has no stratum source")
    model = perturb(fitted(build(tiny_config(stratified_type, stratum_source=source, router_mode="top1"))))
    batch = random_batch(2, 12)
    stratum_ids = torch.randint(0, 4, (2, 12), generator=torch.Generator().manual_seed(0))
    t = 7
    changed = batch["input_ids"].clone()
    changed[:, t] = (changed[:, t] + 5) % (VOCAB - 2) + 2
    changed_strata = stratum_ids.clone()
    changed_strata[:, t:] = (changed_strata[:, t:] + 1) % 4  # the oracle tag may change from t on, too
    with torch.no_grad():
        a = model(input_ids=batch["input_ids"], stratum_ids=stratum_ids).logits
        b = model(input_ids=changed, stratum_ids=changed_strata).logits
    torch.testing.assert_close(a[:, :t], b[:, :t], rtol=0, atol=1e-5)
    assert not torch.allclose(a[:, t:], b[:, t:])


@pytest.mark.parametrize("stratified_type", TYPES)
def test_padding_contents_change_nothing(stratified_type: str) -> None:
    model = perturb(build(tiny_config(stratified_type)))
    ids = torch.randint(2, VOCAB, (2, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0  # right padding
    other = ids.clone()
    other[0, 6:] = torch.tensor([3, 9, 27, 50])  # different junk in the padded slots
    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=mask)
        b = model(input_ids=other, attention_mask=mask)
    torch.testing.assert_close(a.logits[0, :6], b.logits[0, :6])
    torch.testing.assert_close(a.logits[1], b.logits[1])
    torch.testing.assert_close(a.aux_loss, b.aux_loss)  # padded tokens are not in the balance statistics
    with torch.no_grad():
        unmasked = model(input_ids=other, attention_mask=torch.ones_like(ids))
    assert not torch.allclose(a.aux_loss, unmasked.aux_loss)


@pytest.mark.parametrize("stratified_type", TYPES)
def test_left_padding_matches_unpadded(stratified_type: str) -> None:
    model = perturb(build(tiny_config(stratified_type)))
    seq = torch.randint(2, VOCAB, (1, 7), generator=torch.Generator().manual_seed(0))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), seq], dim=1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 7, dtype=torch.long)], dim=1)
    position_ids = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        ref = model(input_ids=seq).logits
        out = model(input_ids=padded, attention_mask=mask, position_ids=position_ids).logits
    torch.testing.assert_close(out[:, 3:], ref, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# Hugging Face integration
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stratified_type,source", [("routing", "clusters"), ("moe", "lid_bins"), ("layers", "learned")]
)
def test_save_pretrained_roundtrip_through_auto_classes(tmp_path, stratified_type: str, source: str) -> None:
    AutoConfig.register("stratified", StratifiedConfig, exist_ok=True)
    AutoModelForCausalLM.register(StratifiedConfig, StratifiedForCausalLM, exist_ok=True)
    model = perturb(fitted(build(tiny_config(stratified_type, stratum_source=source))))
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, StratifiedForCausalLM)
    assert loaded.config.stratified_type == stratified_type and loaded.config.stratum_source == source
    batch = random_batch()
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, loaded(**batch).logits, rtol=0, atol=0)
    assert loaded.num_parameters() == model.num_parameters()


@pytest.mark.parametrize("stratified_type", ["none", *TYPES])
def test_generate_with_cache_equals_greedy_without_cache(stratified_type: str) -> None:
    model = perturb(build(tiny_config(stratified_type, router_mode="top1")), scale=0.05)
    prompt = torch.randint(2, VOCAB, (2, 5), generator=torch.Generator().manual_seed(0))
    kwargs = dict(max_new_tokens=8, do_sample=False, attention_mask=torch.ones_like(prompt), pad_token_id=0)
    with torch.no_grad():
        cached = model.generate(prompt, use_cache=True, **kwargs)
        uncached = model.generate(prompt, use_cache=False, **kwargs)
    assert cached.shape == (2, 13)
    assert torch.equal(cached, uncached)


def test_generate_with_domain_source_and_per_sequence_tags() -> None:
    model = perturb(build(tiny_config("routing", stratum_source="domain")), scale=0.05)
    prompt = torch.randint(2, VOCAB, (2, 5), generator=torch.Generator().manual_seed(0))
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, stratum_ids=torch.tensor([0, 3]))
    with torch.no_grad():
        assert torch.equal(
            model.generate(prompt, use_cache=True, **kwargs),
            model.generate(prompt, use_cache=False, **kwargs),
        )


def test_source_errors_are_explicit() -> None:
    batch = random_batch()
    with pytest.raises(ValueError, match="stratum_ids"):
        build(tiny_config("routing", stratum_source="domain"))(input_ids=batch["input_ids"])
    model = build(tiny_config("routing", stratum_source="hash"))
    with pytest.raises(ValueError, match="input_ids"):
        model(inputs_embeds=model.model.embed_tokens(batch["input_ids"]))


def test_trainer_steps_lower_the_loss(tmp_path) -> None:
    train, vocab = planted_strata_batches(4, batch_size=8, seq_len=12, seed=0)
    rows = [{k: b[k][i] for k in ("input_ids", "attention_mask", "labels")} for b in train for i in range(8)]
    config = tiny_config("moe", vocab_size=vocab)
    model = build(config).train()
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        gradient_accumulation_steps=2,
        max_steps=12,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) >= 10
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.3


# ----------------------------------------------------------------------------------------------------------------
# Ablation switch, fitted sources, parameter accounting, presets
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stratified_type", TYPES)
def test_disabling_every_stratum_recovers_the_baseline(stratified_type: str) -> None:
    base = build(tiny_config())
    model = perturb(build(tiny_config(stratified_type)))
    batch = random_batch()
    with torch.no_grad():
        ref = base(**batch).logits
        assert not torch.allclose(model(**batch).logits, ref)
        model.set_disabled_strata(range(4))
        torch.testing.assert_close(model(**batch).logits, ref)
        model.set_disabled_strata([1])
        one_off = model(**batch).logits
        model.set_disabled_strata(None)
        assert not torch.allclose(model(**batch).logits, one_off)


def test_fitted_sources_use_several_strata() -> None:
    for source in ("clusters", "lid_bins"):
        model = fitted(build(tiny_config("routing", stratum_source=source)))
        out = model(**random_batch(8, 12, seed=5), output_router_logits=True)
        used = {int(s) for p in out.stratum_probs for s in p.argmax(-1).unique()}
        assert len(used) >= 3, (source, used)
    lid = model.model.layers[0].stratum_source
    assert bool(lid.fitted) and torch.all(lid.bin_edges[1:] >= lid.bin_edges[:-1])


def test_match_params_and_parameter_report() -> None:
    variants = {t: tiny_config(t) for t in TYPES}
    for name, cfg in variants.items():
        target = count_parameters(cfg)["total"]
        dense = match_params(tiny_config(), target)
        got = count_parameters(dense)["total"]
        assert dense.stratified_type == "none"
        assert abs(got - target) <= 3 * dense.hidden_size * dense.num_hidden_layers, name
        torch.manual_seed(0)
        assert StratifiedForCausalLM(dense).num_parameters() == got
    assert match_params(variants["moe"], 10**6) is variants["moe"]  # variants are targets, never widened
    report = parameter_report({"none": tiny_config(), **variants})
    json.dumps(report)
    assert report["none"]["stratified"] == 0 and report["moe"]["stratified"] > 0
    assert all(r["backbone"] == report["none"]["total"] for r in report.values())


def test_presets() -> None:
    assert {"stratified-tiny", "stratified-small", "stratified-routing-tiny", "stratified-moe-small"} <= set(
        STRATIFIED_PRESETS
    )
    tiny = STRATIFIED_PRESETS["stratified-tiny"](vocab_size=100, stratified_type="layers")
    assert (tiny.hidden_size, tiny.num_hidden_layers, tiny.num_attention_heads, tiny.num_strata) == (
        64,
        2,
        4,
        4,
    )
    assert tiny.stratified_type == "layers"
    small = STRATIFIED_PRESETS["stratified-attention-small"](vocab_size=100, num_strata=8)
    assert (small.hidden_size, small.num_hidden_layers, small.stratified_type, small.num_strata) == (
        128,
        4,
        "attention",
        8,
    )
    assert STRATIFIED_PRESETS["stratified-tiny"](vocab_size=10).stratified_type == "none"


# ----------------------------------------------------------------------------------------------------------------
# Learnability on planted strata
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("stratified_type", ["routing", "moe"])
def test_learned_router_finds_planted_strata(stratified_type: str) -> None:
    train, vocab = planted_strata_batches(120, batch_size=16, seq_len=16, seed=1)
    test, _ = planted_strata_batches(8, batch_size=16, seq_len=16, seed=2)
    config = tiny_config(
        stratified_type, vocab_size=vocab, hidden_size=64, intermediate_size=128, stratum_source="learned"
    )
    model = build(config).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: one thread is faster, and the cores are shared
    start = time.perf_counter()
    for batch in train:
        model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        ).loss.backward()
        opt.step()
        opt.zero_grad()
    elapsed = time.perf_counter() - start
    torch.set_num_threads(threads)

    stats = collect_router_stats(model, test, [b["stratum_ids"] for b in test])
    diag = routing_diagnostics(stats, n_permutations=100, lid=False)
    best = max(diag["layers"], key=lambda layer: layer["router"]["purity"])["router"]
    print(
        f"{stratified_type}: {elapsed:.1f}s, purity per layer "
        f"{[round(layer['router']['purity'], 3) for layer in diag['layers']]}, "
        f"chance (null mean) {best['purity_null_mean']:.3f}, nmi {best['nmi']:.3f}, p {best['purity_p_value']:.3f}, "
        f"k-means purity {[round(layer['kmeans']['purity'], 3) for layer in diag['layers']]}"
    )
    assert best["purity"] > best["purity_null_mean"] + 0.1
    assert best["purity_p_value"] < 0.05 and best["nmi_p_value"] < 0.05
