"""What the report reads from one finished run: its metrics.json summary and its router diagnostics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from strata.experiments.compare_protocol import transfer_metrics

__all__ = ["heldout_floor", "heldout_name", "run_diagnostics", "run_summary", "summarise_diagnostics"]


def heldout_name(tag: str) -> str:
    return f"{tag} (held out)"


def heldout_floor(folder: Path) -> dict[str, Any]:
    """Floor entries for the held-out source of one run: the majority class of its evaluation split.

    No training row of that domain exists, so the domain-only rule has nothing to count; this floor reads the
    held-out labels themselves (an oracle prior, stricter than the training-row floor). Its macro-F1 is that of
    always predicting the majority class: F1 = 2p / (1 + p) on that class, 0 on the other K - 1.
    """
    record = json.loads((folder / "transfer.json").read_text()) if (folder / "transfer.json").is_file() else {}
    out = {}
    for tag, m in record.get("task_eval", {}).items():
        p, k = float(m["majority_baseline"]), max(1, len(m.get("label_names") or []))
        out[heldout_name(tag)] = {"accuracy": p, "macro_f1": 2 * p / (1 + p) / k, "n": m.get("n"),
                                  "predicted": {"(held-out split)": "its majority class"}}
    return out


def run_summary(folder: Path) -> dict[str, Any]:
    """The numbers the report needs from one run folder's metrics.json."""
    metrics = json.loads((folder / "metrics.json").read_text())
    task = metrics.get("task_eval", {})
    per_source = {tag: {"accuracy": m.get("accuracy"), "macro_f1": m.get("macro_f1"), "n": m.get("n")}
                  for tag, m in task.items()}
    subdomains = {f"{tag}/{d}": {"accuracy": v.get("accuracy"), "macro_f1": v.get("macro_f1"), "n": v.get("n")}
                  for tag, m in task.items() for d, v in (m.get("per_domain") or {}).items()}
    mean = {k: sum(v[k] for v in per_source.values()) / max(1, len(per_source)) for k in ("accuracy", "macro_f1")}
    # A held-out source (--holdout) is one more column, after "overall" is taken over the trained sources.
    for tag, m in (transfer_metrics(folder) or {}).items():
        per_source[heldout_name(tag)] = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "n": m["n"]}
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



PLANTED = "synthetic:"  # domain prefix of the planted-strata rows (strata/synthetic-strata)


def run_diagnostics(folder: Path, examples: Any, per_source: int, max_length: int, device: str) -> dict[str, Any]:
    """Router diagnostics of one trained model on the evaluation prompts (tokens labelled by domain), and again
    on the planted-strata rows alone (``planted``: labelled by the planted stratum, the known truth)."""
    from strata.models.loading import load_trained

    model, tokenizer = load_trained(str(folder / "final"), device=device)
    if getattr(model.config, "model_type", "") != "stratified":
        return {}
    rows: dict[str, list[str]] = {"prompt": [], "completion": [], "domain": []}
    planted: dict[str, list[str]] = {"prompt": [], "completion": [], "domain": []}
    for source in examples.evals:
        head = source.dataset.select(range(min(per_source, len(source.dataset))))
        for key in rows:
            rows[key] += [str(v) for v in head[key]]
        if any(str(d).startswith(PLANTED) for d in source.dataset["domain"][:1]):
            part = source.dataset.select(range(min(4 * per_source, len(source.dataset))))
            for key in planted:
                planted[key] += [str(v) for v in part[key]]
    diag = _diagnose(model, tokenizer, rows, max_length)
    if planted["prompt"]:
        diag["planted"] = _diagnose(model, tokenizer, planted, max_length)
    return diag


def _diagnose(model: Any, tokenizer: Any, rows: dict[str, list[str]], max_length: int) -> dict[str, Any]:
    import torch

    from strata.data.encoding import causal_row, decoder_context, encode_texts, special_tokens
    from strata.evaluation.model_io import pad_batch, pad_id
    from strata.experiments.diagnostics import collect_router_stats, routing_diagnostics

    names = sorted(set(rows["domain"]))
    ids = [names.index(d) for d in rows["domain"]]
    # The very rows training built (strata.data.encoding): prompt, completion, EOS; prompt cut from the left.
    specials = special_tokens(tokenizer)
    rows_ids = []
    for p, c in zip(encode_texts(tokenizer, rows["prompt"]), encode_texts(tokenizer, rows["completion"])):
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
    """Per run: router and k-means NMI / purity vs domain, averaged over layers, with the best layer's p; the
    same over the planted-strata rows as ``planted_*``."""
    out = _summarise_layers(diag)
    if diag.get("planted"):
        out.update({f"planted_{k}": v for k, v in _summarise_layers(diag["planted"]).items()})
    return out


def _summarise_layers(diag: dict[str, Any]) -> dict[str, float]:
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

