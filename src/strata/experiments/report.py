"""Turn a comparison's per-run summaries into results.json, results.md and PNG plots.

Why separate from the harness: the report is recomputed from run folders on every invocation (a resumed
comparison rewrites it), and its statistics must be reproducible from results.json alone. Plots use the
matplotlib Agg backend (no display); learning curves are read back from each run's TensorBoard events.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from strata.experiments.report_sections import gate_findings, protocol_sections
from strata.experiments.statistics import holm, mean_ci, min_wilcoxon_p, paired_test

METRICS = ("accuracy", "macro_f1")
OVERALL = "overall"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(float(value))


def _value(run: dict[str, Any], domain: str, metric: str) -> float:
    source = run["overall"] if domain == OVERALL else run["per_source"].get(domain, {})
    return float(source.get(metric, float("nan")))


def _arm_summary(by_seed: dict[int, dict[str, Any]], domains: list[str]) -> dict[str, Any]:
    """One arm over its seeds: mean ± 95% CI per domain and metric, size, speed, diagnostics."""
    seeds = sorted(by_seed)
    entry: dict[str, Any] = {"seeds": seeds, "domains": {}}
    for domain in [*domains, OVERALL]:
        entry["domains"][domain] = {
            m: mean_ci([_value(by_seed[s], domain, m) for s in seeds]).to_dict() for m in METRICS
        }
    entry["parameters"] = max((by_seed[s]["parameters"] for s in seeds), default=0)
    tps = [by_seed[s]["tokens_per_second"] for s in seeds if _finite(by_seed[s]["tokens_per_second"])]
    entry["tokens_per_second"] = mean_ci(tps).to_dict() if tps else None
    walls = [by_seed[s]["wall_seconds"] for s in seeds if _finite(by_seed[s].get("wall_seconds"))]
    entry["wall_seconds_mean"] = sum(walls) / len(walls) if walls else None
    diags = [by_seed[s]["diagnostics"] for s in seeds if by_seed[s].get("diagnostics")]
    if diags:
        keys = sorted({k for d in diags for k in d})
        entry["diagnostics"] = {k: mean_ci([d[k] for d in diags if _finite(d.get(k))]).to_dict()
                                for k in keys if any(_finite(d.get(k)) for d in diags)}
    return entry


def _paired_tests(by_arm: dict[str, dict[int, dict[str, Any]]], baseline: str,
                  domains: list[str]) -> dict[str, Any]:
    """Every other arm against the baseline, paired by seed, Holm-adjusted across arms per domain x metric."""
    tests: dict[str, Any] = {}
    others = [a for a in by_arm if a != baseline]
    for domain in [*domains, OVERALL]:
        for metric in METRICS:
            rows = {}
            for arm in others:
                shared = sorted(set(by_arm[arm]) & set(by_arm[baseline]))
                if not shared:
                    continue
                a = [_value(by_arm[arm][s], domain, metric) for s in shared]
                b = [_value(by_arm[baseline][s], domain, metric) for s in shared]
                rows[arm] = paired_test(a, b).to_dict()
            adjusted = holm([rows[a]["t_p_value"] for a in rows])
            for arm, p in zip(rows, adjusted):
                rows[arm]["t_p_holm"] = p
                tests.setdefault(arm, {}).setdefault(domain, {})[metric] = rows[arm]
    return tests


def build_results(command: str, setup: dict[str, Any], arms: list[Any], runs: list[dict[str, Any]],
                  floor: dict[str, Any]) -> dict[str, Any]:
    """Per arm x domain x metric: mean ± 95% CI over seeds, and the paired test against the baseline."""
    arm_names = [a.name for a in arms]
    tags = {tag for r in runs for tag in r["per_source"]}  # trained sources, then held-out ones
    domains = sorted(t for t in tags if not t.endswith("(held out)")) + sorted(t for t in tags if t.endswith("(held out)"))
    by_arm: dict[str, dict[int, dict[str, Any]]] = {a: {} for a in arm_names}
    for r in runs:
        by_arm[r["arm"]][r["seed"]] = r
    summary = {arm: _arm_summary(by_arm[arm], domains) for arm in arm_names}
    baseline = arm_names[0] if arm_names and arm_names[0] == "none" else ("none" if "none" in arm_names else None)
    tests = _paired_tests(by_arm, baseline, domains) if baseline is not None else {}
    return {
        "command": command,
        "setup": setup,
        "arms": [{"name": a.name, "kind": a.kind, "description": a.description, "flags": a.flags} for a in arms],
        "baseline": baseline,
        "domains": domains,
        "floor": floor,
        "summary": summary,
        "tests": tests,
        "runs": runs,
    }


# ----------------------------------------------------------------------------------------------- markdown
def _pm(ci: dict[str, float], scale: float = 100.0) -> str:
    if not _finite(ci.get("mean")):
        return "-"
    hw = ci.get("half_width")
    return f"{ci['mean'] * scale:.1f} ± {hw * scale:.1f}" if _finite(hw) else f"{ci['mean'] * scale:.1f}"


def _p(value: Any) -> str:
    return f"{value:.3f}" if _finite(value) else "-"


def _domain_table(results: dict[str, Any], metric: str) -> list[str]:
    domains = [*results["domains"], OVERALL]
    header = "| arm | " + " | ".join(domains) + " |"
    lines = [header, "|---|" + "---|" * len(domains)]
    for arm, entry in results["summary"].items():
        cells = [_pm(entry["domains"][d][metric]) for d in domains]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    floor = results.get("floor") or {}
    if floor:
        cells = [f"{floor['per_source'][d][metric] * 100:.1f}" if d in floor.get("per_source", {}) else "-"
                 for d in results["domains"]]
        lines.append("| *domain-only floor* | " + " | ".join(cells) + f" | {floor[metric] * 100:.1f} |")
    return lines


def _test_table(results: dict[str, Any], metric: str) -> list[str]:
    lines = ["| arm vs baseline | domain | Δ (pts) [95% CI] | paired t p | Holm p | Wilcoxon p | d_z | wins/losses |",
             "|---|---|---|---|---|---|---|---|"]
    for arm, per_domain in results["tests"].items():
        for domain in [*results["domains"], OVERALL]:
            t = per_domain.get(domain, {}).get(metric)
            if not t:
                continue
            delta = f"{t['mean_diff'] * 100:+.1f}"
            if _finite(t["diff_low"]):
                delta += f" [{t['diff_low'] * 100:+.1f}, {t['diff_high'] * 100:+.1f}]"
            dz = f"{t['effect_size_dz']:+.2f}" if _finite(t["effect_size_dz"]) else "-"
            lines.append(f"| {arm} | {domain} | {delta} | {_p(t['t_p_value'])} | {_p(t['t_p_holm'])} | "
                         f"{_p(t['wilcoxon_p_value'])} | {dz} | {t['wins']}/{t['losses']} |")
    return lines


def findings(results: dict[str, Any], alpha: float = 0.05) -> list[str]:
    """Plain statements computed from the numbers (no hand-written claims): what did and did not separate."""
    out: list[str] = []
    tests, baseline = results.get("tests", {}), results.get("baseline")
    if baseline is None:
        return ["No `none` baseline in --variants: no paired tests were run."]
    n = max((len(e["seeds"]) for e in results["summary"].values()), default=0)
    for metric in METRICS:
        sig = [(arm, t[OVERALL][metric]) for arm, t in tests.items()
               if OVERALL in t and _finite(t[OVERALL][metric].get("t_p_holm")) and t[OVERALL][metric]["t_p_holm"] < alpha]
        if sig:
            desc = ", ".join(f"{a} ({t['mean_diff'] * 100:+.1f} pts, Holm p={t['t_p_holm']:.3f})" for a, t in sig)
            out.append(f"Overall {metric}: differs from `{baseline}` at Holm-adjusted p < {alpha}: {desc}.")
        else:
            out.append(f"Overall {metric}: no arm differs from `{baseline}` at Holm-adjusted p < {alpha} "
                       f"(paired t over {n} seeds).")
    for domain in [d for d in results["domains"] if d.endswith("(held out)")]:
        sig = [(arm, t[domain]["accuracy"]) for arm, t in tests.items() if domain in t
               and _finite(t[domain]["accuracy"].get("t_p_holm")) and t[domain]["accuracy"]["t_p_holm"] < alpha]
        desc = ", ".join(f"{a} ({t['mean_diff'] * 100:+.1f} pts, Holm p={t['t_p_holm']:.3f})" for a, t in sig)
        out.append(f"Transfer to {domain}, accuracy: " + (f"differs from `{baseline}`: {desc}." if sig else
                   f"no arm differs from `{baseline}` at Holm-adjusted p < {alpha}."))
    floor = results.get("floor") or {}
    if floor:
        base = results["summary"].get(baseline, {}).get("domains", {})
        below = [d for d in results["domains"]
                 if d in floor.get("per_source", {}) and base.get(d, {}).get("accuracy", {}).get("mean", 1.0)
                 <= floor["per_source"][d]["accuracy"]]
        if below:
            out.append(f"The `{baseline}` baseline's mean accuracy is at or below the domain-only floor on: "
                       f"{', '.join(below)} — there, the models have not learned more than the label prior.")
    hashed = tests.get("hash", {}).get(OVERALL, {}).get("accuracy")
    if hashed:
        for arm in ("routing", "moe", "layers", "attention"):
            t = tests.get(arm, {}).get(OVERALL, {}).get("accuracy")
            if t:
                gap = t["mean_diff"] - hashed["mean_diff"]
                out.append(f"`{arm}` minus the hash control, overall accuracy: {gap * 100:+.1f} pts "
                           "(a learned router that does not beat hash has shown nothing).")
    if n and n < 6:
        out.append(f"With {n} seeds the smallest possible two-sided Wilcoxon p is {min_wilcoxon_p(n):.3f}; "
                   "only the t-test can reach 0.05, and it assumes near-normal differences.")
    return out


def _cost_table(results: dict[str, Any]) -> list[str]:
    """Parameters, training tokens/s and wall time per arm."""
    lines = ["", "## Cost", "", "| arm | parameters | tokens/s (train) | wall s per run |", "|---|---|---|---|"]
    for arm, entry in results["summary"].items():
        tps = entry.get("tokens_per_second") or {}
        wall = entry.get("wall_seconds_mean")
        lines.append(f"| {arm} | {entry['parameters']:,} | {_pm(tps, 1.0) if tps else '-'} | "
                     f"{f'{wall:.0f}' if _finite(wall) else '-'} |")
    return lines


def _diagnostics_table(results: dict[str, Any]) -> list[str]:
    """Router NMI / purity against their nulls and k-means, per arm (none without --diagnostics)."""
    diag_arms = {a: e["diagnostics"] for a, e in results["summary"].items() if e.get("diagnostics")}
    if not diag_arms:
        return []
    lines = ["", "## Router diagnostics (evaluation prompts, tokens labelled by domain)", "",
             "Mean over layers, then over seeds. Null = shuffled-domain permutation mean (chance level); "
             "k-means = k-means with k = S on the same hidden states the router reads.", "",
             "| arm | router NMI | null NMI | min p (NMI) | router purity | null purity | k-means NMI | "
             "load entropy |", "|---|---|---|---|---|---|---|---|"]
    for arm, d in diag_arms.items():
        def cell(key: str, d: dict[str, Any] = d) -> str:
            v = d.get(key, {}).get("mean")
            return f"{v:.3f}" if _finite(v) else "-"
        lines.append(f"| {arm} | {cell('router_nmi_mean')} | {cell('router_nmi_null_mean')} | "
                     f"{cell('router_nmi_p_min')} | {cell('router_purity_mean')} | "
                     f"{cell('router_purity_null_mean')} | {cell('kmeans_nmi_mean')} | "
                     f"{cell('router_load_entropy_mean')} |")
    return lines


def render_markdown(results: dict[str, Any], plots: list[str]) -> str:
    setup = results["setup"]
    lines = ["# Stratified variants: comparison results", "",
             "Generated by `strata compare` (strata.experiments.report); numbers are percentages, "
             "mean ± half-width of the t-based 95% CI over seeds.", "",
             "## Command", "", "```", results["command"], "```", "",
             "## Setup", ""]
    lines += [f"- {key}: `{value}`" for key, value in setup.items()
              if key not in ("forwarded_flags", "matching", "machine")]  # those two have their own lines/section
    if setup.get("machine"):
        m = setup["machine"]
        versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())
        lines.append(f"- machine: {'; '.join(m.get('devices', []))}; Python {m.get('python')}; {versions}; "
                     f"{m.get('date')}")
    lines += ["", "Arms (each trained from a fresh model per seed; the seed sets initialisation, `--data_seed` is "
              "shared, so every arm of a seed sees the same batches and is scored on the same rows):", ""]
    for arm in results["arms"]:
        params = results["summary"].get(arm["name"], {}).get("parameters", 0)
        lines.append(f"- `{arm['name']}` ({arm['kind']}): {arm['description']}; {params:,} parameters; "
                     f"flags `{' '.join(arm['flags'])}`")
    lines += ["", "## Findings (computed, not hand-written)", ""]
    lines += [f"- {f}" for f in [*gate_findings(results), *findings(results)]]
    for metric in METRICS:
        lines += ["", f"## {metric.replace('_', '-')} per domain", ""]
        lines += _domain_table(results, metric)
    lines += ["", "## Paired comparisons against the baseline (by seed)", "",
              "Δ = arm − baseline in points; p-values: paired t-test (Holm-adjusted over the arms, per domain and "
              "metric) and exact Wilcoxon signed-rank; d_z = mean Δ / sd Δ.", ""]
    for metric in METRICS:
        lines += ["", f"### {metric}", ""]
        lines += _test_table(results, metric)
    lines += _cost_table(results)
    lines += protocol_sections(results)
    lines += _diagnostics_table(results)
    floor = results.get("floor") or {}
    if floor:
        lines += ["", "## Domain-only floor", "",
                  f"Predicts, for each evaluation example, the majority label of its domain among the "
                  f"{floor.get('train_rows', 0):,} training rows a run consumes (no model). Predicted labels: "
                  + "; ".join(f"{tag}: " + ", ".join(f"{d}→{w}" for d, w in v["predicted"].items())
                              for tag, v in floor.get("per_source", {}).items())]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    lines += ["", "## Runs", "", "| arm | seed | overall acc | overall macro-F1 | train loss | folder |",
              "|---|---|---|---|---|---|"]
    for r in results["runs"]:
        loss = r.get("train_loss")
        lines.append(f"| {r['arm']} | {r['seed']} | {r['overall']['accuracy'] * 100:.1f} | "
                     f"{r['overall']['macro_f1'] * 100:.1f} | {f'{loss:.3f}' if _finite(loss) else '-'} | "
                     f"`{r['folder']}` |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------- plots
def plot_bars(results: dict[str, Any], metric: str, path: Path) -> Path:
    """Grouped bars: one group per domain (+ overall), one bar per arm, 95% CI error bars, floor ticks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    domains = [*results["domains"], OVERALL]
    arms = list(results["summary"])
    width = 0.8 / max(1, len(arms))
    x = np.arange(len(domains))
    fig, ax = plt.subplots(figsize=(max(8, 1.4 * len(domains)), 4.5))
    for i, arm in enumerate(arms):
        cis = [results["summary"][arm]["domains"][d][metric] for d in domains]
        means = [c["mean"] * 100 for c in cis]
        errs = [c["half_width"] * 100 if _finite(c["half_width"]) else 0.0 for c in cis]
        ax.bar(x + (i - (len(arms) - 1) / 2) * width, means, width, yerr=errs, capsize=2, label=arm)
    floor = results.get("floor") or {}
    if floor:
        values = [floor["per_source"][d][metric] * 100 if d in floor["per_source"] else floor[metric] * 100
                  for d in domains]
        ax.hlines(values, x - 0.42, x + 0.42, colors="black", linestyles="dashed", linewidth=1,
                  label="domain-only floor")
    ax.set_xticks(x)
    ax.set_xticklabels(domains, rotation=25, ha="right", fontsize=8)
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(f"{metric} per domain: mean ± 95% CI over seeds")
    ax.legend(fontsize=7, ncol=min(4, len(arms) + 1))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def read_scalars(tensorboard_dir: Path, tags: tuple[str, ...]) -> dict[str, list[tuple[int, float]]]:
    """(step, value) series of the given tags from a run's TensorBoard event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not tensorboard_dir.is_dir():
        return {}
    acc = EventAccumulator(str(tensorboard_dir), size_guidance={"scalars": 0})
    acc.Reload()
    available = set(acc.Tags().get("scalars", []))
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in tags if tag in available}


def plot_learning_curves(results: dict[str, Any], path: Path) -> Path | None:
    """Training loss (and eval accuracy when evaluated periodically): thin lines per seed, thick mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tags = ("train/loss", "eval/accuracy")
    series: dict[str, dict[str, list[list[tuple[int, float]]]]] = {}
    for run in results["runs"]:
        scalars = read_scalars(Path(run["folder"]) / "tensorboard", tags)
        for tag, points in scalars.items():
            series.setdefault(tag, {}).setdefault(run["arm"], []).append(points)
    if "train/loss" not in series:
        return None
    panels = [t for t in tags if t in series and any(len(p) > 1 for runs in series[t].values() for p in runs)]
    panels = panels or ["train/loss"]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, tag in zip(axes[0], panels):
        for i, (arm, runs) in enumerate(series[tag].items()):
            color = colors[i % len(colors)]
            for points in runs:
                ax.plot([s for s, _ in points], [v for _, v in points], color=color, alpha=0.25, linewidth=0.8)
            steps = sorted(set.intersection(*[{s for s, _ in p} for p in runs]))
            if steps:
                mean = [np.mean([dict(p)[s] for p in runs]) for s in steps]
                ax.plot(steps, mean, color=color, linewidth=2, label=arm)
        ax.set_xlabel("step")
        ax.set_ylabel(tag)
        if tag.endswith("loss"):  # the completion loss falls fast, then the interesting part is small
            ax.set_yscale("log")
        ax.set_title(tag + " (thin: seeds, thick: mean)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(results: dict[str, Any], report_dir: Path) -> list[Path]:
    """results.json, results.md and the plots in ``report_dir``; returns the written paths."""
    report_dir.mkdir(parents=True, exist_ok=True)
    plots: list[Path] = [plot_bars(results, m, report_dir / f"bars_{m}.png") for m in METRICS]
    curves = plot_learning_curves(results, report_dir / "learning_curves.png")
    if curves is not None:
        plots.append(curves)
    json_path = report_dir / "results.json"
    json_path.write_text(json.dumps(_clean(results), indent=2, default=_json_default, allow_nan=False) + "\n")
    md_path = report_dir / "results.md"
    md_path.write_text(render_markdown(results, [str(p) for p in plots]))
    return [json_path, md_path, *plots]


def _clean(value: Any) -> Any:
    """NaN/inf -> null, so results.json is strict JSON (an undefined CI is 'no value', not a number)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)
