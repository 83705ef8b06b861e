"""4/8-bit loading through bitsandbytes on a CPU, and QLoRA on top.

Tiny Llama and Mixtral (hidden 64) are saved with save_pretrained, loaded through Strata's loader, and checked
against the saved fp32 weights: every quantized weight within the format's rounding bound (computed here from the
NF4 code table / int8 scale, not by bitsandbytes), the quantized forward equal to an fp32 forward of the same
dequantized weights, routers and the LM head bit-identical to the checkpoint, the printed size against the bytes
the loaded tensors really hold, and QLoRA steps that move only the adapters.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch
from helpers import metrics, only_run, run_strata
from torch import nn
from torch.nn.utils import parametrize
from transformers import AutoModelForCausalLM, LlamaConfig, MixtralConfig

from strata.config import ModelArguments
from strata.models.loading import load_for_training

bnb = pytest.importorskip("bitsandbytes")

VOCAB = 384  # the byte-level tokenizer's size: the saved models have no tokenizer files
# NF4 rounds to the nearest of 16 code values scaled by each 64-weight block's absmax. The widest gap between
# neighbouring codes is -1.0 -> -0.6961928 (QLoRA paper, appendix E), so no weight moves by more than half of it.
NF4_MAX_ERROR = (1.0 - 0.6961928009986877) / 2
CASES = [("llama", "load_in_4bit"), ("llama", "load_in_8bit"), ("mixtral", "moe_load_in_4bit"),
         ("mixtral", "moe_load_in_8bit")]
FAST_DATA = ["--max_length", "96", "--per_device_train_batch_size", "4", "--max_eval_examples", "12",
             "--eval_steps", "0", "--warmup_steps", "0", "--precision", "fp32", "--learning_rate", "3e-3",
             "--device", "cpu"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("tiny-models")
    shared = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    configs = {"llama": LlamaConfig(**shared),
               "mixtral": MixtralConfig(**shared, num_local_experts=4, num_experts_per_tok=2)}
    paths = {}
    for name, config in configs.items():
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(root / name)
        paths[name] = root / name
    # A bf16 checkpoint loads and trains the same way (leftovers upcast to fp32, experts in the compute dtype).
    AutoModelForCausalLM.from_pretrained(root / "mixtral", dtype=torch.bfloat16).save_pretrained(root / "mixtral-bf16")
    paths["mixtral-bf16"] = root / "mixtral-bf16"
    return paths


def reference(path) -> nn.Module:
    return AutoModelForCausalLM.from_pretrained(path).train()  # fp32, the saved weights as they are


def load(path, flag: str, log=None):
    args = ModelArguments(model=str(path), use_lora=True, lora_dropout=0.0, device="cpu", precision="fp32",
                          **{flag: True})
    return load_for_training(args, None, log=log or (lambda _line: None))


def unwrap(module: nn.Module) -> nn.Module:
    return getattr(module, "base_layer", module)  # under a peft LoRA layer


def dequantized(module: nn.Module) -> torch.Tensor:
    """The weight a bnb linear computes with; int8 from its own scales (CB * SCB / 127), 4-bit by bitsandbytes
    (checked against the NF4 rounding bound below)."""
    weight = module.weight
    if isinstance(module, bnb.nn.Linear8bitLt):
        return weight.data.float() * weight.SCB.float()[:, None] / 127
    return bnb.functional.dequantize_4bit(weight.data, weight.quant_state).float()


def check_rounding(original: torch.Tensor, rounded: torch.Tensor, bits: int) -> None:
    """|error| within the format's bound, and the values really take the format's few levels."""
    if bits == 4:
        blocks, got = original.reshape(-1, 64), rounded.reshape(-1, 64)
        bound = blocks.abs().amax(dim=1, keepdim=True) * NF4_MAX_ERROR
        assert max(len(torch.unique(row)) for row in got) <= 16
    else:
        blocks, got = original.reshape(-1, original.shape[-1]), rounded.reshape(-1, original.shape[-1])
        # Row-wise absmax int8; bitsandbytes quantizes linears from an fp16 copy, so the value and the scale each
        # carry fp16's relative rounding (2^-11) besides the half step.
        absmax = blocks.abs().amax(dim=1, keepdim=True)
        bound = absmax / 127 / 2 + absmax * 2 * 2**-11
    assert ((got - blocks).abs() <= bound * 1.001 + 1e-7).all()
    assert not torch.equal(got, blocks)


def quantized_targets(reference_model: nn.Module, base: nn.Module, mixtral: bool):
    """(name, original weight, dequantized weight) of every weight that must be quantized."""
    names = [name for name, m in reference_model.named_modules() if type(m) is nn.Linear and name != "lm_head"]
    for name in names:
        yield name, reference_model.get_submodule(name).weight.detach(), dequantized(unwrap(base.get_submodule(name)))
    if mixtral:
        for layer in range(2):
            experts = unwrap(base.get_submodule(f"model.layers.{layer}.mlp.experts"))
            for param in ("gate_up_proj", "down_proj"):
                original = getattr(reference_model.get_submodule(f"model.layers.{layer}.mlp.experts"), param)
                yield f"layer {layer} {param}", original.detach(), getattr(experts, param).detach().float()


@pytest.mark.parametrize(("name", "flag"), CASES)
def test_quantized_layers_are_bitsandbytes_and_heads_stay_full_precision(saved, name, flag):
    bits = 4 if flag.endswith("4bit") else 8
    ref = reference(saved[name])
    loaded = load(saved[name], flag)
    base = loaded.model.get_base_model()
    linear_class = bnb.nn.Linear4bit if bits == 4 else bnb.nn.Linear8bitLt
    projections = [n for n, m in ref.named_modules() if type(m) is nn.Linear and n != "lm_head"]
    assert projections and all(isinstance(unwrap(base.get_submodule(n)), linear_class) for n in projections)
    head = base.get_submodule("lm_head")
    assert type(head) is nn.Linear and head.weight.dtype == torch.float32
    assert torch.equal(head.weight, ref.lm_head.weight)
    if name == "mixtral":
        storage = torch.uint8 if bits == 4 else torch.int8
        for layer in range(2):
            router = unwrap(base.get_submodule(f"model.layers.{layer}.mlp.gate"))
            assert type(router).__name__ == "MixtralTopKRouter"  # transformers 5: a router module, not a Linear
            assert router.weight.dtype == torch.float32
            assert torch.equal(router.weight, ref.get_submodule(f"model.layers.{layer}.mlp.gate").weight)
            experts = unwrap(base.get_submodule(f"model.layers.{layer}.mlp.experts"))
            for param in ("gate_up_proj", "down_proj"):
                assert parametrize.is_parametrized(experts, param)
                assert experts.parametrizations[param].original.dtype == storage
    for _label, original, rounded in quantized_targets(ref, base, name == "mixtral"):
        check_rounding(original, rounded, bits)
    assert loaded.quantization is not None and loaded.quantization.bits == bits
    assert loaded.quantization.compute_dtype == torch.float32  # fp32 precision on this CPU: fp32 matmuls
    # Parameter counts count weights, not packed bytes: the base's count is the checkpoint's.
    lora = sum(p.numel() for n, p in loaded.model.named_parameters() if "lora_" in n)
    assert loaded.total_params == sum(p.numel() for p in ref.parameters()) + lora
    assert loaded.trainable_params == lora


@pytest.mark.parametrize(("name", "flag"), CASES)
def test_quantized_forward_is_the_fp32_forward_of_the_rounded_weights(saved, name, flag):
    """Second code path: a plain fp32 model carrying the dequantized weights must give the same logits; and the
    rounding moves the logits by about what NF4/int8 rounding should (4-bit ~10% relative on these random
    Gaussian weights, 8-bit ~1-2%; a mis-scaled or transposed weight gives ~100%)."""
    ref = reference(saved[name])
    loaded = load(saved[name], flag)
    base = loaded.model.get_base_model().train()
    rounded = reference(saved[name])
    with torch.no_grad():
        for label, _original, weight in quantized_targets(ref, base, name == "mixtral"):
            if label.startswith("layer"):
                layer, param = int(label.split()[1]), label.split()[2]
                getattr(rounded.get_submodule(f"model.layers.{layer}.mlp.experts"), param).copy_(weight)
            else:
                rounded.get_submodule(label).weight.copy_(weight)
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), loaded.model.disable_adapter():
        quantized = loaded.model(input_ids=ids).logits
        same_weights = rounded(input_ids=ids).logits
        original = ref(input_ids=ids).logits
    torch.testing.assert_close(quantized, same_weights, atol=2e-5, rtol=1e-4)
    relative = float((quantized - original).norm() / original.norm())
    assert relative < (0.2 if flag.endswith("4bit") else 0.05), relative


def measured_bytes(model: nn.Module) -> tuple[int, int]:
    """(parameters + buffers, the same plus bitsandbytes' statistics) of the base weights, LoRA excluded."""
    plain = stats = 0
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if "lora_" in name:
            continue
        plain += tensor.numel() * tensor.element_size()
        state = getattr(tensor, "quant_state", None)
        if state is not None:
            stats += state.absmax.numel() * state.absmax.element_size()
        scb = getattr(tensor, "SCB", None)
        if scb is not None:
            stats += scb.numel() * scb.element_size()
    for module in model.modules():
        if parametrize.is_parametrized(module):
            for plist in module.parametrizations.values():
                state = getattr(plist[0], "quant_state", None)
                if state is not None:
                    stats += state.absmax.numel() * state.absmax.element_size()
    return plain, plain + stats


@pytest.mark.parametrize(("name", "flag"), [*CASES, ("mixtral", "load_in_4bit")])
def test_printed_size_is_within_20_percent_of_the_loaded_bytes(saved, name, flag):
    lines: list[str] = []
    loaded = load(saved[name], flag, log=lines.append)
    printed = re.search(r"as loaded \(.*\): ([0-9.]+) MiB of weights", lines[0])
    assert printed, lines[0]
    estimate = float(printed.group(1)) * 2**20
    plain, with_stats = measured_bytes(loaded.model)
    assert abs(estimate - with_stats) <= 0.2 * with_stats, (estimate, with_stats)
    assert abs(estimate - plain) <= 0.2 * plain, (estimate, plain)
    fp32 = sum(p.numel() for p in reference(saved[name]).parameters()) * 4
    assert with_stats < 0.6 * fp32  # the experts too: left in fp32 they would be most of a Mixtral


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize(("name", "flag"), [("llama", "load_in_4bit"), ("llama", "load_in_8bit"),
                                            ("mixtral", "moe_load_in_4bit"), ("mixtral-bf16", "moe_load_in_8bit")])
def test_qlora_steps_move_only_lora_and_lower_the_loss(saved, name, flag):
    loaded = load(saved[name], flag)
    model = loaded.model.train()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    before = snapshot(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(0, VOCAB, (4, 24), generator=torch.Generator().manual_seed(2))
    losses = []
    for _ in range(6):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    after = snapshot(model)
    assert losses[-1] < losses[0] - 0.05, losses
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k for k in changed), sorted(changed)[:5]
    assert any("lora_B" in k for k in changed)


def test_an_evaluation_pass_does_not_change_later_training_gradients(saved):
    """bitsandbytes repacks 4-bit weights for a bf16 inference kernel on the first no-grad eval forward on
    AVX512-BF16 CPUs, after which training ran that kernel; the loader keeps the training path."""
    model = load(saved["llama"], "load_in_4bit").model
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1, generator=torch.Generator().manual_seed(3))
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(4))

    def gradients() -> dict[str, torch.Tensor]:
        model.train()
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    fresh = gradients()
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    after_eval = gradients()
    for name, grad in fresh.items():
        torch.testing.assert_close(after_eval[name], grad, atol=0, rtol=0)


