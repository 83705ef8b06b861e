"""--parallelism: the auto choice (hand-computed memory), the one-line refusals, and FSDP2 / HSDP on 2 gloo CPU
workers against a 1-process run with the same global batch (the independent second code path)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import final_weights, max_weight_diff, metrics, only_run, run_strata, torchrun_train

from strata.config import parse_run_config
from strata.errors import StrataError
from strata.training.parallel import choose_parallelism, planned_parallelism

COMMON = ["--model", "llama-tiny", "--max_length", "64", "--max_steps", "3", "--eval_steps", "0",
          "--max_eval_examples", "4", "--precision", "fp32", "--warmup_steps", "0", "--seed", "5",
          "--device", "cpu"]
GIB = 2**30


# ---------------------------------------------------------------------------- the auto choice
def test_auto_choice_follows_the_memory_arithmetic():
    # 0.5B full: 0.5e9 x (4 weights + 4 grads + 8 AdamW) bytes = 7.45 GiB <= 60% of 80 GiB -> ddp
    assert choose_parallelism(500_000_000, lora=False, devices=8, device_memory_gib=80)[0] == "ddp"
    # 8B full: 8e9 x 16 B = 119.2 GiB > 48 GiB -> fsdp; the reason carries the number
    choice, reason = choose_parallelism(8_000_000_000, lora=False, devices=8, device_memory_gib=80)
    assert choice == "fsdp" and f"{8e9 * 16 / GIB:.2f} GiB" in reason, reason
    # 8B LoRA: bf16 base 8e9 x 2 B = 14.9 GiB fits -> ddp
    choice, reason = choose_parallelism(8_000_000_000, lora=True, devices=8, device_memory_gib=80)
    assert choice == "ddp" and f"{8e9 * 2 / GIB:.2f} GiB" in reason, reason
    # 3B full on a 24 GiB GPU: 44.7 GiB > 14.4 GiB -> fsdp
    assert choose_parallelism(3_000_000_000, lora=False, devices=2, device_memory_gib=24)[0] == "fsdp"
    assert choose_parallelism(8_000_000_000, lora=False, devices=1)[0] == "none"
    assert choose_parallelism(10**8, lora=False, devices=16, nodes=2, device_memory_gib=80)[0] == "hsdp"
    assert choose_parallelism(10**8, lora=False, devices=4, processes=1)[0] == "dp"
    choice, reason = choose_parallelism(10**9, lora=False, devices=2, device_type="cpu")
    assert choice == "ddp" and "CPU" in reason


def _config(*flags: str):
    return parse_run_config(["--model", "llama-tiny", *flags])


@pytest.mark.parametrize(("flags", "world", "message"), [
    (["--parallelism", "fsdp"], 1, "--parallelism fsdp needs several processes"),
    (["--parallelism", "ddp"], 1, "--parallelism ddp needs several processes"),
    (["--parallelism", "dp", "--device", "cpu"], 1, "--parallelism dp (DataParallel) needs one process"),
    (["--parallelism", "none", "--device", "cpu"], 2, "would still run DDP"),
    (["--parallelism", "fsdp", "--load_best_model_at_end", "--save_steps", "2", "--eval_steps", "2", "--device",
      "cpu"], 2, "with --load_best_model_at_end"),
    (["--parallelism", "hsdp", "--use_lora", "--merge_lora", "--device", "cpu"], 2, "with --merge_lora: merging"),
    (["--parallelism", "fsdp", "--use_lora", "--load_in_4bit", "--device", "cpu"], 2, "with --load_in_4bit is not wired"),
    (["--parallelism", "fsdp", "--fsdp_cpu_offload", "--device", "cpu"], 2, "nothing to offload"),
    (["--parallelism", "ddp", "--fsdp_cpu_offload", "--device", "cpu"], 2, "is an FSDP setting"),
    (["--parallelism", "hsdp", "--hsdp_replicas", "3", "--device", "cpu"], 2, "must divide the 2 processes"),
    (["--parallelism", "sharded"], 1, "is not one of auto, none, dp, ddp, fsdp, hsdp"),
])
def test_a_parallelism_that_would_run_as_something_else_is_refused(flags, world, message):
    with pytest.raises(StrataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        planned_parallelism(_config(*flags), world)


def test_auto_on_one_cpu_process_is_none_and_the_cli_refuses_in_one_line(tmp_path, capsys):
    plan = planned_parallelism(_config("--device", "cpu"), 1)
    assert (plan.choice, plan.mesh_shape) == ("none", None)
    assert planned_parallelism(_config("--device", "cpu"), 2).choice == "ddp"
    hsdp = planned_parallelism(_config("--device", "cpu", "--parallelism", "hsdp", "--hsdp_replicas", "2"), 2)
    assert hsdp.mesh_shape == (2, 1)
    assert run_strata("train", "--parallelism", "fsdp", "--device", "cpu", "--runs_dir", tmp_path / "runs") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--parallelism fsdp needs several processes" in err[0], err
    assert not (tmp_path / "runs").exists()
    # Trainer's own --fsdp (DDP on CPU, one rank's shard in final/) stays refused and points at --parallelism
    assert run_strata("train", "--fsdp", "full_shard", "--runs_dir", tmp_path / "runs") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "use --parallelism fsdp" in err[0], err


# ---------------------------------------------------------------------------- 2 gloo workers
def _two_workers(runs_dir, *flags: str) -> None:
    done = torchrun_train(*COMMON, "--per_device_train_batch_size", "2", "--runs_dir", runs_dir, *flags)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("one")
    assert run_strata("train", *COMMON, "--per_device_train_batch_size", "4", "--runs_dir", runs) == 0
    run = only_run(runs)
    assert metrics(run)["run"]["parallelism"] == {"choice": "none", "reason": "one device: nothing to distribute",
                                                  "wrapper": "none"}
    return run


def test_the_choice_and_its_reason_are_in_tensorboard(one_process_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(one_process_run / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    text = events.Tensors("run/parallelism/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "none" in text and "one device: nothing to distribute" in text, text


gloo = pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                          reason="gloo backend unavailable")


@gloo
@pytest.mark.parametrize(("flags", "wrapper", "mesh"), [
    (["--parallelism", "fsdp"], "FSDPModule", [2]),
    (["--parallelism", "hsdp", "--hsdp_replicas", "2"], "FSDPModule", [2, 1]),  # replicate x shard
    # one node: one replica sharded over both workers; gradients held over 2 micro-batches (global batch 1x2x2)
    (["--parallelism", "hsdp", "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "2"],
     "FSDPModule", [1, 2]),
    (["--parallelism", "fsdp", "--gradient_checkpointing"], "FSDPModule", [2]),  # recomputed, same training
    ([], "DistributedDataParallel", None),  # auto on CPU processes
])
def test_two_workers_equal_one_process_with_the_same_global_batch(tmp_path, one_process_run, flags, wrapper, mesh):
    from transformers import AutoModelForCausalLM

    _two_workers(tmp_path / "runs", *flags)
    run = only_run(tmp_path / "runs")
    record = metrics(run)["run"]["parallelism"]
    assert record["wrapper"] == wrapper, record  # what actually ran, read back after Trainer's prepare
    assert record.get("mesh") == mesh and record["choice"] == (flags[1] if flags else "ddp"), record
    diff = max_weight_diff(final_weights(run), final_weights(one_process_run))
    assert diff <= 1e-5, diff
    # final/ is the whole model (not one rank's shard), read back by plain transformers in this process.
    model = AutoModelForCausalLM.from_pretrained(run / "final")
    reference = final_weights(one_process_run)
    for name, tensor in model.state_dict().items():
        if name in reference:
            torch.testing.assert_close(tensor, reference[name], atol=1e-5, rtol=0)


# Loads a LoRA run's final/ with transformers + peft alone (strata made unimportable): base_model/ + the adapters.
PEFT_LOAD = textwrap.dedent("""
    import sys
    sys.modules["strata"] = None
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    def load(run):
        return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(run + "/base_model"), run + "/final")
    a, b = (load(run).state_dict() for run in sys.argv[1:3])
    assert a.keys() == b.keys() and max(float(b[k].abs().max()) for k in b if "lora_B" in k) > 0  # trained
    print(max(float((a[k] - b[k]).abs().max()) for k in a))
""")


@gloo
def test_fsdp_lora_on_two_workers_equals_one_process(tmp_path):
    lora = ["--use_lora", "--lora_r", "4", "--lora_dropout", "0"]  # dropout masks depend on the per-rank split
    assert run_strata("train", *COMMON, *lora, "--per_device_train_batch_size", "4", "--runs_dir", tmp_path / "one") == 0
    # peft's own PeftModel init fires transformers' is_gradient_checkpointing FutureWarning: not an error here
    done = torchrun_train(*COMMON, *lora, "--per_device_train_batch_size", "2", "--parallelism", "fsdp",
                          "--runs_dir", tmp_path / "two", future_warnings_fail=False)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = only_run(tmp_path / "one"), only_run(tmp_path / "two")
    assert metrics(two)["run"]["parallelism"]["wrapper"] == "FSDPModule"
    compared = subprocess.run([sys.executable, "-c", PEFT_LOAD, str(one), str(two)], capture_output=True, text=True)
    assert compared.returncode == 0, compared.stderr[-2000:]
    diff = float(compared.stdout.split()[-1])
    assert diff <= 1e-5, diff
