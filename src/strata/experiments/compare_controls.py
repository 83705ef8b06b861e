"""Which matched controls a comparison trains: the ones that would not duplicate a model it already has.

Measured before training on the presets (parameters counted exactly, FLOPs with FlopCounterMode), so a
control that is only the baseline again (a variant within 2% of its parameters) or only the parameter-matched
control again (within 5% of the variant's FLOPs) costs no run, and the report says which and why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from strata.experiments.compare_arms import Arm

__all__ = ["FLOPS_TOLERANCE", "PARAMS_TOLERANCE", "keep_needed_controls"]

FLOPS_TOLERANCE = 0.05  # a parameter-matched control within 5% of its variant's FLOPs is its FLOPs match too
PARAMS_TOLERANCE = 0.02  # a variant within 2% of the baseline's parameters has the baseline as its matched control


def keep_needed_controls(arms: list[Arm], size: str, base: Any) -> tuple[list[Arm], dict[str, Any]]:
    """Drop the matched controls that would train a model the comparison already has, and say why:

    - ``dense_matched_<v>`` when variant v has within 2% of the baseline's parameters (the baseline is then its
      parameter-matched control);
    - ``flops_matched_<v>`` when ``dense_matched_<v>`` (or, per the rule above, the baseline) already computes
      v's training FLOPs per token within 5%.

    Measured on the presets at --max_length with the trained tokenizer's vocabulary when one is trained (else 256:
    a smaller shared LM head only makes relative differences larger, so the rule errs towards training a control).
    """
    if not any(a.name.startswith(("flops_matched_", "dense_matched_")) for a in arms):
        return arms, {}
    from strata.models.stratified import STRATIFIED_PRESETS
    from strata.models.stratified.flops import training_flops_per_token
    from strata.models.stratified.parameters import count_parameters, match_params

    vocab = _vocab_size(base)
    seq = base.data.max_length
    dense = STRATIFIED_PRESETS[f"stratified-none-{size}"](vocab)
    dense_params = count_parameters(dense)["total"]
    info: dict[str, Any] = {}
    for variant in {a.name.split("_matched_", 1)[1] for a in arms if "_matched_" in a.name}:
        target = STRATIFIED_PRESETS[f"stratified-{variant}-{size}"](vocab)
        params = count_parameters(target)["total"]
        params_gap = (params - dense_params) / dense_params
        matched = dense if abs(params_gap) <= PARAMS_TOLERANCE else match_params(dense, target)
        want = training_flops_per_token(target, seq)["total"]
        got = training_flops_per_token(matched, seq)["total"]
        info[variant] = {"variant_parameters": params, "baseline_parameters": dense_params,
                         "parameter_gap": params_gap, "dense_matched_trained": abs(params_gap) > PARAMS_TOLERANCE,
                         "variant_flops_per_token": want, "param_matched_flops_per_token": got,
                         "relative_gap": (got - want) / want, "flops_control_trained": abs(got - want) / want
                         > FLOPS_TOLERANCE, "vocab": vocab, "seq_len": seq}
    kept = []
    for arm in arms:
        kind, _, variant = arm.name.partition("_matched_")
        if kind == "dense" and not info[variant]["dense_matched_trained"]:
            continue
        if kind == "flops" and not info[variant]["flops_control_trained"]:
            continue
        kept.append(arm)
    return kept, info


def _vocab_size(base: Any) -> int:
    """The vocabulary the runs will have: bpe:N, a local tokenizer folder's size, else 256 (byte-level)."""
    spec = base.model.train_tokenizer or ""
    if spec.startswith("bpe:"):
        return int(spec.split(":", 1)[1])
    if base.model.tokenizer and Path(base.model.tokenizer).is_dir():
        from transformers import AutoTokenizer

        return len(AutoTokenizer.from_pretrained(base.model.tokenizer))
    return 256
