"""Stratum sources through `strata train`: clusters / lid_bins are fitted before step 1 and saved with the model;
domain ids come from each example's dataset; runs that cannot feed them are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import FAST, only_run, run_strata
from safetensors.torch import load_file

import strata.training.run as run_module
from strata.data.synthetic import build_splits
from strata.models.stratified import StratifiedModel, routers

STRATIFIED = [a if a != "llama-tiny" else "stratified-routing-tiny" for a in FAST]
MIXTURE = ["--datasets", "synthetic", "rotten_tomatoes", "--mixture_rates", "0.5", "0.5"]


def _layer_inputs(model, batch: dict[str, torch.Tensor]) -> list[np.ndarray]:
    """The post-attention RMSNorm output (what a routing variant's source reads) of every non-padded token."""
    seen: list[torch.Tensor] = []
    hooks = [layer.post_attention_layernorm.register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
             for layer in model.model.layers]
    with torch.no_grad():
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    for hook in hooks:
        hook.remove()
    mask = batch["attention_mask"].bool()
    return [h[mask].double().numpy() for h in seen]


def _strata(model, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_router_logits=True,
                    use_cache=False)
    mask = batch["attention_mask"].bool()
    return [probs.argmax(-1)[mask] for probs in out.stratum_probs]


def _distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Exact Euclidean distances [N, M] from explicit differences (float64, in chunks to bound memory)."""
    return np.concatenate([np.sqrt(((x[i:i + 256, None, :] - y[None]) ** 2).sum(-1)) for i in range(0, len(x), 256)])


def _numpy_lid(x: np.ndarray, reference: np.ndarray, k: int) -> np.ndarray:
    """Levina-Bickel MLE with the (k - 2) correction; reference points at distance <= 1e-6 are the query itself."""
    d = _distances(x, reference)
    d[d <= 1e-6] = np.inf
    t = np.sort(d, axis=1)[:, :k]
    return (k - 2) / np.log(t[:, -1:] / t[:, :-1]).sum(1)


def _numpy_strata(source: str, x: np.ndarray, saved: dict[str, np.ndarray], k: int) -> np.ndarray:
    if source == "clusters":
        c = saved["centroids"]
        return _distances(x, c).argmin(1)
    return np.searchsorted(saved["bin_edges"], _numpy_lid(x, saved["reference"], k), side="left")


@pytest.mark.parametrize("source", ["clusters", "lid_bins"])
def test_fitted_sources_are_fitted_before_training_and_reload_identically(tmp_path, monkeypatch, source):
    fitting_states: list[list[np.ndarray]] = []
    capture = routers.capture_router_inputs

    def record_fit(*args, **kwargs):
        layers, masks = capture(*args, **kwargs)
        fitting_states.append([x.astype(np.float64) for x in layers])
        return layers, masks

    trained: dict[str, object] = {}
    save_final = run_module.save_final

    def record_final(trainer, loaded, folder, model_args, **kwargs):
        model = trainer.accelerator.unwrap_model(trainer.model).eval()
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
        trained.update(batch=batch, strata=_strata(model, batch))
        save_final(trainer, loaded, folder, model_args, **kwargs)

    monkeypatch.setattr(routers, "capture_router_inputs", record_fit)
    monkeypatch.setattr(run_module, "save_final", record_final)
    runs = tmp_path / "runs"
    assert run_strata("train", *STRATIFIED, "--stratum_source", source, "--max_steps", "2", "--runs_dir", runs) == 0
    assert len(fitting_states) == 1  # fitted once, before training
    final = only_run(runs) / "final"

    from transformers import AutoModelForCausalLM

    from strata.models import register_strata_models

    register_strata_models()
    reloaded = AutoModelForCausalLM.from_pretrained(final).eval()
    assert reloaded.config.stratum_source == source
    weights = load_file(str(final / "model.safetensors"))
    batch = trained["batch"]
    states = _layer_inputs(reloaded, batch)
    for i, layer in enumerate(reloaded.model.layers):
        prefix = f"model.layers.{i}.stratum_source."
        saved = {k[len(prefix):]: v.double().numpy() for k, v in weights.items() if k.startswith(prefix)}
        assert bool(saved["fitted"]) and bool(layer.stratum_source.fitted)
        for name, value in saved.items():  # from_pretrained kept the fitted buffers (no re-initialisation)
            np.testing.assert_array_equal(getattr(layer.stratum_source, name).double().numpy(), value)
        mine = _strata(reloaded, batch)[i]
        assert torch.equal(mine, trained["strata"][i])  # final/ assigns what the trained model assigned
        assert len(set(mine.tolist())) > 1, f"layer {i}: every training token in one stratum"
        expected = _numpy_strata(source, states[i], saved, reloaded.config.lid_k)
        assert (mine.numpy() == expected).mean() >= 0.99  # numpy from the saved buffers (ties aside)

        x = fitting_states[0][i]  # the step-0 states the source was fitted on (all of them: <= 8192 tokens)
        if source == "clusters":  # k-means converged: every centroid is the mean of the points nearest to it
            labels = _distances(x, saved["centroids"]).argmin(1)
            assert len(set(labels.tolist())) == reloaded.config.num_strata
            for j, centroid in enumerate(saved["centroids"]):
                np.testing.assert_allclose(x[labels == j].mean(0), centroid, atol=1e-4)
        else:  # the reference set is drawn from those states; the edges are quartiles of their LID
            gaps = _distances(x, saved["reference"]).min(0)  # each reference point to its nearest state
            assert gaps.max() < 1e-5
            lid = _numpy_lid(x, saved["reference"], reloaded.config.lid_k)
            np.testing.assert_allclose(saved["bin_edges"], np.quantile(lid, [0.25, 0.5, 0.75]), rtol=1e-4)


def test_domain_strata_are_the_examples_datasets(tmp_path, monkeypatch, hub_mirror):
    calls: list[dict[str, torch.Tensor | None]] = []
    forward = StratifiedModel.forward

    def spy(self, *args, **kwargs):
        calls.append({**{k: kwargs.get(k) for k in ("input_ids", "attention_mask", "stratum_ids")},
                      "training": self.training})
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(StratifiedModel, "forward", spy)
    runs = tmp_path / "runs"
    assert run_strata("train", *STRATIFIED, *MIXTURE, "--stratum_source", "domain", "--max_steps", "3",
                      "--runs_dir", runs) == 0
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(only_run(runs) / "final")
    # Independent of the pipeline: the review of each row is a piece of exactly one source's raw texts (the
    # synthetic corpus's splits or the RT files); left truncation may have cut the prompt's start.
    rt_files = hub_mirror / "datasets" / "cornell-movie-review-data" / "rotten_tomatoes"
    raw = {0: [row["text"] for split in build_splits().values() for row in split],
           1: [json.loads(line)["text"] for split in ("train", "validation")
               for line in (rt_files / f"{split}.jsonl").read_text().split("\n") if line]}
    blobs = {s: " | ".join(" ".join(t.split()) for t in texts) for s, texts in raw.items()}
    seen = {(training, source): 0 for training in (True, False) for source in (0, 1)}
    for call in calls:
        assert call["stratum_ids"] is not None  # every forward (train, eval loss, task eval) got its strata
        ids = torch.as_tensor(call["stratum_ids"]).reshape(-1)
        mask = call["attention_mask"]
        assert len(ids) == len(call["input_ids"])
        if mask is not None and mask.shape[-1] != call["input_ids"].shape[-1]:
            continue  # label tokens fed after a cached context (fast scoring): no review text to match
        for row, source in enumerate(ids.tolist()):
            tokens = call["input_ids"][row]
            tokens = tokens[mask[row].bool()] if mask is not None else tokens
            text = tokenizer.decode(tokens)
            review = text.split("\nSentiment:")[0].split(": ", 1)[-1]  # after "Review: " / "Text: " if kept
            review = " ".join(review.split())
            assert len(review) >= 20, text
            found = [s for s, blob in blobs.items() if review in blob]
            assert found == [source], (source, text)
            seen[call["training"], source] += 1
    assert min(seen.values()) > 0, seen  # both sources, in training batches and in the task evaluation


@pytest.mark.parametrize("source, extra, words", [
    ("domain", [], ("single dataset", "--datasets")),
    ("domain", [*MIXTURE, "--use_packing"], ("--use_packing",)),
    ("domain", [*MIXTURE, "--mode", "pretrain"], ("--mode pretrain", "--mode sft")),
    ("domain", [*MIXTURE, "--mode", "rl"], ("--mode rl", "--mode sft")),
    ("clusters", ["--mode", "rl"], ("--mode rl", "final/")),
])
def test_sources_a_run_cannot_feed_are_refused(tmp_path, capsys, source, extra, words):
    runs = tmp_path / "runs"
    base = STRATIFIED
    if "rl" in extra:  # drop FAST's flags RL does not use (flag_usage refuses them first)
        unused = {"--learning_rate", "--warmup_steps", "--max_length"}
        base = [a for i, a in enumerate(STRATIFIED) if a not in unused and STRATIFIED[i - 1] not in unused]
    assert run_strata("train", *base, *extra, "--stratum_source", source, "--max_steps", "2",
                      "--runs_dir", runs) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(w in err[0] for w in words), err
    assert "is not used by --mode" not in err[0]  # the stratum check itself refused it
    assert not runs.exists()  # refused before anything is written


def test_stratified_flags_on_a_model_folder_rebuild_scratch_or_are_refused(tmp_path, capsys):
    """--stratum_source with --model <folder>: applied to a config built from scratch, refused over trained weights
    (before, only presets applied it and a folder silently kept its own)."""
    assert run_strata("train", *STRATIFIED, "--max_steps", "1", "--runs_dir", tmp_path / "a") == 0
    final = only_run(tmp_path / "a") / "final"
    assert json.loads((final / "config.json").read_text())["stratum_source"] != "hash"
    common = [a for a in STRATIFIED if a not in ("--model", "stratified-routing-tiny")]
    capsys.readouterr()
    code = run_strata("train", *common, "--model", final, "--stratum_source", "hash", "--max_steps", "1",
                      "--runs_dir", tmp_path / "b")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "were trained with stratum_source=" in lines[0], lines
    assert not (tmp_path / "b").exists()
    assert run_strata("train", *common, "--model", final, "--init", "scratch", "--stratum_source", "hash",
                      "--max_steps", "1", "--runs_dir", tmp_path / "c") == 0
    rebuilt = json.loads((only_run(tmp_path / "c") / "final" / "config.json").read_text())
    assert rebuilt["stratum_source"] == "hash"
