"""The model flags of ``strata train`` / ``strata eval`` (``--model``, ``--init``, LoRA, attention, precision, ...).

They live beside the code that reads them so that ``strata.models`` never imports ``strata.config`` (the layer
above it); ``strata.config`` re-exports ``ModelArguments`` for the parser.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_MODEL = "strata-tiny"
__all__ = ["DEFAULT_MODEL", "ModelArguments"]


@dataclass
class ModelArguments:
    """Which model, how it is built and loaded, and what it computes in."""

    model: str = field(
        default=DEFAULT_MODEL,
        metadata={"help": "Preset name (see `strata models`), local path, mirror id or hub id."},
    )
    init: str = field(
        default="auto",
        metadata={"help": "pretrained | scratch | auto (presets: scratch; otherwise pretrained)."},
    )
    tokenizer: str | None = field(default=None, metadata={"help": "Tokenizer path or id (default: the model's)."})
    train_tokenizer: str | None = field(
        default=None, metadata={"help": "Train a tokenizer on the training split, e.g. 'bpe:8192'."}
    )
    use_lora: bool = field(default=False, metadata={"help": "Train LoRA adapters (peft) instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.1, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["auto"], metadata={"help": "'auto' (all linear layers) or module names."}
    )
    merge_lora: bool = field(default=False, metadata={"help": "Also save the LoRA-merged model in merged/."})
    attn_implementation: str = field(
        default="auto", metadata={"help": "auto | eager | sdpa | flash_attention_2 (an error where flash-attention "
                                          "cannot run: no CUDA or no flash-attn)."}
    )
    use_flash_attention: bool = field(
        default=False, metadata={"help": "flash_attention_2 where it can run (CUDA + flash-attn); elsewhere one warning "
                                          "and sdpa (eager on MPS), recorded in metrics.json and TensorBoard."}
    )
    precision: str = field(
        default="auto", metadata={"help": "auto | bf16 | fp16 | fp32 (auto: bf16 on CUDA with bf16, else fp16; on CPU bf16 with AMX, else fp32). "
                                  "--fp16 / --bf16 are the same as --precision fp16 / bf16."}
    )
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute activations to save memory."})
    load_in_4bit: bool = field(default=False, metadata={
        "help": "Load pretrained weights in 4-bit NF4 (bitsandbytes, CUDA or CPU) and train --use_lora on top (QLoRA)."})
    load_in_8bit: bool = field(default=False, metadata={
        "help": "Load pretrained weights in 8-bit int8 (bitsandbytes, CUDA or CPU) and train --use_lora on top."})
    moe_load_in_4bit: bool = field(
        default=False, metadata={"help": "4-bit loading for an MoE model: the experts (fused 3-D ones too) "
                                          "quantized, routers and lm_head kept full precision; needs --use_lora."}
    )
    moe_load_in_8bit: bool = field(
        default=False, metadata={"help": "8-bit loading for an MoE model: the experts (fused 3-D ones too) "
                                          "quantized, routers and lm_head kept full precision; needs --use_lora."}
    )
    device: str = field(default="auto", metadata={"help": "auto | cuda | mps | cpu."})
    stratified_type: str | None = field(
        default=None,
        metadata={"help": "For stratified presets: none | attention | routing | layers | moe."},
    )
    stratum_source: str | None = field(
        default=None,
        metadata={"help": "For stratified presets: learned | clusters | lid_bins | domain | hash."},
    )
    match_params: bool = field(
        default=False,
        metadata={"help": "Widen a dense stratified baseline's FFN to match a variant's parameters "
                          "(--match_params_to, default routing)."},
    )
    match_params_to: str | None = field(
        default=None,
        metadata={"help": "With --match_params: the variant whose parameter count is matched: "
                          "attention | routing | layers | moe (default routing)."},
    )
    match_flops_of: str | None = field(
        default=None,
        metadata={"help": "Widen a dense stratified baseline's FFN so that its training FLOPs per token at "
                          "--max_length equal this variant's: attention | routing | layers | moe."},
    )
