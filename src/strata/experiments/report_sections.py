"""The protocol sections of results.md: learning-rate sweep, baseline gate, compute per arm, planted strata.

Kept apart from report.py (tables of the arms, tests, plots) because these sections describe how the
comparison was run and whether it may be read at all, and each is optional.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

__all__ = ["arm_flops", "gate_findings", "protocol_sections"]


def _num(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(float(value))


def arm_flops(folders: dict[str, str], seq_len: int) -> dict[str, dict[str, float]]:
    """Measured training FLOPs per token of each arm's trained model (its final/config.json) at ``seq_len``."""
    from strata.models.stratified import StratifiedConfig
    from strata.models.stratified.flops import training_flops_per_token

    out = {}
    for arm, folder in folders.items():
        config_path = Path(folder) / "final" / "config.json"
        if config_path.is_file():
            out[arm] = training_flops_per_token(StratifiedConfig.from_pretrained(config_path.parent), seq_len)
    return out


def gate_findings(results: dict[str, Any]) -> list[str]:
    gate = results.get("gate")
    if not gate:
        return []
    if gate["passed"]:
        worst = min(gate["per_source"].items(), key=lambda kv: kv[1]["margin_points"])
        return [f"Gate passed: the baseline's mean accuracy over {gate['seeds']} seeds beats the domain-only floor "
                f"by at least {gate['points']:g} points on every trained source (smallest margin: "
                f"{worst[0]}, {worst[1]['margin_points']:+.1f} points)."]
    failed = ", ".join(f"{t} ({gate['per_source'][t]['margin_points']:+.1f})" for t in gate["failed"])
    if results.get("stopped_at_gate"):
        return [f"Stopped at the gate: the baseline does not beat the domain-only floor by {gate['points']:g} points "
                f"on {failed}. No arm was compared: at this budget a difference between arms would measure noise "
                "around the label prior."]
    return [f"The gate failed on {failed} and was overridden with --no_gate: read the arm comparisons on those "
            "sources as comparisons of models that have not learned them."]


def _sweep(results: dict[str, Any]) -> list[str]:
    sweep = results.get("lr_sweep")
    if not sweep:
        return []
    lines = ["", "## Learning-rate sweep (baseline only)", "",
             f"The `none` baseline trained once per rate with seed {sweep['seed']} (not one of the compared seeds), "
             "same data and budget; every arm then uses the best rate. Chosen on the same evaluation rows the arms "
             "are scored on, which can only favour the baseline.", "",
             "| learning rate | overall accuracy | overall macro-F1 | train loss |", "|---|---|---|---|"]
    for lr, rec in sorted(sweep["rates"].items(), key=lambda kv: float(kv[0])):
        mark = " (chosen)" if float(lr) == sweep["chosen"] else ""
        loss = rec.get("train_loss")
        lines.append(f"| {float(lr):g}{mark} | {rec['overall']['accuracy'] * 100:.1f} | "
                     f"{rec['overall']['macro_f1'] * 100:.1f} | {f'{loss:.3f}' if _num(loss) else '-'} |")
    return lines


def _gate(results: dict[str, Any]) -> list[str]:
    gate = results.get("gate")
    if not gate:
        return []
    lines = ["", "## Baseline gate", "",
             f"Before any arm is compared, the baseline's seeds are trained and its mean accuracy must beat the "
             f"domain-only floor by {gate['points']:g} points on every trained source "
             f"({'enforced' if gate.get('enforced', True) else 'not enforced: --no_gate'}).", "",
             "| source | baseline mean | floor | margin (pts) | passed |", "|---|---|---|---|---|"]
    for tag, v in gate["per_source"].items():
        lines.append(f"| {tag} | {v['baseline_mean'] * 100:.1f} | {v['floor'] * 100:.1f} | "
                     f"{v['margin_points']:+.1f} | {'yes' if v['passed'] else '**no**'} |")
    return lines


def _compute(results: dict[str, Any]) -> list[str]:
    flops = results.get("flops") or {}
    matching = results.get("setup", {}).get("matching") or {}
    if not flops and not matching:
        return []
    lines = ["", "## Compute per arm", "",
             "Training FLOPs per token (forward + backward) measured with `torch.utils.flop_counter.FlopCounterMode` "
             "on each arm's trained config at the run's max_length: matrix products only (attention over the full "
             "T x T scores), elementwise ops count 0 (strata.models.stratified.flops).", "",
             "| arm | parameters | training FLOPs / token | vs `none` |", "|---|---|---|---|"]
    base = flops.get("none", {}).get("total")
    for arm, entry in results["summary"].items():
        f = flops.get(arm, {}).get("total")
        ratio = f"{f / base:.3f}x" if _num(f) and _num(base) and base else "-"
        lines.append(f"| {arm} | {entry['parameters']:,} | {f'{f:,.0f}' if _num(f) else '-'} | {ratio} |")
    if matching:
        lines += ["", "Matched controls, decided before training on the presets: `dense_matched_<v>` is trained when v has "
                  "more than 2% more parameters than the baseline (else the baseline is its parameter match), and "
                  "`flops_matched_<v>` when that parameter match's FLOPs differ from v's by more than 5%:", "",
                  "| variant | parameters (vs `none`) | dense_matched | FLOPs / token | parameter match's FLOPs "
                  "(gap) | flops_matched |", "|---|---|---|---|---|---|"]
        for v, m in sorted(matching.items()):
            dense = "trained" if m["dense_matched_trained"] else "not needed (baseline within 2%)"
            flops = "trained" if m["flops_control_trained"] else "not needed (within 5%)"
            lines.append(f"| {v} | {m['variant_parameters']:,} ({m['parameter_gap'] * 100:+.1f}%) | {dense} | "
                         f"{m['variant_flops_per_token']:,.0f} | {m['param_matched_flops_per_token']:,.0f} "
                         f"({m['relative_gap'] * 100:+.1f}%) | {flops} |")
    return lines


def _planted(results: dict[str, Any]) -> list[str]:
    rows = [(a, e["diagnostics"]) for a, e in results["summary"].items()
            if e.get("diagnostics") and "planted_router_nmi_mean" in e["diagnostics"]]
    if not rows:
        return []

    def cell(d: dict[str, Any], key: str) -> str:
        v = d.get(key, {}).get("mean")
        return f"{v:.3f}" if _num(v) else "-"

    lines = ["", "## Planted strata (synthetic rows only: is the known structure recovered?)", "",
             "Router arg-max stratum against the planted domain of each token of the synthetic evaluation prompts; "
             "null = the same statistic with the domains shuffled (100 permutations); k-means (k = S) on the same "
             "hidden states as a reference. Mean over layers, then seeds. Accuracy on these rows is the "
             "synthetic-strata column of the tables above.", "",
             "| arm | router NMI | null NMI | min p (NMI) | router purity | null purity | k-means NMI |",
             "|---|---|---|---|---|---|---|"]
    for arm, d in rows:
        lines.append(f"| {arm} | {cell(d, 'planted_router_nmi_mean')} | {cell(d, 'planted_router_nmi_null_mean')} | "
                     f"{cell(d, 'planted_router_nmi_p_min')} | {cell(d, 'planted_router_purity_mean')} | "
                     f"{cell(d, 'planted_router_purity_null_mean')} | {cell(d, 'planted_kmeans_nmi_mean')} |")
    return lines


def protocol_sections(results: dict[str, Any]) -> list[str]:
    return [*_sweep(results), *_gate(results), *_compute(results), *_planted(results)]
