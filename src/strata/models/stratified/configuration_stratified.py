"""Configuration of the stratified decoder family.

One config class covers the dense baseline (``stratified_type="none"``) and the four stratified variants, so a
saved run always says exactly which mechanism and which stratum source it used.
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

STRATIFIED_TYPES = ("none", "attention", "routing", "layers", "moe")
STRATUM_SOURCES = ("learned", "clusters", "lid_bins", "domain", "hash")
ROUTER_MODES = ("soft", "top1")


@strict
class StratifiedConfig(PreTrainedConfig):
    r"""
    Llama-style decoder (RMSNorm, RoPE, SwiGLU, causal SDPA attention) with an optional stratum mechanism inside
    every block. Each mechanism adds to the residual stream through a zero-initialised projection, so a freshly
    built variant computes exactly the same function as the ``"none"`` baseline with the same backbone weights.

    Args:
        stratified_type (`str`, defaults to `"none"`):
            `"none"` (dense baseline), `"attention"` (stratum-specific head gating), `"routing"` (one SwiGLU path
            per stratum), `"layers"` (per-stratum processing strategy of different width, incl. skip) or `"moe"`
            (mixture of experts whose expert router is conditioned on the stratum).
        num_strata (`int`, defaults to 4): number of strata S.
        stratum_source (`str`, defaults to `"learned"`):
            where a token's stratum comes from: `"learned"` (per-layer linear router with load-balancing and
            z-losses), `"clusters"` (k-means centroids fitted on baseline hidden states, stored as a buffer),
            `"lid_bins"` (bins of a per-token local-intrinsic-dimension estimate against a stored reference set),
            `"domain"` (forward kwarg `stratum_ids`, an oracle upper bound) or `"hash"` (token-id hash, the
            negative control).
        router_mode (`str`, defaults to `"soft"`): `"soft"` mixes paths with the router probabilities; `"top1"`
            uses the arg-max path in the forward pass and a straight-through gradient to the probabilities.
        router_temperature (`float`, defaults to 1.0): softmax temperature of the learned stratum router.
        stratum_intermediate_size (`int`, *optional*): width of each stratum FFN (`"routing"`); defaults to
            `intermediate_size // num_strata`.
        layer_strategy_widths (`list[int]`, *optional*): FFN width of each strategy (`"layers"`), 0 meaning skip;
            defaults to `[0, I/4, I/2, I]`-style halving widths with strategy 0 = skip.
        num_experts (`int`, defaults to 4), num_experts_per_tok (`int`, defaults to 2),
        moe_intermediate_size (`int`, *optional*, defaults to `intermediate_size // 2`): the `"moe"` experts.
        aux_loss_coef (`float`, defaults to 0.01): `loss = lm_loss + aux_loss_coef * aux_loss`.
        z_loss_weight (`float`, defaults to 0.1): weight of the router z-loss relative to the balance loss inside
            `aux_loss` (0.1 x 0.01 = 1e-3 effective, the ST-MoE value).
        lid_k (`int`, defaults to 16), lid_reference_size (`int`, defaults to 256): the `"lid_bins"` estimator.
        disabled_strata (`list[int]`, *optional*): strata whose path is switched off at forward time (ablations).
        stratified_init_seed (`int`, defaults to 0): the stratum modules are initialised from their own generator,
            so a variant built under the same global seed as a baseline gets the *same* backbone weights.
        output_router_logits (`bool`, defaults to `False`): return router outputs by default.
    """

    model_type = "stratified"
    keys_to_ignore_at_inference = [
        "cache",
        "aux_loss",
        "router_logits",
        "stratum_probs",
        "expert_router_logits",
    ]

    vocab_size: int = 256
    hidden_size: int = 64
    intermediate_size: int = 176
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 512
    initializer_range: float | int = 0.02
    rms_norm_eps: float | int = 1e-6
    rope_theta: float | int = 10000.0
    attention_dropout: float | int = 0.0
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    tie_word_embeddings: bool = False

    stratified_type: str = "none"
    num_strata: int = 4
    stratum_source: str = "learned"
    router_mode: str = "soft"
    router_temperature: float | int = 1.0
    stratum_intermediate_size: int | None = None
    layer_strategy_widths: list[int] | None = None
    num_experts: int = 4
    num_experts_per_tok: int = 2
    moe_intermediate_size: int | None = None
    aux_loss_coef: float | int = 0.01
    z_loss_weight: float | int = 0.1
    lid_k: int = 16
    lid_reference_size: int = 256
    disabled_strata: list[int] | None = None
    stratified_init_seed: int = 0
    output_router_logits: bool = False

    def __post_init__(self, **kwargs):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.stratum_intermediate_size is None:
            self.stratum_intermediate_size = max(1, self.intermediate_size // self.num_strata)
        if self.moe_intermediate_size is None:
            self.moe_intermediate_size = max(1, self.intermediate_size // 2)
        if self.layer_strategy_widths is None:
            # strategy 0 skips, then widths halve from the full baseline width: S=4 -> [0, I/4, I/2, I]
            self.layer_strategy_widths = [0] + [
                max(1, self.intermediate_size // 2 ** (self.num_strata - 1 - s))
                for s in range(1, self.num_strata)
            ]
        self.layer_strategy_widths = [int(w) for w in self.layer_strategy_widths]
        if self.disabled_strata is not None:
            self.disabled_strata = [int(s) for s in self.disabled_strata]
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Called by the `@strict` dataclass validation: fail early on inconsistent settings."""
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size {self.hidden_size} not divisible by {self.num_attention_heads} heads"
            )
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        if self.stratified_type not in STRATIFIED_TYPES:
            raise ValueError(
                f"stratified_type must be one of {STRATIFIED_TYPES}, got {self.stratified_type!r}"
            )
        if self.stratum_source not in STRATUM_SOURCES:
            raise ValueError(f"stratum_source must be one of {STRATUM_SOURCES}, got {self.stratum_source!r}")
        if self.router_mode not in ROUTER_MODES:
            raise ValueError(f"router_mode must be one of {ROUTER_MODES}, got {self.router_mode!r}")
        if self.num_strata < 1:
            raise ValueError("num_strata must be >= 1")
        if len(self.layer_strategy_widths) != self.num_strata:
            raise ValueError("layer_strategy_widths needs one width per stratum")
        if not 1 <= self.num_experts_per_tok <= self.num_experts:
            raise ValueError("need 1 <= num_experts_per_tok <= num_experts")
        if self.stratum_source == "lid_bins" and self.lid_k < 3:
            raise ValueError("lid_k must be >= 3 for the bias-corrected MLE")


__all__ = ["StratifiedConfig", "STRATIFIED_TYPES", "STRATUM_SOURCES", "ROUTER_MODES"]


# Saving a StratifiedConfig writes this file and `auto_map` next to it (portable checkpoints, see
# modeling_stratified.py).
StratifiedConfig.register_for_auto_class()