@pytest.mark.parametrize(("name", "flag"), [("llama", "load_in_4bit"), ("mixtral", "moe_load_in_8bit")])
def test_gradient_checkpointing_gives_the_same_gradients(saved, name, flag):
    """Recomputing the quantized forward (experts dequantized again, the parametrization cache hooks run
    twice) must give the gradients of the plain backward, and leave torch's parametrize cache switched off."""
    grads = []
    for checkpointing in (False, True):
        args = ModelArguments(model=str(saved[name]), use_lora=True, lora_dropout=0.0, device="cpu",
                              precision="fp32", gradient_checkpointing=checkpointing, **{flag: True})
        model = load_for_training(args, None, log=lambda _line: None).model.train()
        with torch.no_grad():
            for param_name, param in model.named_parameters():
                if "lora_B" in param_name:
                    param.normal_(std=0.1, generator=torch.Generator().manual_seed(3))
        ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for key, grad in grads[0].items():
        torch.testing.assert_close(grads[1][key], grad, atol=1e-6, rtol=1e-5)
    assert parametrize._cache_enabled == 0


@pytest.mark.parametrize(("args", "fragment"), [
    (["--model", "llama-tiny", "--load_in_4bit", "--use_lora"],
     "--load_in_4bit quantizes pretrained weights; a model built from its config (scratch) has none to quantize"),
    (["--model", "{llama}", "--init", "scratch", "--load_in_8bit", "--use_lora"], "has none to quantize"),
    (["--model", "{llama}", "--moe_load_in_4bit", "--use_lora"], "is for MoE models"),
    (["--model", "{llama}", "--load_in_4bit"], "add --use_lora to train LoRA adapters on top (QLoRA)"),
    (["--model", "{llama}", "--load_in_4bit", "--use_lora", "--merge_lora"], "would merge the adapters into rounded"),
    # peft puts Mixtral's router under a ParamWrapper, which has no dropout (found at load, folder removed again)
    (["--model", "{mixtral}", "--moe_load_in_4bit", "--use_lora"], "pass --lora_dropout 0"),
])
def test_impossible_requests_are_one_line_and_create_nothing(saved, tmp_path, capsys, args, fragment):
    runs = tmp_path / "runs"
    args = [a.replace("{llama}", str(saved["llama"])).replace("{mixtral}", str(saved["mixtral"])) for a in args]
    assert run_strata("train", *args, *FAST_DATA, "--max_steps", "2", "--runs_dir", runs) == 2
    # (the last case loads weights first: transformers' progress bar is not a message)
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("Loading weights")]
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err
    assert not runs.exists() or not any(runs.iterdir())


