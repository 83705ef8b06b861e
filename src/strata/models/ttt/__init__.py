"""TTT language models (Sun et al., 2024): TTT-Linear / TTT-MLP layers, checkpoint-compatible with the official code."""

from .configuration_ttt import TTTConfig
from .modeling_ttt import TTTCache, TTTForCausalLM, TTTModel, TTTPreTrainedModel
from .presets import TTT_PRESETS

__all__ = ["TTT_PRESETS", "TTTCache", "TTTConfig", "TTTForCausalLM", "TTTModel", "TTTPreTrainedModel"]
