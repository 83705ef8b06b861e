"""Training throughput and memory of TTT-Linear, TTT-MLP and GPT-2 of the same width and depth vs. context length.

Each (model, context) pair runs in a fresh subprocess (so peak RSS is per configuration): build the model, run
``--warmup`` then ``--steps`` timed training steps (forward + backward + AdamW step, batch 1, random tokens), and
report tokens/s (= context / fastest timed step: on a shared machine other load only ever adds time, so the
fastest step is the least noisy estimate; the median is reported too) and memory. What "memory" means:

* ``peak RSS``: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of the worker process at the end (whole process:
  Python, torch, weights, optimizer state, activations, allocator caches). On CUDA: ``torch.cuda.max_memory_allocated``.
* ``RSS growth``: peak RSS minus the RSS just before the first training step (mostly activations + optimizer state).
* ``saved activations``: bytes of the distinct tensor storages autograd keeps for backward in one forward
  (``torch.autograd.graph.saved_tensors_hooks``); deterministic, independent of allocator noise.

Examples::

    python benchmarks/bench_ttt.py                                   # CPU, hidden 256, 4 layers, 512..4096
    python benchmarks/bench_ttt.py --contexts 512 1024 --steps 1 --warmup 1 --output /tmp/ttt.md   # smoke run
    python benchmarks/bench_ttt.py --device cuda --preset ttt-linear-125m --bf16 --context 2048

The results (markdown, with machine, torch version and date) go to ``--output`` (default
``benchmarks/results/ttt.md``) and, with ``--json``, to a JSON file as well.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = ROOT / "benchmarks" / "results" / "ttt.md"
MODELS = ("ttt-linear", "ttt-mlp", "gpt2")


# ----------------------------------------------------------------------------------------------------------------
# worker: one (model, context) measurement
# ----------------------------------------------------------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def build_model(spec: dict):
    """The model of a spec: a TTT model from a preset / explicit size, or GPT-2 of the same width and depth."""
    import torch

    from strata.models.ttt import TTT_PRESETS, TTTConfig, TTTForCausalLM

    if spec["preset"]:
        base = TTT_PRESETS[spec["preset"]](spec["vocab"], backbone=spec["backbone"])
        hidden, layers, heads, inter = (
            base.hidden_size,
            base.num_hidden_layers,
            base.num_attention_heads,
            base.intermediate_size,
        )
    else:
        hidden, layers, heads, inter = spec["hidden"], spec["layers"], spec["heads"], spec["intermediate"]
    torch.manual_seed(0)
    if spec["model"] == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config(
            vocab_size=spec["vocab"],
            n_embd=hidden,
            n_layer=layers,
            n_head=heads,
            n_positions=max(spec["context"], 1024),
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
        cfg._attn_implementation = spec["gpt2_attn"]
        return GPT2LMHeadModel(cfg)
    layer_type = spec["model"].split("-")[1]
    cfg = TTTConfig(
        vocab_size=spec["vocab"],
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        ttt_layer_type=layer_type,
        ttt_base_lr=1.0 if layer_type == "linear" else 0.1,
        mini_batch_size=16,
        pre_conv=spec["backbone"] == "mamba",
        share_qk=spec["backbone"] == "mamba",
        use_gate=spec["backbone"] == "mamba",
        use_cache=False,
    )
    return TTTForCausalLM(cfg)


def run_worker(spec: dict) -> dict:
    import torch

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    model = build_model(spec).to(device).train()
    n_params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, spec["vocab"], (1, spec["context"]), generator=g).to(device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=spec["bf16"])
    cuda = device.type == "cuda"

    def step() -> float:
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with amp:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    # saved activations of one forward (separate from the timed steps)
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor):
        try:
            s = t.untyped_storage()
            storages[s.data_ptr()] = s.nbytes()
        except (RuntimeError, NotImplementedError):  # pragma: no cover - exotic tensors
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), amp:
        loss = model(input_ids=ids, labels=ids).loss
    del loss
    optimizer.zero_grad(set_to_none=True)

    rss_before = _rss_bytes()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for _ in range(spec["warmup"]):
        step()
    times = [step() for _ in range(spec["steps"])]
    result = {
        **spec,
        "params": n_params,
        "step_s": times,
        "median_step_s": statistics.median(times),
        "min_step_s": min(times),
        "tokens_per_s": spec["context"] / min(times),
        "tokens_per_s_median": spec["context"] / statistics.median(times),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_growth_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before / 2**20,
        "saved_activations_mib": sum(storages.values()) / 2**20,
        "torch_threads": torch.get_num_threads(),
    }
    if cuda:
        result["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        result["gpu"] = torch.cuda.get_device_name()
    return result


# ----------------------------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------------------------


def machine_info(device: str) -> dict:
    import torch
    import transformers

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "load_avg_start": os.getloadavg(),
    }
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def run_spec(spec: dict, in_process: bool) -> dict:
    if in_process:
        return run_worker(spec)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        return {**spec, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fmt(x: float | None, digits: int = 0) -> str:
    return "—" if x is None else f"{x:,.{digits}f}"


def render(results: list[dict], info: dict, args: argparse.Namespace) -> str:
    contexts = sorted({r["context"] for r in results})
    models = [m for m in args.models if any(r["model"] == m for r in results)]
    by = {(r["model"], r["context"]): r for r in results}
    size = (
        f"preset `{args.preset}` width/depth"
        if args.preset
        else f"hidden {args.hidden}, {args.layers} layers, {args.heads} heads, MLP/SwiGLU {args.intermediate}"
    )
    lines = [
        "# TTT benchmark: training throughput and memory vs. context",
        "",
        f"Generated by `benchmarks/bench_ttt.py` on {info['date']}.",
        "",
        f"* Machine: {info['cpu']}, {info['logical_cores']} logical cores ({info['usable_cores']} usable), "
        f"device `{args.device}`" + (f" ({info['gpu']})" if info.get("gpu") else ""),
        f"* torch {info['torch']}, transformers {info['transformers']}, Python {info['python']}, "
        f"torch threads {results[0].get('torch_threads', '?') if results else '?'}",
        f"* Load average at start {tuple(round(x, 2) for x in info['load_avg_start'])}, at end "
        f"{tuple(round(x, 2) for x in info['load_avg_end'])} (a busy machine makes the numbers noisy)",
        f"* Models: {size}; vocabulary {args.vocab}; TTT backbone `{args.backbone}`, mini-batch 16; GPT-2 with "
        f"`{args.gpt2_attn}` attention, dropout 0",
        f"* Step: forward + backward + AdamW, batch 1, {'bf16 autocast' if args.bf16 else 'float32'}; "
        f"{args.warmup} warm-up step(s), then {args.steps} timed step(s); tokens/s = context / fastest step "
        "(median step shown too); each configuration runs in a fresh process",
        "* Memory: *peak RSS* = `ru_maxrss` of that process (everything: interpreter, weights, AdamW state, "
        "activations); *growth* = peak RSS minus RSS before the first step; *saved act.* = bytes of the tensors "
        "autograd saves for backward in one forward (via `saved_tensors_hooks`)"
        + ("; on CUDA *peak* is `torch.cuda.max_memory_allocated`" if args.device == "cuda" else ""),
        "",
        "| model | context | tokens/s | vs. shortest | fastest / median step (s) | peak RSS (MiB) | growth (MiB) "
        "| saved act. (MiB) |" + (" CUDA peak (MiB) |" if args.device == "cuda" else ""),
        "|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if args.device == "cuda" else ""),
    ]
    for m in models:
        first = by.get((m, contexts[0]))
        for c in contexts:
            r = by.get((m, c))
            if r is None:
                continue
            if "error" in r:
                lines.append(f"| {m} | {c} | error: {r['error']} | | | | | |")
                continue
            rel = r["tokens_per_s"] / first["tokens_per_s"] if first and "error" not in first else None
            row = (
                f"| {m} | {c} | {fmt(r['tokens_per_s'])} | {fmt(rel, 2)} | {fmt(r['min_step_s'], 3)} / "
                f"{fmt(r['median_step_s'], 3)} | "
                f"{fmt(r['peak_rss_mib'])} | {fmt(r['rss_growth_mib'])} | {fmt(r['saved_activations_mib'])} |"
            )
            if args.device == "cuda":
                row += f" {fmt(r.get('cuda_peak_mib'))} |"
            lines.append(row)
    lines += ["", "## Verdict", ""]
    lo, hi = contexts[0], contexts[-1]
    for m in models:
        a, b = by.get((m, lo)), by.get((m, hi))
        if not a or not b or "error" in a or "error" in b or lo == hi:
            continue
        ratio = b["tokens_per_s"] / a["tokens_per_s"]
        target = ""
        if m.startswith("ttt"):
            target = " — target ≥ 0.80: " + ("**met**" if ratio >= 0.8 else "**not met**")
        lines.append(f"* {m}: tokens/s at {hi} = {ratio:.2f} × tokens/s at {lo}{target}")
    lines.append("")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--contexts", nargs="+", type=int, default=[512, 1024, 2048, 4096])
    p.add_argument("--context", type=int, help="a single context (overrides --contexts)")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=688, help="TTT SwiGLU width (GPT-2 uses 4 x hidden)")
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--preset", help="take width/depth/heads from a TTT preset, e.g. ttt-linear-125m")
    p.add_argument("--backbone", default="transformer", choices=["transformer", "mamba"])
    p.add_argument("--gpt2-attn", default="sdpa", choices=["sdpa", "eager"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--in-process", action="store_true", help="no subprocesses (peak RSS then accumulates)")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    p.add_argument("--json", type=Path, help="also write the raw results here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return
    contexts = [args.context] if args.context else args.contexts
    info = machine_info(args.device)
    results = []
    for context in contexts:
        for model in args.models:
            spec = {
                "model": model,
                "context": context,
                "hidden": args.hidden,
                "layers": args.layers,
                "heads": args.heads,
                "intermediate": args.intermediate,
                "vocab": args.vocab,
                "preset": args.preset,
                "backbone": args.backbone,
                "gpt2_attn": args.gpt2_attn,
                "device": args.device,
                "bf16": args.bf16,
                "warmup": args.warmup,
                "steps": args.steps,
                "threads": args.threads,
            }
            r = run_spec(spec, args.in_process)
            results.append(r)
            msg = r.get("error") or f"{r['tokens_per_s']:.0f} tok/s, peak RSS {r['peak_rss_mib']:.0f} MiB"
            print(f"{model:>10} @ {context:>5}: {msg}", flush=True)
    info["load_avg_end"] = os.getloadavg()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render(results, info, args))
    print(f"wrote {args.output}")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "results": results}, indent=1))


if __name__ == "__main__":
    main()
