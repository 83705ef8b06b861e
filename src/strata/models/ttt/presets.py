"""Named TTT configurations at the paper's sizes (configs only, no weights).

Sizes follow the official ``TTT_STANDARD_CONFIGS`` (125m, 350m, 760m, 1b; the paper calls the last one 1.3B):
mini-batch 16, inner base learning rate 1.0 for TTT-Linear and 0.1 for TTT-MLP. ``backbone="mamba"`` switches on
the Mamba-style backbone of the paper (pre-convolution, shared QK with convolutions, output gate).
"""

from __future__ import annotations

from collections.abc import Callable

from .configuration_ttt import TTTConfig

# name -> (hidden, intermediate, layers, heads), as the official TTT_STANDARD_CONFIGS
TTT_SIZES: dict[str, tuple[int, int, int, int]] = {
    "125m": (768, 2048, 12, 12),
    "350m": (1024, 2736, 24, 16),
    "760m": (1536, 4096, 24, 16),
    "1.3b": (2048, 5504, 24, 32),
    "tiny": (64, 128, 2, 4),  # for tests
}
TTT_BASE_LR = {"linear": 1.0, "mlp": 0.1}
BACKBONES = ("transformer", "mamba")


def _make(layer_type: str, size: str) -> Callable[..., TTTConfig]:
    hidden, intermediate, layers, heads = TTT_SIZES[size]

    def make(vocab_size: int, backbone: str = "transformer", **overrides) -> TTTConfig:
        """Build the config; ``overrides`` replace any TTTConfig field."""
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
        mamba = backbone == "mamba"
        values = dict(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=intermediate,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            ttt_layer_type=layer_type,
            ttt_base_lr=TTT_BASE_LR[layer_type],
            mini_batch_size=16,
            max_position_embeddings=2048,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            pre_conv=mamba,
            share_qk=mamba,
            use_gate=mamba,
            conv_kernel=4,
        )
        values.update(overrides)
        return TTTConfig(**values)

    make.__name__ = f"ttt_{layer_type}_{size}"
    make.__doc__ = (
        f"TTT-{layer_type.upper() if layer_type == 'mlp' else 'Linear'} {size}: hidden {hidden}, "
        f"{layers} layers, {heads} heads, SwiGLU {intermediate}."
    )
    return make


TTT_PRESETS: dict[str, Callable[..., TTTConfig]] = {
    f"ttt-{layer_type}-{size}": _make(layer_type, size)
    for layer_type in ("linear", "mlp")
    for size in TTT_SIZES
}

__all__ = ["TTT_PRESETS", "TTT_SIZES"]
