"""Saved models reload exactly: final/, base_model/ and merged/ give, in a process that cannot import strata
(transformers/peft alone), the logits of the model object training finished with; two loads agree; a copied
run folder loads; `strata eval` scores the trained model.

The reference logits are taken in this process from the trainer's own model, just before save_final runs
(a spy wraps it), so nothing is compared against what the saving code wrote.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import FAST, metrics, only_run, run_strata
from safetensors.torch import load_file

import strata.training.rl as rl_module
import strata.training.run as run_module

IDS = [[5, 17, 42, 99, 7, 3, 250, 11, 64, 120]]
DECODER_IDS = [[0, 33, 81, 6, 12]]
TOL = 1e-6
LORA = ["--use_lora", "--lora_r", "4", "--lora_alpha", "16"]

# Runs in a fresh interpreter where `import strata` fails: only transformers and peft load the folders.
LOADER = r"""
import sys
sys.modules["strata"] = None
import json, torch
import peft
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

spec = json.loads(sys.argv[1])
seq2seq = spec["kind"] == "seq2seq"
auto = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
auto_peft = peft.AutoPeftModelForSeq2SeqLM if seq2seq else peft.AutoPeftModelForCausalLM

def load(how, path):
    if how == "transformers":
        return auto.from_pretrained(path)
    if how == "auto_peft":
        return auto_peft.from_pretrained(path)
    base, adapters = path
    return peft.PeftModel.from_pretrained(auto.from_pretrained(base), adapters)

def logits(model):
    model.eval()
    with torch.no_grad():
        ids = torch.tensor(spec["ids"])
        if seq2seq:
            return model(input_ids=ids, decoder_input_ids=torch.tensor(spec["decoder_ids"])).logits
        return model(input_ids=ids).logits

out = {}
for name, (how, path) in spec["loads"].items():
    first, second = load(how, path), load(how, path)
    a, b = first.state_dict(), second.state_dict()
    assert a.keys() == b.keys()
    out[name] = {"logits": logits(first),
                 "two_loads_diff": max(float((a[k].float() - b[k].float()).abs().max()) for k in a)}
