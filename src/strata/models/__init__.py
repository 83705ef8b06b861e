"""Models: loading, presets, and the research architectures (TTT, stratified)."""

from strata.models.registration import register_strata_models

__all__ = ["register_strata_models"]