RELOAD = r"""
import json, sys, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, BitsAndBytesConfig
final = sys.argv[1]
base_path = json.load(open(final + "/adapter_config.json"))["base_model_name_or_path"]
ids = torch.randint(0, 384, (2, 16), generator=torch.Generator().manual_seed(5))
def logits(model):
    torch.manual_seed(0)  # train mode applies LoRA dropout: the same masks on every side, not fresh noise
    with torch.no_grad():
        return model.train()(input_ids=ids).logits
quantized = AutoModelForCausalLM.from_pretrained(
    base_path, device_map={"": "cpu"},
    quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                           bnb_4bit_compute_dtype=torch.float32))
plain_base = logits(quantized)
adapted = logits(PeftModel.from_pretrained(quantized, final))
full = logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), final))
print(json.dumps({"strata_imported": any(m.split(".")[0] == "strata" for m in sys.modules),
                  "adapter_effect": float((adapted - plain_base).abs().max()),
                  "relative_to_fp32": float((adapted - full).norm() / full.norm())}))
"""


def test_cli_qlora_run_reloads_on_a_quantized_base_with_peft_alone(saved, tmp_path, capsys):
    runs = tmp_path / "runs"
    code = run_strata("train", "--model", saved["llama"], "--load_in_4bit", "--use_lora", "--max_steps", "3",
                      *FAST_DATA, "--runs_dir", runs)
    out = capsys.readouterr()
    assert code == 0, out.err[-2000:]
    assert "as loaded (4-bit NF4 (bitsandbytes), compute float32, lm_head full precision)" in out.out
    run = only_run(runs)
    record = metrics(run)["run"]
    assert record["quantization"]["bits"] == 4 and record["quantization"]["compute_dtype"] == "float32"
    assert record["train_rows"] > 0
    # A quantized pretrained base is the original weights: the adapter names that folder, nothing is copied.
    adapter = json.loads((run / "final" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(saved["llama"].resolve())
    assert not (run / "base_model").exists()
    # `strata eval RUN` scores the adapters on the base quantized as in training: the run's own numbers.
    assert run_strata("eval", run) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["accuracy"] == pytest.approx(metrics(run)["eval"]["eval_accuracy"], abs=1e-9)
    reloaded = subprocess.run([sys.executable, "-c", RELOAD, str(run / "final")], capture_output=True, text=True,
                              timeout=300, check=True)
    result = json.loads(reloaded.stdout.strip().splitlines()[-1])
    assert result["strata_imported"] is False
    assert result["adapter_effect"] > 1e-4  # the trained adapters are loaded and act
    assert result["relative_to_fp32"] < 0.2  # the same NF4 rounding bound as the forward test


def test_cli_moe_qlora_run_on_a_tiny_mixtral(saved, tmp_path, capsys):
    runs = tmp_path / "runs"
    code = run_strata("train", "--model", saved["mixtral"], "--moe_load_in_4bit", "--use_lora", "--lora_dropout", "0",
                      "--max_steps", "2", *FAST_DATA, "--runs_dir", runs)
    out = capsys.readouterr()
    assert code == 0, out.err[-2000:]
    assert "fused expert weights quantized" in out.out
    run = only_run(runs)
    record = metrics(run)["run"]["quantization"]
    assert record["bits"] == 4 and "routers and lm_head full precision" in record["description"]
    assert run_strata("eval", run) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["accuracy"] == pytest.approx(metrics(run)["eval"]["eval_accuracy"], abs=1e-9)


@pytest.mark.parametrize(("name", "flag"), CASES)
def test_parameter_counts_are_the_weights_held_not_the_packed_bytes(saved, name, flag):
    """Total = the fp32 checkpoint's weights + the adapters, whatever the storage. transformers' num_parameters()
    agrees except on the fused 3-D experts quantized outside bitsandbytes' linears: it counts their packed 4-bit
    storage (two weights per byte), half of them, which is why the loader adds them back."""
    loaded = load(saved[name], flag)
    ref = reference(saved[name])
    lora = sum(p.numel() for n, p in loaded.model.named_parameters() if "lora_" in n)
    expected = sum(p.numel() for p in ref.parameters()) + lora
    assert lora > 0
    assert (loaded.total_params, loaded.trainable_params) == (expected, lora)
    fused = sum(p.numel() for n, p in ref.named_parameters() if ".experts." in n and p.ndim == 3)
    halved = fused // 2 if flag == "moe_load_in_4bit" else 0
    assert loaded.model.num_parameters() == expected - halved
    assert (name == "mixtral") == (fused > 0)
