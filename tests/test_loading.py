"""Decisions of the model loader checked against independent numbers: LoRA parameter counts by hand, and the
--use_packing refusal against the model class's own flag (the attention-interface contract)."""

from __future__ import annotations

import pytest
from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, BloomConfig, LlamaConfig

from strata.errors import StrataError
from strata.models.arguments import ModelArguments
from strata.models.loading import load_for_training
from strata.models.plan import check_architecture, config_from_flags


def test_lora_parameter_counts_match_a_hand_count(tmp_path):
    """A 2-layer Llama (hidden 64, MLP 128, 4 heads of 16, 2 KV heads), LoRA r=16 on every linear but lm_head."""
    LlamaConfig(vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, tie_word_embeddings=False).save_pretrained(tmp_path)
    args = ModelArguments(model=str(tmp_path), init="scratch", tokenizer="byte", use_lora=True, lora_r=16,
                          device="cpu", precision="fp32")
    loaded = load_for_training(args, None, log=lambda _line: None)
    # (in, out) of q, k, v, o, gate, up, down
    linears = [(64, 64), (64, 32), (64, 32), (64, 64), (64, 128), (64, 128), (128, 64)]
    lora = 2 * sum(16 * (fan_in + fan_out) for fan_in, fan_out in linears)
    per_layer = sum(fan_in * fan_out for fan_in, fan_out in linears) + 2 * 64  # + two RMSNorms
    base = 2 * 384 * 64 + 2 * per_layer + 64  # embeddings, lm_head, layers, final norm
    assert (loaded.total_params, loaded.trainable_params) == (base + lora, lora)


@pytest.mark.parametrize(("model", "packs"), [
    ("llama-tiny", True), ("gpt2-tiny", True), ("stratified-tiny", True),
    ("ttt-linear-tiny", False),  # a recurrent inner state: packed examples would see each other
    ("t5-tiny", False),  # an encoder-decoder: no causal packing
    ("bloom", False),  # alibi attention outside the attention interface
])
def test_packing_is_refused_exactly_where_the_class_is_not_backend_compatible(tmp_path, model, packs):
    if model == "bloom":
        BloomConfig(vocab_size=384, hidden_size=64, n_layer=2, n_head=4).save_pretrained(tmp_path)
        model = str(tmp_path)
    args = ModelArguments(model=model)
    config = config_from_flags(args, None)
    model_class = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)
    # The class's own flag, read directly (the transformers attribute behind is_backend_compatible()).
    assert bool(getattr(model_class, "_supports_attention_backend", False)) is packs
    check_architecture(args, None, use_packing=False)
    if packs:
        check_architecture(args, None, use_packing=True)
    else:
        with pytest.raises(StrataError, match="drop --use_packing"):
            check_architecture(args, None, use_packing=True)


def test_models_import_nothing_above_them():
    """Layers: strata.models may use strata.errors and strata.hub (below it), never config, data, training,
    evaluation, experiments or the CLI (configuration is passed down as values). Read from the sources' ASTs."""
    import ast
    from pathlib import Path

    import strata.models

    allowed = ("strata.models", "strata.errors", "strata.hub")
    found = []
    for path in Path(strata.models.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            found += [(path.name, n) for n in names if n.split(".")[0] == "strata" and not n.startswith(allowed)]
    assert found == []


def test_stratified_routers_import_siblings_not_their_package():
    """`from . import x` in routers.py runs the package __init__, which imports routers: a cycle."""
    import ast

    from strata.models.stratified import routers

    tree = ast.parse(open(routers.__file__).read())
    package_imports = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level and not n.module]
    assert package_imports == []
