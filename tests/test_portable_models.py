"""TTT and stratified checkpoints load with plain transformers where Strata cannot be imported.

The saved folder carries its modeling code (``auto_map``); a subprocess started with ``python -I`` and a meta-path
finder that raises on any ``strata`` import loads it with ``AutoModelForCausalLM.from_pretrained(path,
trust_remote_code=True)``. References: the logits and the greedy ``pipeline`` text of the in-memory model that
was saved (this process, Strata's classes), or for a training run's ``final/`` the same folder loaded through
Strata's registered classes. Every parameter is perturbed before saving, so the zero-initialised stratum
mechanisms take part in the logits (at init they would equal the baseline's and prove nothing).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import only_run, run_strata
from transformers import AutoModelForCausalLM, ByT5Tokenizer, pipeline

from strata.models.stratified import StratifiedForCausalLM, fit_stratum_sources, stratified_preset
from strata.models.ttt import TTT_PRESETS, TTTForCausalLM

VOCAB = 384  # ByT5Tokenizer: 3 specials + 256 bytes + 125 extra ids
PROMPT = "Hello strata"

# The child process: block `strata`, load each folder through remote code, write logits and pipeline text.
CHILD = r"""
import importlib.abc, json, sys

class NoStrata(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "strata" or name.startswith("strata."):
            raise ImportError(f"strata must not be imported here (tried {name})")
        return None

sys.meta_path.insert(0, NoStrata())
try:
    import strata  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("the strata blocker does not work")

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

jobs = json.loads(open(sys.argv[1]).read())
results = {}
for name, job in jobs.items():
    model = AutoModelForCausalLM.from_pretrained(job["path"], trust_remote_code=True, dtype=torch.float32).eval()
    extra = {"stratum_ids": torch.tensor(job["stratum_ids"])} if job.get("stratum_ids") is not None else {}
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(job["input_ids"]), attention_mask=torch.tensor(job["attention_mask"]),
                       **extra).logits
    torch.save(logits, job["out"])
    text = None
    if job["pipeline"]:
        tok = AutoTokenizer.from_pretrained(job["path"], trust_remote_code=True)
        pipe = pipeline("text-generation", model=model, tokenizer=tok, trust_remote_code=True)
        text = pipe(job["prompt"], max_new_tokens=8, do_sample=False)[0]["generated_text"]
    results[name] = {"module": type(model).__module__, "text": text}
