"""Stratified-manifold decoders: a Llama-style baseline and four stratum mechanisms behind one switch.

See docs/stratified.md for the design choices and what the stratum sources mean.
"""

from strata.models.stratified.configuration_stratified import StratifiedConfig
from strata.models.stratified.modeling_stratified import (
    StratifiedCausalLMOutputWithPast,
    StratifiedForCausalLM,
    StratifiedModel,
    StratifiedPreTrainedModel,
    count_parameters,
    match_params,
    parameter_report,
)
from strata.models.stratified.presets import STRATIFIED_PRESETS, stratified_preset
from strata.models.stratified.routers import fit_stratum_sources

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
    "parameter_report",
    "fit_stratum_sources",
]
