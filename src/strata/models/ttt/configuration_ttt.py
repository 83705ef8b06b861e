"""Configuration of the TTT language models (Sun et al., 2024, "Learning to (Learn at Test Time)").

Field names and meanings follow the official ``TTTConfig`` of ``test-time-training/ttt-lm-pytorch`` so that a
``config.json`` written by the official code loads unchanged (see ``tests/test_ttt.py``).
"""

from __future__ import annotations

from transformers import PreTrainedConfig

TTT_LAYER_TYPES = ("linear", "mlp")


class TTTConfig(PreTrainedConfig):
    r"""Configuration of a [`TTTModel`] / [`TTTForCausalLM`].

    Args:
        vocab_size (`int`): size of the token vocabulary.
        hidden_size (`int`): model width C.
        intermediate_size (`int`): width of the SwiGLU feed-forward block.
        num_hidden_layers (`int`): number of blocks.
        num_attention_heads (`int`): number of TTT heads; each head has its own inner model of width C / heads.
        hidden_act (`str`): kept for compatibility; the feed-forward block is always SwiGLU (SiLU gate).
        max_position_embeddings (`int`): informational only: RoPE positions restart every mini-batch.
        initializer_range (`float`): std of the normal init of linear and embedding weights.
        rms_norm_eps (`float`): epsilon of the RMSNorms.
        use_cache (`bool`): whether `forward` returns a [`TTTCache`] by default (outside training).
        pretraining_tp (`int`): kept for compatibility with official configs; must be 1.
        tie_word_embeddings (`bool`): share the input embedding with the LM head.
        rope_theta (`float`): RoPE base. RoPE is applied to Q and K with position `t mod mini_batch_size`.
        use_gate (`bool`): Mamba backbone: multiply the TTT output by `gelu_tanh(g_proj(x))`.
        share_qk (`bool`): Mamba backbone: one Q projection, then two causal depthwise convolutions give Q and K.
        ttt_layer_type (`str`): inner model, `"linear"` (TTT-Linear) or `"mlp"` (TTT-MLP, hidden 4 x head_dim).
        ttt_base_lr (`float`): base inner learning rate (paper: 1.0 for Linear, 0.1 for MLP).
        mini_batch_size (`int`): TTT mini-batch size K (paper: 16).
        pre_conv (`bool`): Mamba backbone: a residual causal depthwise convolution before each TTT layer.
        conv_kernel (`int`): kernel size of those convolutions.
        scan_checkpoint_group_size (`int`): in training, recompute the inner loop in groups of this many
            mini-batches during the backward pass (0 = store everything).
    """

    model_type = "ttt"

    vocab_size: int = 32000
    hidden_size: int = 2048
    intermediate_size: int = 5504
    num_hidden_layers: int = 24
    num_attention_heads: int = 32
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pretraining_tp: int = 1
    tie_word_embeddings: bool = True
    rope_theta: float = 10000.0
    use_gate: bool = False
    share_qk: bool = False
    ttt_layer_type: str = "linear"
    ttt_base_lr: float = 1.0
    mini_batch_size: int = 16
    pre_conv: bool = False
    conv_kernel: int = 4
    scan_checkpoint_group_size: int = 0

    def __post_init__(self, **kwargs):
        if self.ttt_layer_type not in TTT_LAYER_TYPES:
            raise ValueError(f"ttt_layer_type must be one of {TTT_LAYER_TYPES}, got {self.ttt_layer_type!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be divisible by num_attention_heads")
        if (self.hidden_size // self.num_attention_heads) % 2:
            raise ValueError("the head dimension must be even (RoPE rotates pairs of features)")
        if self.pretraining_tp != 1:
            raise ValueError("pretraining_tp > 1 is not supported")
        if self.mini_batch_size < 1 or self.conv_kernel < 1:
            raise ValueError("mini_batch_size and conv_kernel must be positive")
        super().__post_init__(**kwargs)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


__all__ = ["TTTConfig"]


# Saving a TTTConfig writes this file and `auto_map` next to it (portable checkpoints, see modeling_ttt.py).
TTTConfig.register_for_auto_class()