results["strata_modules"] = sorted(m for m in sys.modules if m == "strata" or m.startswith("strata."))
print("RESULTS " + json.dumps(results))
"""


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows of 37 tokens (not a multiple of TTT's mini-batch of 16); the second is left-padded by 5."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 259, (2, 37), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    return ids, mask


def _perturb(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def _greedy_text(model: torch.nn.Module, tok: ByT5Tokenizer) -> str:
    return pipeline("text-generation", model=model, tokenizer=tok)(PROMPT, max_new_tokens=8, do_sample=False)[0][
        "generated_text"
    ]


def _load_elsewhere(tmp_path: Path, jobs: dict[str, dict]) -> dict:
    spec = tmp_path / "jobs.json"
    spec.write_text(json.dumps(jobs))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "hf_modules"), TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, "-I", "-c", CHILD, str(spec)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")]
    assert lines, (proc.stdout[-2000:], proc.stderr[-2000:])
    line = lines[-1]
    return json.loads(line[len("RESULTS "):])


def _variants() -> dict[str, torch.nn.Module]:
    """Each model whose code path differs: TTT linear / MLP (Mamba backbone), every stratified mechanism, and
    the stratum sources with state of their own (learned router, fitted clusters and LID bins, hash, domain)."""
    torch.manual_seed(0)
    models: dict[str, torch.nn.Module] = {
        "ttt-linear": TTTForCausalLM(TTT_PRESETS["ttt-linear-tiny"](VOCAB)),
        "ttt-mlp-mamba": TTTForCausalLM(TTT_PRESETS["ttt-mlp-tiny"](VOCAB, backbone="mamba")),
    }
    for stratified_type, source in (("none", "learned"), ("attention", "learned"), ("routing", "clusters"),
                                    ("layers", "lid_bins"), ("moe", "hash"), ("routing", "domain")):
        cfg = stratified_preset(f"stratified-{stratified_type}-tiny", VOCAB, stratum_source=source)
        models[f"stratified-{stratified_type}-{source}"] = StratifiedForCausalLM(cfg)
    ids, mask = _inputs()
    for i, (name, model) in enumerate(models.items()):
        model.eval()
        if name.endswith(("clusters", "lid_bins")):
            g = torch.Generator().manual_seed(1)
            batches = [{"input_ids": torch.randint(3, 259, (4, 48), generator=g)} for _ in range(4)]
            assert fit_stratum_sources(model, batches)  # fitted: centroids / reference set and bin edges
        _perturb(model, seed=100 + i)
    return models


def test_saved_models_load_and_generate_without_strata(tmp_path):
    tok = ByT5Tokenizer()
    ids, mask = _inputs()
    domain = torch.tensor([1, 3])
    expected, jobs = {}, {}
    for name, model in _variants().items():
        path = tmp_path / name
        model.save_pretrained(path)
        tok.save_pretrained(path)
        config = json.loads((path / "config.json").read_text())
        assert set(config["auto_map"]) == {"AutoConfig", "AutoModelForCausalLM"}
        is_domain = name.endswith("domain")
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, **({"stratum_ids": domain} if is_domain else {})).logits
        # `domain` needs per-example ids that a pipeline cannot pass
        expected[name] = (logits, None if is_domain else _greedy_text(model, tok))
        jobs[name] = {"path": str(path), "input_ids": ids.tolist(), "attention_mask": mask.tolist(),
                      "stratum_ids": domain.tolist() if is_domain else None, "pipeline": not is_domain,
                      "prompt": PROMPT, "out": str(tmp_path / f"{name}.pt")}
    results = _load_elsewhere(tmp_path, jobs)
    assert results.pop("strata_modules") == []
    for name, (logits, text) in expected.items():
        assert results[name]["module"].startswith("transformers_modules."), (name, results[name]["module"])
        remote = torch.load(tmp_path / f"{name}.pt")
        assert remote.dtype == torch.float32
        assert float((remote - logits).abs().max()) <= 1e-6, name
        assert results[name]["text"] == text, name


@pytest.mark.parametrize("preset", ["ttt-mlp-tiny", "stratified-routing-tiny"])
def test_training_run_final_loads_without_strata(tmp_path, preset):
    runs = tmp_path / "runs"
    extra = ["--stratum_source", "clusters"] if preset.startswith("stratified") else []
    assert run_strata("train", "--model", preset, *extra, "--max_length", "64", "--per_device_train_batch_size", "4",
                      "--max_eval_examples", "4", "--eval_steps", "0", "--warmup_steps", "0", "--precision", "fp32",
                      "--max_steps", "2", "--runs_dir", runs) == 0
    final = only_run(runs) / "final"
    ids, mask = _inputs()
    strata_side = AutoModelForCausalLM.from_pretrained(final).eval()  # Strata's registered classes (import strata)
    assert type(strata_side).__module__.startswith("strata.models.")
    with torch.no_grad():
        logits = strata_side(input_ids=ids, attention_mask=mask).logits
    results = _load_elsewhere(tmp_path, {"final": {
        "path": str(final), "input_ids": ids.tolist(), "attention_mask": mask.tolist(), "stratum_ids": None,
        "pipeline": True, "prompt": PROMPT, "out": str(tmp_path / "final.pt")}})
    assert results["strata_modules"] == []
    assert results["final"]["module"].startswith("transformers_modules.")
    assert float((torch.load(tmp_path / "final.pt") - logits).abs().max()) <= 1e-6
    tok = ByT5Tokenizer.from_pretrained(final)
    assert results["final"]["text"] == _greedy_text(strata_side, tok)


REGISTERS = r"""
import os, sys
import strata
assert "torch" not in sys.modules and "transformers" not in sys.modules, "import strata must stay light"
exec(os.environ["FIRST_IMPORT"])
from transformers import AutoConfig, AutoModelForCausalLM
path = os.environ["CKPT"]
print(type(AutoConfig.from_pretrained(path)).__module__, type(AutoModelForCausalLM.from_pretrained(path)).__module__)
"""


@pytest.mark.parametrize("first_import", [
    "pass",
    "from transformers import LlamaForCausalLM",  # imports the Auto classes from a half-built modeling_layers
    "from strata.models.ttt import TTTForCausalLM",  # the hook fires while Strata's own package is half-built
    "from strata.models.stratified import routers",  # the other package, through its Strata-side module
    "from peft import LoraConfig",  # a third-party package that imports the Auto classes at its top
])
def test_import_strata_registers_the_model_types(tmp_path, first_import):
    """No `trust_remote_code`: `import strata` alone makes the Auto classes resolve to Strata's own classes."""
    path = tmp_path / "ttt"
    TTTForCausalLM(TTT_PRESETS["ttt-linear-tiny"](VOCAB)).save_pretrained(path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CKPT": str(path), "FIRST_IMPORT": first_import}
    proc = subprocess.run([sys.executable, "-c", REGISTERS], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-2:] == ["strata.models.ttt.configuration_ttt", "strata.models.ttt.modeling_ttt"]
