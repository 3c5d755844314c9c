"""Benchmark on one GPU: openft against TRL's SFTTrainer (defaults) on the same GPU, data and models.

Rows (each openft, then TRL, in separate processes): about-1B Llama full fine-tuning, about-8B Llama
LoRA, about-8B QLoRA (openft; TRL with ``--trl-qlora``). The models are random-initialised from
Llama-architecture configs with SmolLM2's tokenizer (``--tokenizer``), written once under ``--work``;
the data is the same synthetic chat set for every side. Needs no internet and no model files: only
torch, transformers, peft and accelerate, plus trl, datasets and bitsandbytes carried as wheels
(``scripts/gpu-wheels.sh``).

Prints per side: tokens/s (non-padding tokens), MFU against the bf16 matmul peak measured in the same
run (FLOPs as in ``bench/workload.py``: 4N per token for LoRA, 6N for full, head on trained tokens,
attention), peak GPU memory (and openft's estimate of it), the ratio, and the first steps' losses.
Floors (issue 9): 8B LoRA >= 40% MFU and >= 1.5x TRL; 1B full >= 35% MFU; 8B QLoRA runs.

With more than one GPU, the 1B full and 8B LoRA rows also run openft on two GPUs (torchrun: FSDP2 for
full, DDP for LoRA; the same global batch, so each GPU trains half of it) and print the scaling
efficiency: tokens/s on two GPUs over twice the one-GPU rate. ``--smoke`` runs that row too, on two
CPU processes (gloo), so the path is exercised anywhere; its figures mean nothing.

    python bench/gpu.py                  # one H200: about 6 minutes (two GPUs: a few more)
    python bench/gpu.py --smoke          # any machine, CPU included: tiny configs, a few steps
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from workload import DataStats, ModelFlops, lora_parameters, matmul_peak_flops, synthetic_rows, throughput

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {  # Llama-3.2-1B-like and Llama-3.1-8B-like bodies; the vocabulary is the tokenizer's
    "1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
           "num_key_value_heads": 8, "tie_word_embeddings": True},
    "8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8, "tie_word_embeddings": False},
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "tie_word_embeddings": True},
}  # fmt: skip
# (row name, model, fine-tuning type, sides)
ROWS = [
    ("1B full", "1b", "full", ("openft", "trl")),
    ("8B LoRA", "8b", "lora", ("openft", "trl")),
    ("8B QLoRA", "8b", "qlora", ("openft",)),
]
SMOKE_ROWS = [
    ("tiny full", "tiny", "full", ("openft", "trl")),
    ("tiny LoRA", "tiny", "lora", ("openft", "trl")),
]
FLOORS = {"8B LoRA": (0.40, 1.5), "1B full": (0.35, None)}
# Rows that openft also runs on two devices, for the scaling efficiency.
SCALING_ROWS = ("1B full", "8B LoRA", "tiny full", "tiny LoRA")
MAX_SEQ_LENGTH = 2048


def build_model(name: str, tokenizer_dir: Path, work: Path, device: str) -> Path:
    """A random-initialised model directory (bf16 safetensors, the tokenizer beside), built once."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    path = work / f"llama-{name}"
    if (path / "config.json").is_file():
        return path
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=8192,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **CONFIGS[name],
    )
    torch.manual_seed(0)
    with torch.device(device):  # initialise where it is fast; an 8B model takes seconds on a GPU
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    staging = work / f".llama-{name}-partial"
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    os.rename(staging, path)
    del model
    return path


# ---- one side per process ---------------------------------------------------------------------------


def openft_output(args: argparse.Namespace, devices: int) -> Path:
    return Path(args.work) / f"openft-{args.type}-{Path(args.model).name}-x{devices}"


