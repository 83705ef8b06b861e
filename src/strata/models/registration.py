"""Register Strata's own architectures with the transformers Auto classes.

After ``register_strata_models()``, ``AutoConfig``/``AutoModelForCausalLM`` know ``ttt`` and
``stratified``, so ``from_pretrained`` on a saved run folder works like any hub model.
"""

from __future__ import annotations

_registered = False


def register_strata_models() -> None:
    """Idempotently register every Strata architecture with the Auto classes."""
    global _registered
    if _registered:
        return
    from transformers import AutoConfig, AutoModelForCausalLM

    from strata.models.stratified import StratifiedConfig, StratifiedForCausalLM
    from strata.models.ttt import TTTConfig, TTTForCausalLM

    for config_cls, model_cls in ((TTTConfig, TTTForCausalLM), (StratifiedConfig, StratifiedForCausalLM)):
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
        AutoModelForCausalLM.register(config_cls, model_cls, exist_ok=True)
    _registered = True
