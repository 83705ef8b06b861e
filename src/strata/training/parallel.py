"""How a run is spread over devices (``--parallelism``): the choice, its checks, and FSDP2 sharding.

FSDP and HSDP are Strata's own small integration of torch's FSDP2 (``fully_shard`` over a ``DeviceMesh``), not
``TrainingArguments(fsdp=...)``: accelerate 1.15 turns FSDP on only for GPU-type setups, so under torchrun with
gloo the Trainer's FSDP silently becomes DDP, while ``fully_shard`` itself runs on a CPU mesh. One path, CPU
and GPU alike, is what the CPU equivalence tests can vouch for (docs/distributed.md, "FSDP and HSDP").
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from strata.errors import StrataError
from strata.models.plan import memory_estimate
from strata.models.quantization import requested_flag

CHOICES = ("auto", "none", "dp", "ddp", "fsdp", "hsdp")
SHARDED = ("fsdp", "hsdp")
# Of a device's memory, what parameters + gradients + optimizer state may take under DDP; the rest is for
# activations, the CUDA context and the allocator's slack.
STATE_SHARE = 0.6


@dataclass(frozen=True)
class Parallelism:
    """What ran: the choice, why, and (after the Trainer prepared the model) the wrapper it ran in."""

    choice: str
    reason: str
    mesh_shape: tuple[int, ...] | None = None

    def record(self, wrapped: Any = None) -> dict[str, Any]:
        record: dict[str, Any] = {"choice": self.choice, "reason": self.reason}
        if self.mesh_shape is not None:
            record["mesh"] = list(self.mesh_shape)
        if wrapped is not None:
            record["wrapper"] = wrapper_name(wrapped)
        return record


def training_state_gib(num_params: int, lora: bool) -> float:
    """Parameters + gradients + AdamW state in GiB: full training keeps fp32 weights, grads and two moments
    (4 x the fp32 weight size, also under bf16 autocast); LoRA keeps the frozen base in bf16 and the adapters'
    state (under 1% of the weights) is left out."""
    weights = memory_estimate(num_params)
    return weights["bf16"] if lora else 4 * weights["fp32"]


def choose_parallelism(num_params: int | None, *, lora: bool, devices: int, nodes: int = 1,
                       device_memory_gib: float | None = None, device_type: str = "cuda",
                       processes: int | None = None) -> tuple[str, str]:
    """What ``--parallelism auto`` runs, and why: a pure function of the model size and the machine.

    ``devices``: devices in the run (GPUs, or CPU worker processes); ``processes``: processes launched
    (default: one per device); ``device_memory_gib``: one device's memory (None: unknown).
    """
    processes = devices if processes is None else processes
    if devices <= 1:
        return "none", "one device: nothing to distribute"
    if processes == 1:
        return "dp", (f"one process sees {devices} GPUs: Trainer's DataParallel; DDP is faster "
                      "(--multi_gpu or torchrun, one process per GPU)")
    if nodes > 1:
        return "hsdp", (f"{nodes} nodes: shard within a node, replicate across nodes (HSDP), so only the "
                        "gradient all-reduce crosses the slower inter-node links")
    if device_type == "cpu":
        return "ddp", (f"{processes} CPU processes share one machine's memory: sharding saves nothing, DDP "
                       "keeps one full copy per process")
    if num_params is None or device_memory_gib is None:
        return "ddp", "model size or device memory unknown: DDP (use --parallelism fsdp to shard)"
    need = training_state_gib(num_params, lora)
    what = "LoRA: bf16 base weights" if lora else "full: fp32 weights + grads + AdamW (16 bytes/param)"
    if need <= STATE_SHARE * device_memory_gib:
        return "ddp", (f"{what} = {need:.2f} GiB fits in {STATE_SHARE:.0%} of one device's "
                       f"{device_memory_gib:.1f} GiB: DDP")
    return "fsdp", (f"{what} = {need:.2f} GiB exceeds {STATE_SHARE:.0%} of one device's "
                    f"{device_memory_gib:.1f} GiB: FSDP shards it over {devices} devices")


def node_count() -> int:
    """Nodes of a torchrun launch (WORLD_SIZE / LOCAL_WORLD_SIZE); 1 without a launcher."""
    world, local = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_WORLD_SIZE", 0) or 0)
    return max(1, world // local) if local else 1


def planned_parallelism(config: Any, world_size: int) -> Parallelism:
    """``--parallelism`` checked against the launch, before any data or weights are read: each value runs as
    named, or one line says why not. ``auto`` sizes the model from its config (built on the meta device)."""
    from strata.models.device import resolve_device
    from strata.models.plan import architecture_kind, config_from_flags, count_parameters_from_config

    train_args, model_args = config.train, config.model
    requested = train_args.parallelism
    if requested not in CHOICES:
        raise StrataError(f"--parallelism {requested!r} is not one of {', '.join(CHOICES)}")
    device = resolve_device(model_args.device)
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    devices = world_size if world_size > 1 else max(gpus, 1)
    memory = torch.cuda.get_device_properties(0).total_memory / 2**30 if gpus else None
    num_params = None
    if requested == "auto" and gpus and world_size > 1:  # the only case where the size decides
        model_config = config_from_flags(model_args, config.data.hub_mirror)
        if model_config is not None:
            num_params = count_parameters_from_config(model_config, architecture_kind(model_config))
    if requested == "auto":
        choice, reason = choose_parallelism(num_params, lora=model_args.use_lora, devices=devices,
                                            nodes=node_count(), device_memory_gib=memory, device_type=device,
                                            processes=world_size)
    else:
        choice, reason = requested, "asked with --parallelism"
    _check(choice, train_args, model_args, device, world_size, gpus)
    shape = mesh_shape(choice, world_size, train_args.hsdp_replicas) if choice in SHARDED else None
    return Parallelism(choice, reason, shape)


def _check(choice: str, train_args: Any, model_args: Any, device: str, world_size: int, gpus: int) -> None:
    flag = f"--parallelism {choice}"
    if choice == "none" and world_size == 1 and gpus > 1:
        raise StrataError(f"{flag}: this process sees {gpus} GPUs and Trainer would wrap the model in DataParallel; "
                          "set CUDA_VISIBLE_DEVICES=0, or use --parallelism dp / --multi_gpu")
    if choice == "none" and world_size > 1:
        raise StrataError(f"{flag} under a launcher with {world_size} processes would still run DDP; use "
                          "--parallelism ddp, or start one process")
    if choice == "dp" and (world_size > 1 or gpus < 2):
        raise StrataError(f"{flag} (DataParallel) needs one process that sees several CUDA GPUs (here: "
                          f"{world_size} process(es), {gpus} GPU(s)); use --parallelism ddp under torchrun")
    if choice in ("ddp", *SHARDED) and world_size == 1:
        raise StrataError(f"{flag} needs several processes; start them with --multi_gpu or torchrun "
                          "(docs/distributed.md)")
    if choice not in SHARDED:
        for name in ("fsdp_cpu_offload",):
            if getattr(train_args, name):
                raise StrataError(f"--{name} is an FSDP setting; use it with --parallelism fsdp or hsdp")
        if train_args.hsdp_replicas is not None:
            raise StrataError("--hsdp_replicas is an HSDP setting; use it with --parallelism hsdp")
        return
    if train_args.mode == "rl":
        raise StrataError(f"{flag} is not wired into the GRPO trainer; use --parallelism ddp in --mode rl")
    quantized = requested_flag(model_args)
    if quantized is not None:
        raise StrataError(f"{flag} with --{quantized} is not wired: FSDP2 does not shard bitsandbytes' "
                          "quantized weights; use --parallelism ddp")
    if model_args.use_lora and model_args.merge_lora:
        raise StrataError(f"{flag} with --merge_lora: merging needs the whole model in one process; train without "
                          "--merge_lora and merge final/ afterwards (peft merge_and_unload)")
    if train_args.load_best_model_at_end:
        raise StrataError(f"{flag} with --load_best_model_at_end: Trainer 5.24 would load the best checkpoint into "
                          "the sharded model as if it were whole; pick the best checkpoint-N afterwards, or use "
                          "--parallelism ddp")
    if train_args.fsdp_cpu_offload and device != "cuda":
        raise StrataError(f"--fsdp_cpu_offload moves GPU shards to CPU memory; with --device {device} there is "
                          "nothing to offload")
    if choice == "fsdp" and train_args.hsdp_replicas is not None:
        raise StrataError("--hsdp_replicas is an HSDP setting; use it with --parallelism hsdp")


def mesh_shape(choice: str, world_size: int, replicas: int | None) -> tuple[int, ...]:
    """(shard,) for FSDP; (replicate, shard) for HSDP, replicas = --hsdp_replicas or the node count."""
    if choice == "fsdp":
        return (world_size,)
    replicas = replicas or node_count()
    if replicas < 1 or world_size % replicas:
        raise StrataError(f"--hsdp_replicas {replicas} must divide the {world_size} processes")
    return (replicas, world_size // replicas)


def shard_model(model: torch.nn.Module, parallelism: Parallelism, device: str, cpu_offload: bool) -> None:
    """FSDP2 in place: ``fully_shard`` each block named in ``_no_split_modules`` (the model's own statement of
    what must stay whole), then the root, as torchtitan's parallelize does. The model keeps its class (FSDP2
    swaps in an ``FSDP<Class>`` subclass), so ``save_pretrained`` and the Trainer still see a PreTrainedModel.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard

    shape = parallelism.mesh_shape
    names = ("shard",) if len(shape) == 1 else ("replicate", "shard")
    mesh = init_device_mesh(device, shape, mesh_dim_names=names)
    options: dict[str, Any] = {"mesh": mesh}
    if cpu_offload:
        options["offload_policy"] = CPUOffloadPolicy()
    block_names = set(getattr(model, "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in block_names]
    if not blocks:
        raise StrataError(f"--parallelism {parallelism.choice}: {type(model).__name__} names no _no_split_modules "
                          "to shard by; use --parallelism ddp")
    for block in blocks:
        fully_shard(block, **options)
    fully_shard(model, **options)
    # Trainer 5.24 leaves a model alone (no DDP wrap, no device move, accelerate's prepare in evaluation mode, its
    # gradient-sync deferral under accumulation) only when this flag says the model already owns its sharding;
    # the public way to set it, from_pretrained(distributed_config=...), shards at load and cannot take a model
    # built from a config or a preset, so it is set here (transformers/distributed/mixin.py, maybe_distribute_model).
    model._is_distributed_loading_by_transformers = True
    if hasattr(model, "get_base_model"):  # a PeftModel: Trainer reads the flag through peft to the base model
        model.get_base_model()._is_distributed_loading_by_transformers = True


def wrapper_name(model: Any) -> str:
    """The wrapper a prepared model ran in: FSDPModule, DistributedDataParallel, DataParallel, or none."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        return "FSDPModule"
    if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        return type(model).__name__
    return "none"


def full_state_dict(model: Any) -> dict[str, torch.Tensor] | None:
    """The whole state dict on rank 0's CPU for a sharded model (a collective: every rank calls); None when
    the model is not sharded (save_pretrained then reads the model itself)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        return None
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # Tied weights (embed_tokens / lm_head) come back as two gathered copies; one tensor under both names, as in
    # the unsharded model, lets save_pretrained drop the tied name as it does without FSDP.
    first: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first and name in state and first[id(param)] in state:
            state[name] = state[first[id(param)]]
        first.setdefault(id(param), name)
    return state