def run_openft(args: argparse.Namespace) -> dict:
    """One openft side; under torchrun (``--devices N``) every rank runs this, rank 0 reports."""
    import torch

    from openft.training.memory import DeviceMemory, ModelShape, Setup, estimate, plan
    from openft.training.recipe import train
    from openft.training.spec import TrainingSpec

    cuda = torch.cuda.is_available()
    devices = int(os.environ.get("WORLD_SIZE", "1"))
    shape = ModelShape.from_dir(args.model)
    setup = Setup(
        device="cuda" if cuda else "cpu", fine_tuning_type=args.type, lora_rank=args.rank, n_devices=devices
    )
    if cuda:  # what the worker would hand the child: the memory plan for this GPU
        props = torch.cuda.get_device_properties(int(os.environ.get("LOCAL_RANK", "0")))
        planned = plan(shape, setup, DeviceMemory("cuda", props.name, props.total_memory), MAX_SEQ_LENGTH)
        sizing = {
            "micro_batch_tokens": planned.micro_batch_tokens,
            "gradient_checkpointing": planned.gradient_checkpointing,
        }
    else:
        sizing = {}
    spec = TrainingSpec(
        job_id="bench",
        method="supervised",
        base_model_path=args.model,
        training_file=str(Path(args.work) / "train.jsonl"),
        output_dir=str(openft_output(args, devices)),
        seed=0,
        n_epochs=1,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        fine_tuning_type=args.type,
        lora_rank=args.rank,
        lora_alpha=2.0 * args.rank,
        warmup_ratio=0.0,
        checkpoint_interval_seconds=1e9,
        max_seq_length=MAX_SEQ_LENGTH,
        n_devices=devices,
        **sizing,
    )
    steps: list[dict] = []
    messages: list[str] = []

    class Reporter:
        def emit(self, line: dict) -> None:
            if line["type"] == "metrics":
                if cuda:
                    torch.cuda.synchronize()
                steps.append(
                    {
                        "time": time.perf_counter(),
                        "tokens": line["tokens"],
                        "loss": line["data"]["train_loss"],
                    }
                )
            elif line["type"] == "message":
                messages.append(line["message"])

        def stop_requested(self):
            # rank 0 alone sees the metrics; every rank stops where it says (the recipe agrees)
            return "cancel" if len(steps) >= args.steps + 1 else None

    train(spec, Reporter())
    expected = estimate(shape, setup, spec.micro_batch_tokens, spec.gradient_checkpointing).total
    return {
        "steps": steps,
        "peak": torch.cuda.max_memory_allocated() if cuda else None,
        "estimate": expected,
        "note": f"{messages[0] if messages else ''}; micro-batch {spec.micro_batch_tokens} tokens, "
        f"gradient checkpointing {'on' if spec.gradient_checkpointing else 'off'}",
    }


def run_trl(args: argparse.Namespace) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    cuda = torch.cuda.is_available()
    rows = [json.loads(line) for line in (Path(args.work) / "train.jsonl").read_text().splitlines()]
    # Prompt/completion form so TRL's default completion-only loss trains the same tokens as openft.
    data = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows])
    steps: list[dict] = []

    class Timer(TrainerCallback):
        def on_step_end(self, targs, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            steps.append({"time": time.perf_counter(), "seen": int(state.num_input_tokens_seen)})
            if len(steps) >= args.steps + 1:
                control.should_training_stop = True

        def on_log(self, targs, state, control, logs=None, **kwargs):
            if logs and "loss" in logs and steps:
                steps[-1]["loss"] = logs["loss"]

    model_kwargs = {}
    if args.type == "qlora":
        from transformers import BitsAndBytesConfig

        model_kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )  # fmt: skip
    config = SFTConfig(
        output_dir=str(Path(args.work) / "trl"),
        per_device_train_batch_size=args.batch_size,
        num_train_epochs=1,
        learning_rate=args.lr,
        seed=0,
        max_length=MAX_SEQ_LENGTH,
        use_cpu=not cuda,
        logging_steps=1,  # loss per step for the side-by-side check; no effect on training
        include_num_input_tokens_seen="non_padding",  # counting only
        save_strategy="no",
        report_to="none",
        **({"model_init_kwargs": model_kwargs} if model_kwargs else {}),
    )
    peft = None
    if args.type != "full":
        peft = LoraConfig(
            r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0, target_modules="all-linear"
        )
    torch.manual_seed(0)
    trainer = SFTTrainer(
        model=args.model, args=config, train_dataset=data, peft_config=peft, callbacks=[Timer()]
    )
    trainer.train()
    out, previous = [], 0
    for step in steps:
        out.append({"time": step["time"], "tokens": step["seen"] - previous, "loss": step.get("loss")})
        previous = step["seen"]
    return {"steps": out, "peak": torch.cuda.max_memory_allocated() if cuda else None, "note": "defaults"}


# ---- the run ---------------------------------------------------------------------------------------------


