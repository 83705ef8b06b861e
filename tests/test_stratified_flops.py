"""FLOPs per token of the stratified family, and the matched dense controls (--match_params_to, --match_flops_of).

The dense baseline's FLOPs are checked against a hand count from the config; the controls' sizes against the
variants' counts computed on their own (count_parameters / training_flops_per_token of the variant preset).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import FAST

from strata.cli import main
from strata.errors import StrataError
from strata.models.arguments import ModelArguments
from strata.models.plan import plan_model
from strata.models.stratified import (
    StratifiedConfig,
    count_parameters,
    match_flops,
    stratified_preset,
    training_flops_per_token,
)

VARIANTS = ("attention", "routing", "layers", "moe")
VOCAB = 256
SEQ = 32
TOKENIZER = SimpleNamespace(pad_token_id=0, eos_token_id=1, bos_token_id=None)


def hand_flops(cfg: StratifiedConfig, seq_len: int) -> dict[str, int]:
    """FlopCounterMode's convention by hand, per token: 2 FLOPs per multiply-add of every linear layer (lm_head
    included; the embedding is a lookup), plus the attention's QK^T and PV products over the full T x T scores
    (2 x T x head_dim each per head: causal masking is not discounted); backward computes two products per
    forward product (the input's and the weight's gradient), so it is exactly 2 x forward."""
    h, d, heads, kv = cfg.hidden_size, cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
    per_layer = h * heads * d + 2 * h * kv * d + heads * d * h + 3 * h * cfg.intermediate_size
    linear = cfg.num_hidden_layers * per_layer + cfg.vocab_size * h
    attention = cfg.num_hidden_layers * heads * 2 * (2 * seq_len * d)
    forward = 2 * linear + attention
    return {"forward": forward, "backward": 2 * forward, "total": 3 * forward}


def variant(kind: str, vocab: int = VOCAB, **overrides) -> StratifiedConfig:
    return stratified_preset(f"stratified-{kind}-tiny", vocab, **overrides)


@pytest.mark.parametrize(("vocab", "overrides"), [(VOCAB, {}), (300, {"num_key_value_heads": 2, "intermediate_size": 100})])
def test_dense_flops_equal_the_hand_count(vocab, overrides):
    cfg = variant("none", vocab, **overrides)
    for seq_len in (SEQ, 57):
        assert training_flops_per_token(cfg, seq_len) == pytest.approx(hand_flops(cfg, seq_len), rel=1e-12)


def test_match_flops_is_within_its_bound_for_every_variant():
    base = variant("none")
    slope = 18 * base.hidden_size * base.num_hidden_layers  # training FLOPs/token per unit of FFN width
    for kind in VARIANTS:
        target = training_flops_per_token(variant(kind), SEQ)["total"]
        dense = match_flops(base, variant(kind), SEQ)
        assert dense.stratified_type == "none" and dense.intermediate_size > base.intermediate_size, kind
        got = hand_flops(dense, SEQ)["total"]
        assert abs(got - target) <= slope / 2, (kind, got, target)
        for width in (dense.intermediate_size - 1, dense.intermediate_size + 1):  # no neighbour is closer
            other = hand_flops(StratifiedConfig(**{**dense.to_dict(), "intermediate_size": width}), SEQ)["total"]
            assert abs(other - target) >= abs(got - target), (kind, width)
    assert base.intermediate_size == 176 and base.stratified_type == "none"  # the input is left as it was


def test_flops_are_deterministic_and_leave_the_global_rng_alone():
    cfg = variant("moe")
    torch.manual_seed(7)
    state = torch.get_rng_state()
    first = training_flops_per_token(cfg, SEQ)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(8)
    assert training_flops_per_token(cfg, SEQ) == first
    domain = training_flops_per_token(variant("routing", stratum_source="domain"), SEQ)  # needs stratum_ids
    assert domain == training_flops_per_token(variant("routing", stratum_source="hash"), SEQ)


def _plan(**flags) -> StratifiedConfig:
    max_length = flags.pop("max_length", None)
    return plan_model(ModelArguments(model="stratified-none-tiny", **flags), VOCAB, TOKENIZER, None,
                      max_length=max_length).config


def test_match_params_to_matches_each_variants_parameter_count():
    assert _plan(match_params=True).intermediate_size == _plan(match_params=True, match_params_to="routing")\
        .intermediate_size  # the default target is unchanged
    for kind in VARIANTS:
        dense = _plan(match_params=True, match_params_to=kind)
        target = count_parameters(variant(kind))["total"]
        bound = 1.5 * dense.hidden_size * dense.num_hidden_layers  # match_params' bound
        assert dense.stratified_type == "none"
        assert abs(count_parameters(dense)["total"] - target) < bound, kind


def test_match_flops_of_matches_each_variants_flops_at_max_length():
    for kind in VARIANTS:
        dense = _plan(match_flops_of=kind, max_length=SEQ)
        target = training_flops_per_token(variant(kind), SEQ)["total"]
        assert dense.stratified_type == "none"
        assert abs(hand_flops(dense, SEQ)["total"] - target) <= 9 * dense.hidden_size * dense.num_hidden_layers
    with pytest.raises(StrataError, match="--max_length"):
        _plan(match_flops_of="moe")  # a caller that does not pass the sequence length


M = ["--model", "stratified-none-tiny"]
REFUSALS = [
    (["--match_params_to", "moe"], "add --match_params or drop it"),
    ([*M, "--match_params", "--match_params_to", "warp"], "--match_params_to 'warp' is not one of attention"),
    ([*M, "--match_flops_of", "warp"], "--match_flops_of 'warp' is not one of attention, routing, layers, moe"),
    ([*M, "--match_params", "--match_flops_of", "moe"], "two different dense controls"),
    (["--match_flops_of", "moe"], "use it with --stratified_type none"),  # FAST's llama-tiny
    (["--model", "stratified-routing-tiny", "--match_flops_of", "moe"], "use it with --stratified_type none"),
    ([*M, "--stratified_type", "layers", "--match_flops_of", "moe"], "use it with --stratified_type none"),
    (["--mode", "rl", *M, "--match_flops_of", "moe"], "--match_flops_of is not used by --mode rl"),
]


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size if p.is_file() else -1)
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize(("args", "fragment"), REFUSALS, ids=[" ".join(a) for a, _ in REFUSALS])
def test_impossible_matching_flags_are_refused_in_one_line(tmp_path, capsys, monkeypatch, args, fragment):
    monkeypatch.chdir(tmp_path)
    before = _snapshot(tmp_path)
    capsys.readouterr()
    code = main(["train", *FAST, "--max_steps", "2", "--runs_dir", str(tmp_path / "runs"), *args])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: ") and fragment in lines[0], lines[0]
    assert _snapshot(tmp_path) == before
