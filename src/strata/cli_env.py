"""``strata env``: the machine as a run would see it, for bug reports and before choosing --parallelism.

Devices (CUDA names and memory, else the CPU model and cores), the interconnect (``nvidia-smi topo -m`` where
nvidia-smi exists), bf16 support and AMX, the versions of the libraries a run depends on (read from the
installed distributions, nothing imported for it), and with ``--model M --devices N`` what
``--parallelism auto`` would choose and why.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from importlib import metadata

import torch

from strata.errors import StrataError, parse_or_refuse

USAGE = ("usage: strata env [--model M --devices N [--nodes K] [--device_memory GIB] [--use_lora] "
         "[--device_type cuda|cpu]]")
PACKAGES = ("torch", "transformers", "accelerate", "trl", "peft", "datasets", "bitsandbytes")


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE + "\n\n" + __doc__.strip())
        return 0
    args = _parse(argv)
    print(describe_environment())
    if args.model is not None:
        print(parallelism_line(args.model, args.devices, args.nodes, args.device_memory, args.use_lora,
                               args.device_type))
    return 0


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="strata env", add_help=False, exit_on_error=False)
    parser.add_argument("--model")
    parser.add_argument("--devices", type=int)
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--device_memory", type=float, help="one device's memory in GB (default: this machine's)")
    parser.add_argument("--device_type", choices=("cuda", "cpu"), default=None)
    parser.add_argument("--use_lora", action="store_true")
    args = parse_or_refuse(parser, argv, USAGE)
    given = [name for name in ("devices", "device_memory", "device_type") if getattr(args, name) is not None]
    if args.model is None and (given or args.nodes != 1 or args.use_lora):
        raise StrataError(f"--{(given or ['nodes'])[0]} says what --parallelism auto would choose for a model: "
                          "add --model M --devices N")
    if args.model is not None and args.devices is None:
        raise StrataError("--model needs --devices N (the devices the run would use)")
    if args.devices is not None and args.devices < 1 or args.nodes < 1:
        raise StrataError("--devices and --nodes must be at least 1")
    return args


def package_versions() -> dict[str, str]:
    """Installed distribution versions (importlib.metadata), 'not installed' where absent."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def device_lines() -> list[str]:
    if torch.cuda.is_available():
        lines = []
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            lines.append(f"  cuda:{index} {props.name}, {props.total_memory / 2**30:.1f} GiB, "
                         f"compute capability {props.major}.{props.minor}")
        return lines
    from strata.training.throughput import device_name

    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    lines = [f"  cpu: {device_name(torch.device('cpu'))}, {os.cpu_count()} logical cores, "
             f"torch threads {torch.get_num_threads()}"]
    if mps:
        lines.append("  mps: Apple GPU (Metal)")
    return lines


def interconnect() -> str:
    """``nvidia-smi topo -m`` (NVLink / PCIe between GPUs, NIC affinity), or n/a without nvidia-smi."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return "n/a (no nvidia-smi on PATH)"
    try:
        done = subprocess.run([exe, "topo", "-m"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"n/a (nvidia-smi topo -m failed: {error})"
    if done.returncode != 0:
        return f"n/a (nvidia-smi topo -m exited {done.returncode}: {done.stderr.strip()[:200]})"
    return "\n" + done.stdout.rstrip()


def bf16_lines() -> list[str]:
    from strata.models.device import cpu_has_amx

    lines = []
    if torch.cuda.is_available():
        lines.append(f"bf16 on cuda: {'yes' if torch.cuda.is_bf16_supported() else 'no'}")
    lines.append(f"cpu AMX (amx_bf16): {'yes' if cpu_has_amx() else 'no'}")
    lines.append("cpu bf16 autocast by --precision auto: "
                 f"{'yes (AMX)' if cpu_has_amx() else 'no (fp32; AMX absent, see docs/throughput.md)'}")
    return lines


def describe_environment() -> str:
    rows = ["devices:", *device_lines(), f"interconnect: {interconnect()}", *bf16_lines(), "versions:"]
    rows += [f"  {name} {version}" for name, version in package_versions().items()]
    return "\n".join(rows)


def parallelism_line(model: str, devices: int, nodes: int, device_memory: float | None, lora: bool,
                     device_type: str | None) -> str:
    """What ``--parallelism auto`` would run for ``model`` on ``devices`` (and why)."""
    from strata.models.arguments import ModelArguments
    from strata.models.catalog import preset_config
    from strata.models.plan import architecture_kind, config_from_flags, count_parameters_from_config
    from strata.models.presets import get_preset
    from strata.training.parallel import choose_parallelism

    preset = get_preset(model)  # at its tokenizer's vocabulary, as `strata models` counts it
    config = preset_config(preset) if preset is not None else \
        config_from_flags(ModelArguments(model=model), os.environ.get("STRATA_HUB_MIRROR"))
    params = None if config is None else count_parameters_from_config(config, architecture_kind(config))
    kind = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_memory is None and kind == "cuda" and torch.cuda.is_available():
        device_memory = torch.cuda.get_device_properties(0).total_memory / 2**30
    mode, reason = choose_parallelism(params, lora=lora, devices=devices, nodes=nodes,
                                      device_memory_gib=device_memory, device_type=kind)
    size = f"{params:,} parameters" if params is not None else "parameters unknown (config not local)"
    return f"parallelism auto for {model} ({size}) on {devices} {kind} device(s), {nodes} node(s): {mode} ({reason})"