assert not [m for m, mod in sys.modules.items() if m.split(".")[0] == "strata" and mod is not None]
torch.save(out, spec["out"])
"""


def _logits(model, kind: str) -> torch.Tensor:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        ids = torch.tensor(IDS, device=model.device)
        if kind == "seq2seq":
            out = model(input_ids=ids, decoder_input_ids=torch.tensor(DECODER_IDS, device=model.device)).logits
        else:
            out = model(input_ids=ids).logits
    model.train(was_training)
    return out.detach().cpu().float()


def train_and_capture(monkeypatch: pytest.MonkeyPatch, *args: str) -> dict:
    """Train through the CLI; return the logits of the trained model (and of its base, adapters off)."""
    seen: dict = {}
    original = run_module.save_final

    def spy(trainer, loaded, folder, model_args, **kwargs):
        model = trainer.accelerator.unwrap_model(trainer.model)
        seen["kind"] = loaded.kind
        seen["logits"] = _logits(model, loaded.kind)
        if model_args.use_lora:
            with model.disable_adapter():  # peft's own switch: the base the adapters sit on
                seen["base_logits"] = _logits(model, loaded.kind)
        if model_args.merge_lora:  # peft's merge of a copy: what merged/ should hold
            seen["merged_logits"] = _logits(copy.deepcopy(model).merge_and_unload(), loaded.kind)
        return original(trainer, loaded, folder, model_args, **kwargs)

    monkeypatch.setattr(run_module, "save_final", spy)
    monkeypatch.setattr(rl_module, "save_final", spy)  # the RL recipe imports save_final from training/finalize.py
    assert run_strata("train", *args) == 0
    assert "logits" in seen
    return seen


def load_without_strata(kind: str, loads: dict[str, tuple[str, object]], cwd: Path, out: Path) -> dict:
    spec = {"kind": kind, "ids": IDS, "decoder_ids": DECODER_IDS, "out": str(out),
            "loads": {name: (how, [str(p) for p in path] if isinstance(path, tuple) else str(path))
                      for name, (how, path) in loads.items()}}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", LOADER, json.dumps(spec)], cwd=cwd, capture_output=True,
                          text=True, env={**env, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out)


def diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max())


def assert_exact(result: dict, name: str, expected: torch.Tensor) -> None:
    got = result[name]
    assert got["two_loads_diff"] == 0.0, (name, got["two_loads_diff"])
    assert diff(got["logits"], expected) <= TOL, (name, diff(got["logits"], expected))


def assert_merged(result: dict, seen: dict) -> None:
    """merged/ is exactly peft's merge of the trained model, which differs from the unmerged model only by
    fp32 rounding of W + BA (measured: 3e-7 for llama-tiny, 2e-7 gpt2-tiny, 1.5e-5 t5-tiny at logits ~36)."""
    assert_exact(result, "merged", seen["merged_logits"])
    scale = max(1.0, float(seen["logits"].abs().max()))
    assert diff(result["merged"]["logits"], seen["logits"]) <= TOL * scale


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> tuple[Path, dict]:
    """One scratch llama-tiny LoRA run with --merge_lora, shared by the tests below (training is the cost)."""
    runs = tmp_path_factory.mktemp("lora") / "runs"
    with pytest.MonkeyPatch.context() as mp:
        seen = train_and_capture(mp, *FAST, "--max_steps", "3", *LORA, "--merge_lora", "--runs_dir", runs)
    return only_run(runs), seen


@pytest.mark.parametrize("preset", ["llama-tiny", "gpt2-tiny"])
def test_full_finetune_final_reloads_exactly(tmp_path, monkeypatch, preset):
    runs = tmp_path / "runs"
    fast = [a if a != "llama-tiny" else preset for a in FAST]
    seen = train_and_capture(monkeypatch, *fast, "--max_steps", "3", "--max_eval_examples", "4", "--runs_dir", runs)
    run = only_run(runs)
    result = load_without_strata("causal", {"final": ("transformers", run / "final")}, tmp_path, tmp_path / "o.pt")
    assert_exact(result, "final", seen["logits"])


def test_lora_base_is_unwrapped_unmerged_and_all_folders_reload_exactly(lora_run, tmp_path):
    run, seen = lora_run
    # base_model/ holds plain transformers names: exactly those of a fresh model of this config.
    from transformers import AutoConfig, AutoModelForCausalLM

    fresh = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(run / "base_model"))
    saved = load_file(str(run / "base_model" / "model.safetensors"))
    expected_names = set(fresh.state_dict()) - {"lm_head.weight"} if fresh.config.tie_word_embeddings \
        else set(fresh.state_dict())
    assert set(saved) == expected_names, sorted(set(saved) ^ expected_names)[:6]
    assert json.loads((run / "final" / "adapter_config.json").read_text())["base_model_name_or_path"] \
        == "../base_model"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = load_without_strata("causal", {
        "peft": ("peft", (run / "base_model", run / "final")),
        "base": ("transformers", run / "base_model"),
        "merged": ("transformers", run / "merged"),
    }, elsewhere, tmp_path / "o.pt")
    assert_exact(result, "peft", seen["logits"])
    assert_merged(result, seen)
    # The base alone is the model with adapters switched off: unmerged, and not re-initialised.
    assert_exact(result, "base", seen["base_logits"])
    assert diff(seen["logits"], seen["base_logits"]) > 1e-4  # the adapters did train (the check can fail)
    # From inside final/, peft's own auto class follows the relative reference.
    result = load_without_strata("causal", {"auto_peft": ("auto_peft", run / "final")}, run / "final",
                                 tmp_path / "o2.pt")
    assert_exact(result, "auto_peft", seen["logits"])


def test_copied_run_folder_loads_and_strata_resolves_the_base_from_anywhere(lora_run, tmp_path, monkeypatch):
    from strata.models.loading import load_trained

    run, seen = lora_run
    copy = tmp_path / "moved" / "myrun"
    shutil.copytree(run, copy)
    hidden = run.with_name(run.name + ".away")
    run.rename(hidden)  # the original is gone while the copy loads
    try:
        result = load_without_strata("causal", {
            "auto_peft": ("auto_peft", Path(".")),
            "peft": ("peft", (copy / "base_model", copy / "final")),
        }, copy / "final", tmp_path / "o.pt")
        assert_exact(result, "auto_peft", seen["logits"])
        assert_exact(result, "peft", seen["logits"])
        monkeypatch.chdir(tmp_path)
        for target in (copy / "final", Path("moved/myrun/final")):
            model, _ = load_trained(str(target), device="cpu")
            assert diff(_logits(model, "causal"), seen["logits"]) <= TOL
    finally:
        hidden.rename(run)


def test_strata_eval_on_a_lora_run_scores_the_trained_model(lora_run, capsys):
    run, _ = lora_run
    trained = metrics(run)["task_eval"]["synthetic-strata"]
    printed = []
    for _ in range(2):
        capsys.readouterr()
        assert run_strata("eval", run) == 0
        printed.append(json.loads(capsys.readouterr().out))
    assert printed[0] == printed[1]
    numbers = {k: v for k, v in trained.items() if isinstance(v, (int, float))}
    assert {"accuracy", "accuracy_norm", "macro_f1"} <= numbers.keys()
    for key, value in numbers.items():
        assert printed[0][key] == pytest.approx(value, abs=1e-9), key


@pytest.mark.parametrize("preset", ["gpt2-tiny", "t5-tiny"])
def test_lora_final_and_merged_reload_exactly_for_other_architectures(tmp_path, monkeypatch, preset):
    from strata.models.loading import load_trained

    runs = tmp_path / "runs"
    fast = [a if a != "llama-tiny" else preset for a in FAST]
    seen = train_and_capture(monkeypatch, *fast, "--max_steps", "3", "--max_eval_examples", "4", *LORA,
                             "--merge_lora", "--runs_dir", runs)
    run = only_run(runs)
    assert seen["kind"] == ("seq2seq" if preset == "t5-tiny" else "causal")
    result = load_without_strata(seen["kind"], {"peft": ("peft", (run / "base_model", run / "final")),
                                                "base": ("transformers", run / "base_model"),
                                                "merged": ("transformers", run / "merged")},
                                 tmp_path, tmp_path / "o.pt")
    assert_exact(result, "peft", seen["logits"])
    assert_exact(result, "base", seen["base_logits"])
    assert_merged(result, seen)
    model, _ = load_trained(str(run / "final"), device="cpu")
    assert diff(_logits(model, seen["kind"]), seen["logits"]) <= TOL


def test_rl_lora_final_reloads_exactly(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    seen = train_and_capture(monkeypatch, "--mode", "rl", "--model", "llama-tiny", *LORA, "--max_steps", "2",
                             "--per_device_train_batch_size", "2", "--max_completion_length", "8",
                             "--max_prompt_length", "96", "--max_eval_examples", "2", "--eval_steps", "0",
                             "--precision", "fp32", "--runs_dir", runs)
    run = only_run(runs)
    result = load_without_strata("causal", {"peft": ("peft", (run / "base_model", run / "final")),
                                            "base": ("transformers", run / "base_model")},
                                 tmp_path, tmp_path / "o.pt")
    assert_exact(result, "peft", seen["logits"])
    assert_exact(result, "base", seen["base_logits"])


def test_lora_on_a_mirrored_model_names_the_id_not_the_mirror_path(tmp_path, monkeypatch):
    """--init pretrained from a mirror: the adapter keeps the hub id, which strata resolves via the mirror."""
    from transformers import ByT5Tokenizer, LlamaConfig, LlamaForCausalLM

    from strata.models.loading import load_trained

    mirror = tmp_path / "mirror"
    base_dir = mirror / "models" / "acme" / "tiny-llama"
    tokenizer = ByT5Tokenizer()
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                 )).save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    fast = [a if a != "llama-tiny" else "acme/tiny-llama" for a in FAST]
    runs = tmp_path / "runs"
    seen = train_and_capture(monkeypatch, *fast, "--max_steps", "3", *LORA, "--hub_mirror", mirror,
                             "--runs_dir", runs)
    run = only_run(runs)
    assert not (run / "base_model").exists()  # a pretrained base is not copied into the run
    config = json.loads((run / "final" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "acme/tiny-llama"
    assert str(mirror) not in (run / "final" / "README.md").read_text()
    result = load_without_strata("causal", {"peft": ("peft", (base_dir, run / "final"))}, tmp_path,
                                 tmp_path / "o.pt")
    assert_exact(result, "peft", seen["logits"])
    model, _ = load_trained(str(run / "final"), mirror=str(mirror), device="cpu")
    assert diff(_logits(model, "causal"), seen["logits"]) <= TOL


def test_a_base_model_with_peft_wrapped_names_is_refused(tmp_path, capsys):
    """A run folder as older strata wrote it (base_model/ saved from the wrapped model) fails with one line
    instead of evaluating a model whose base layers transformers re-initialised at random."""
    from peft import LoraConfig, get_peft_model
    from transformers import ByT5Tokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = ByT5Tokenizer()
    model = get_peft_model(LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32,
                                                        intermediate_size=64, num_hidden_layers=1,
                                                        num_attention_heads=2)),
                           LoraConfig(r=2, target_modules=["q_proj"]))
    run = tmp_path / "old-run"
    model.get_base_model().save_pretrained(run / "base_model")
    model.peft_config["default"].base_model_name_or_path = str(run / "base_model")
    model.save_pretrained(run / "final")
    tokenizer.save_pretrained(run / "final")
    before = sorted((p, p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
    capsys.readouterr()
    assert run_strata("eval", run) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "peft-wrapped" in lines[0] and "base_layer" in lines[0], lines
    assert sorted((p, p.stat().st_mtime_ns) for p in tmp_path.rglob("*")) == before
