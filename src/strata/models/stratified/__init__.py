"""Stratified-manifold decoders: a Llama-style baseline and four stratum mechanisms behind one switch.

See docs/stratified.md for the design choices and what the stratum sources mean.
"""

from .configuration_stratified import StratifiedConfig
from .flops import match_flops, training_flops_per_token
from .modeling_stratified import (
    StratifiedCausalLMOutputWithPast,
    StratifiedForCausalLM,
    StratifiedModel,
    StratifiedPreTrainedModel,
)
from .parameters import count_parameters, match_params, parameter_report
from .presets import STRATIFIED_PRESETS, stratified_preset
from .routers import fit_stratum_sources

__all__ = [
    "StratifiedConfig",
    "StratifiedModel",
    "StratifiedForCausalLM",
    "StratifiedPreTrainedModel",
    "StratifiedCausalLMOutputWithPast",
    "STRATIFIED_PRESETS",
    "stratified_preset",
    "count_parameters",
    "match_params",
    "match_flops",
    "training_flops_per_token",
    "parameter_report",
    "fit_stratum_sources",
]