def side(
    args: argparse.Namespace, which: str, model: Path, fine_tuning_type: str, devices: int = 1
) -> dict | str:
    """Run one side in a fresh process (``devices`` > 1: that many ranks under torchrun); its
    result, or why it failed."""
    argv = [__file__, "--side", which, "--model", str(model), "--type", fine_tuning_type]
    argv += ["--work", str(args.work), "--steps", str(args.steps), "--batch-size", str(args.batch_size)]
    argv += ["--lr", str(args.lr), "--rank", str(args.rank)]
    if devices > 1:
        argv = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(devices), *argv]
    argv = [sys.executable, *argv]
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])),
    )
    if which == "openft":
        from openft.training.launch import child_command

        env = {**child_command(Path(args.work) / "unused.json", devices)[1], "PYTHONPATH": env["PYTHONPATH"]}
        # a fresh run: an earlier one's checkpoints would be resumed
        shutil.rmtree(
            openft_output(argparse.Namespace(work=args.work, type=fine_tuning_type, model=model), devices),
            ignore_errors=True,
        )
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=args.side_timeout)
    marker = [line for line in done.stdout.splitlines() if line.startswith("BENCH_RESULT ")]
    if done.returncode != 0 or not marker:
        tail = done.stderr.strip().splitlines()[-3:]
        return f"failed (exit {done.returncode}): {' | '.join(tail)}"
    result = json.loads(marker[-1].removeprefix("BENCH_RESULT "))
    result["wall"] = time.perf_counter() - started
    return result


