"""What the report reads from one finished run: its metrics.json summary and its router diagnostics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["run_diagnostics", "run_summary", "summarise_diagnostics"]


def run_summary(folder: Path) -> dict[str, Any]:
    """The numbers the report needs from one run folder's metrics.json."""
    metrics = json.loads((folder / "metrics.json").read_text())
    task = metrics.get("task_eval", {})
    per_source = {tag: {"accuracy": m.get("accuracy"), "macro_f1": m.get("macro_f1"), "n": m.get("n")}
                  for tag, m in task.items()}
    subdomains = {f"{tag}/{d}": {"accuracy": v.get("accuracy"), "macro_f1": v.get("macro_f1"), "n": v.get("n")}
                  for tag, m in task.items() for d, v in (m.get("per_domain") or {}).items()}
    mean = {k: sum(v[k] for v in per_source.values()) / max(1, len(per_source)) for k in ("accuracy", "macro_f1")}
    train = metrics.get("train", {})
    runtime = float(train.get("train_runtime") or 0.0)
    tokens = float(train.get("num_input_tokens_seen") or metrics.get("run", {}).get("token_budget") or 0)
    return {
        "per_source": per_source,
        "overall": mean,
        "subdomains": subdomains,
        "parameters": int(metrics.get("run", {}).get("total_parameters", 0)),
        "train_runtime": runtime,
        "tokens_seen": tokens,
        "tokens_per_second": tokens / runtime if runtime > 0 else float("nan"),
        "train_loss": train.get("train_loss"),
        "eval_loss": metrics.get("eval", {}).get("eval_loss"),
    }



def run_diagnostics(folder: Path, examples: Any, per_source: int, max_length: int, device: str) -> dict[str, Any]:
    """Router diagnostics of one trained model on the evaluation prompts (tokens labelled by domain)."""
    import torch

    from strata.data.encoding import causal_row, decoder_context, encode_texts, special_tokens
    from strata.evaluation.model_io import pad_batch, pad_id
    from strata.experiments.diagnostics import collect_router_stats, routing_diagnostics
    from strata.models.loading import load_trained

    model, tokenizer = load_trained(str(folder / "final"), device=device)
    if getattr(model.config, "model_type", "") != "stratified":
        return {}
    prompts, completions, domains = [], [], []
    for source in examples.evals:
        rows = source.dataset.select(range(min(per_source, len(source.dataset))))
        prompts += rows["prompt"]
        completions += rows["completion"]
        domains += [str(d) for d in rows["domain"]]
    names = sorted(set(domains))
    ids = [names.index(d) for d in domains]
    # The very rows training built (strata.data.encoding): prompt, completion, EOS; prompt cut from the left.
    specials = special_tokens(tokenizer)
    rows_ids = []
    for p, c in zip(encode_texts(tokenizer, prompts), encode_texts(tokenizer, completions)):
        row = causal_row(specials, p, c, max_length)
        rows_ids.append(row[0] if row is not None else decoder_context(specials, p, max_length))
    batches, domain_ids = [], []
    for start in range(0, len(rows_ids), 16):
        input_ids, mask, _ = pad_batch(rows_ids[start:start + 16], pad_id(tokenizer, model), "right")
        batches.append({"input_ids": input_ids, "attention_mask": mask})
        domain_ids.append(torch.tensor(ids[start:start + 16]))
    stats = collect_router_stats(model, batches, domain_ids=domain_ids)
    diag = routing_diagnostics(stats, n_permutations=100, max_points=1500)
    diag["domain_names"] = names
    return diag


def summarise_diagnostics(diag: dict[str, Any]) -> dict[str, float]:
    """Per run: router and k-means NMI / purity vs domain, averaged over layers, with the best layer's p."""
    import math

    layers = diag.get("layers") or []
    out: dict[str, float] = {}
    for key in ("router", "experts", "kmeans"):
        entries = [layer[key] for layer in layers if key in layer]
        if not entries:
            continue
        for metric in ("nmi", "purity"):
            values = [e.get(metric) for e in entries if isinstance(e.get(metric), (int, float))]
            nulls = [e.get(f"{metric}_null_mean") for e in entries if isinstance(e.get(f"{metric}_null_mean"), float)]
            if values:
                out[f"{key}_{metric}_mean"] = sum(values) / len(values)
                out[f"{key}_{metric}_max"] = max(values)
            if nulls:
                out[f"{key}_{metric}_null_mean"] = sum(nulls) / len(nulls)
        ps = [e.get("nmi_p_value") for e in entries if isinstance(e.get("nmi_p_value"), float)]
        if ps:
            out[f"{key}_nmi_p_min"] = min(ps)
        if key == "router":
            ent = [e.get("load_entropy_normalized") for e in entries]
            ent = [v for v in ent if isinstance(v, float) and math.isfinite(v)]
            if ent:
                out["router_load_entropy_mean"] = sum(ent) / len(ent)
    return out