def gib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**30:.1f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny models, few steps: check the script anywhere"
    )
    parser.add_argument("--tokenizer", help="tokenizer directory (default: .gpu-carry/smollm2-tokenizer)")
    parser.add_argument("--work", default=os.environ.get("TMPDIR", "/tmp") + "/openft-gpu-bench")
    parser.add_argument("--steps", type=int, default=6, help="measured steps per side (plus one warm-up)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--examples", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--rows", help="comma-separated row names to run (default: all)")
    parser.add_argument("--skip-trl", action="store_true", help="openft sides only")
    parser.add_argument("--trl-qlora", action="store_true", help="also run TRL on the QLoRA row")
    parser.add_argument("--side-timeout", type=float, default=600.0)
    parser.add_argument("--side", choices=["openft", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--type", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.side:
        result = run_openft(args) if args.side == "openft" else run_trl(args)
        if os.environ.get("RANK", "0") == "0":
            print("BENCH_RESULT " + json.dumps(result), flush=True)
        if "RANK" in os.environ:  # a torchrun rank: leave as the training child's ranks do
            from openft.training.child import leave_now

            leave_now(sys.stdout, 0)
        return

    import torch

    began = time.perf_counter()
    cuda = torch.cuda.is_available()
    # two GPUs, or (--smoke) two CPU processes that exercise the same path
    scaling_devices = 2 if (torch.cuda.device_count() > 1 or (args.smoke and not cuda)) else 0
    device = "cuda" if cuda else "cpu"
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = SMOKE_ROWS if args.smoke else ROWS
    if args.rows:
        rows = [r for r in rows if r[0] in args.rows.split(",")]
    if args.smoke:
        args.steps, args.batch_size, args.examples = (
            min(args.steps, 2),
            min(args.batch_size, 2),
            min(args.examples, 8),
        )
    if args.smoke and not args.tokenizer:
        from openft.training.tiny import build_tiny_model

        args.tokenizer = str(build_tiny_model(work / "tiny-tokenizer"))
    tokenizer_dir = Path(args.tokenizer or REPO / ".gpu-carry" / "smollm2-tokenizer")
    if not (tokenizer_dir / "tokenizer_config.json").is_file():
        sys.exit(f"no tokenizer in {tokenizer_dir}: run scripts/gpu-wheels.sh first, or pass --tokenizer DIR")

    from transformers import AutoConfig, AutoTokenizer

    answer_words = (20, 60) if args.smoke else (100, 1400)
    data = synthetic_rows(args.examples, 0, answer_words)
    (work / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    stats = DataStats.of(data, AutoTokenizer.from_pretrained(tokenizer_dir), MAX_SEQ_LENGTH)
    peak = matmul_peak_flops("bfloat16", 8192 if cuda else 1024, 2.0 if cuda else 1.0, device)
    name = torch.cuda.get_device_name(0) if cuda else "CPU (smoke run: figures mean nothing)"
    print(f"device: {name}; bf16 matmul peak {peak / 1e12:.3g} TFLOP/s (measured now)", flush=True)
    print(
        f"data: {stats.examples} examples, {stats.tokens / stats.examples:.0f} tokens each on average, "
        f"{100 * stats.trained_tokens / stats.tokens:.0f}% trained; batch {args.batch_size}, "
        f"{args.steps} measured steps + 1 warm-up per side",
        flush=True,
    )

    summary = []
    for row_name, model_name, fine_tuning_type, sides in rows:
        if fine_tuning_type == "qlora" and not cuda:
            print(f"\n{row_name}: skipped (QLoRA needs CUDA)", flush=True)
            continue
        model = build_model(model_name, tokenizer_dir, work, device)
        config = AutoConfig.from_pretrained(model)
        lora = lora_parameters(config, args.rank) if fine_tuning_type != "full" else 0
        per_token = ModelFlops.of(config).per_token(stats, fine_tuning_type, lora)
        from openft.training.memory import ModelShape

        n_params = ModelShape.from_dir(model).parameters
        print(
            f"\n{row_name}: {n_params / 1e9:.2f}B parameters, {per_token / 1e9:.2f} GFLOP per token",
            flush=True,
        )
        if args.trl_qlora and fine_tuning_type == "qlora":
            sides = (*sides, "trl")
        results = {}
        for which in sides:
            if which == "trl" and args.skip_trl:
                continue
            result = side(args, which, model, fine_tuning_type)
            results[which] = result
            if isinstance(result, str):
                print(f"  {which:7s} {result}", flush=True)
                continue
            rate = throughput(result["steps"])
            mfu = per_token * rate / peak
            estimate = f" (openft's estimate {gib(result['estimate'])})" if result.get("estimate") else ""
            print(
                f"  {which:7s} {rate:9.0f} tokens/s  MFU {100 * mfu:5.1f}%  peak memory {gib(result['peak'])}"
                f"{estimate}  [{result['note']}; {result['wall']:.0f} s]",
                flush=True,
            )
            result["rate"], result["mfu"] = rate, mfu
        if scaling_devices and row_name in SCALING_ROWS and isinstance(results.get("openft"), dict):
            wide = side(args, "openft", model, fine_tuning_type, scaling_devices)
            label = f"openft x{scaling_devices}"
            if isinstance(wide, str):
                print(f"  {label} {wide}", flush=True)
            else:
                wide["rate"] = throughput(wide["steps"])
                wide["mfu"] = per_token * wide["rate"] / (scaling_devices * peak)
                efficiency = wide["rate"] / (scaling_devices * results["openft"]["rate"])
                print(
                    f"  {label} {wide['rate']:7.0f} tokens/s  MFU {100 * wide['mfu']:5.1f}% (per device)  "
                    f"peak memory {gib(wide['peak'])} on rank 0 (openft's estimate {gib(wide['estimate'])})  "
                    f"[{wide['note']}; {wide['wall']:.0f} s]",
                    flush=True,
                )
                print(
                    f"  scaling efficiency on {scaling_devices} devices: {100 * efficiency:.0f}% "
                    f"({wide['rate']:.0f} tokens/s over {scaling_devices} x {results['openft']['rate']:.0f})",
                    flush=True,
                )
                results[label] = wide
        ok = {k: v for k, v in results.items() if isinstance(v, dict)}
        if "openft" in ok and "trl" in ok:
            ratio = ok["openft"]["rate"] / ok["trl"]["rate"]
            print(f"  ratio openft / TRL: {ratio:.2f}x", flush=True)
            print("  step  openft_loss  trl_loss", flush=True)
            for i, (a, b) in enumerate(zip(ok["openft"]["steps"], ok["trl"]["steps"], strict=False), 1):
                trl_loss = f"{b['loss']:.4f}" if b.get("loss") is not None else "n/a"
                print(f"  {i:4d}  {a['loss']:11.4f}  {trl_loss:>8s}", flush=True)
        summary.append((row_name, ok))

    print("\nfloors (issue 9):")
    for row_name, ok in summary:
        mfu_floor, ratio_floor = FLOORS.get(row_name, (None, None))
        parts = []
        if "openft" in ok and mfu_floor is not None:
            got = ok["openft"]["mfu"]
            parts.append(
                f"MFU {100 * got:.1f}% vs >= {100 * mfu_floor:.0f}%: {'met' if got >= mfu_floor else 'NOT met'}"
            )
        if "openft" in ok and "trl" in ok and ratio_floor is not None:
            got = ok["openft"]["rate"] / ok["trl"]["rate"]
            parts.append(f"{got:.2f}x TRL vs >= {ratio_floor}x: {'met' if got >= ratio_floor else 'NOT met'}")
        if "QLoRA" in row_name:
            parts.append("runs" if "openft" in ok else "did NOT run")
        if parts:
            print(f"  {row_name}: " + "; ".join(parts))
    print(f"total {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
