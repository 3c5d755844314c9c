"""Benchmark: openft's training engine against TRL's SFTTrainer, defaults and padding-free, in one run.

All sides train the same synthetic chat data (64 examples, 50-400 tokens), model, LoRA rank, batch
size, learning rate and seed, each in its own process (openft's launched as the worker launches it,
via ``child_command``'s environment). Baselines: TRL ``SFTTrainer`` with its defaults (bf16, padded
batches, gradient checkpointing on), and the same with ``padding_free=True``. Prints the CPU it ran
on, tokens/s (real, non-padding tokens), the ratios, model FLOPs utilisation against this CPU's bf16
matmul peak measured in the same run (FLOPs counted as ``bench/workload.py`` says: 4 x N per token for
LoRA, 6 x N for full, the head on trained tokens, plus attention) and the first steps' losses.

    python bench/train_throughput.py                  # SmolLM2-135M-Instruct from the packaged GGUF
    python bench/train_throughput.py --model DIR      # any local HF directory (e.g. a tiny model)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from workload import DataStats, ModelFlops, lora_parameters, matmul_peak_flops, synthetic_rows, throughput

SIDES = {
    "openft": "openft",
    "trl": "TRL SFTTrainer (defaults)",
    "trl-padding-free": "TRL SFTTrainer (padding_free=True)",
    "trl-fp32": "TRL SFTTrainer (bf16=False)",
}
MAX_SEQ_LENGTH = 1024


# ---- one side per process -------------------------------------------------------------------------


def run_openft(args: argparse.Namespace, work: Path) -> dict:
    from openft.training.recipe import train
    from openft.training.spec import TrainingSpec

    spec = TrainingSpec(
        job_id="bench",
        method="supervised",
        base_model_path=args.model,
        training_file=str(work / "train.jsonl"),
        output_dir=str(work / "openft"),
        seed=args.seed,
        n_epochs=1,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        lora_rank=args.rank,
        lora_alpha=2.0 * args.rank,
        warmup_ratio=0.0,
        checkpoint_interval_seconds=1e9,
        max_seq_length=MAX_SEQ_LENGTH,
    )
    steps: list[dict] = []

    class Reporter:
        def emit(self, line: dict) -> None:
            if line["type"] == "metrics":
                steps.append(
                    {
                        "time": time.perf_counter(),
                        "tokens": line["tokens"],
                        "loss": line["data"]["train_loss"],
                    }
                )

        def stop_requested(self):
            return "cancel" if len(steps) >= args.steps + 1 else None

    start = time.perf_counter()
    train(spec, Reporter())
    return {"start": start, "steps": steps}


def run_trl(args: argparse.Namespace, work: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    rows = [json.loads(line) for line in (work / "train.jsonl").read_text().splitlines()]
    # Prompt/completion form so TRL's default completion-only loss trains the same tokens as openft.
    data = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows])
    steps: list[dict] = []

    class Timer(TrainerCallback):
        def on_step_end(self, targs, state, control, **kwargs):
            steps.append({"time": time.perf_counter(), "seen": int(state.num_input_tokens_seen)})
            if len(steps) >= args.steps + 1:
                control.should_training_stop = True

        def on_log(self, targs, state, control, logs=None, **kwargs):
            if logs and "loss" in logs and steps:
                steps[-1]["loss"] = logs["loss"]

    config = SFTConfig(
        output_dir=str(work / "trl"),
        per_device_train_batch_size=args.batch_size,
        num_train_epochs=1,
        learning_rate=args.lr,
        seed=args.seed,
        use_cpu=True,  # required on a machine without a GPU
        **({"bf16": False} if args.side == "trl-fp32" else {}),
        # padding-free does not truncate; these examples are shorter than any limit anyway
        **({"padding_free": True, "max_length": None} if args.side == "trl-padding-free" else {}),
        logging_steps=1,  # loss per step for the side-by-side check; no effect on training
        include_num_input_tokens_seen="non_padding",  # counting only
        save_strategy="no",
        report_to="none",
    )
    peft = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0, target_modules="all-linear")
    torch.manual_seed(args.seed)
    trainer = SFTTrainer(
        model=args.model, args=config, train_dataset=data, peft_config=peft, callbacks=[Timer()]
    )
    start = time.perf_counter()
    trainer.train()
    out = []
    previous = 0
    for step in steps:
        out.append({"time": step["time"], "tokens": step["seen"] - previous, "loss": step.get("loss")})
        previous = step["seen"]
    return {"start": start, "steps": out}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="local HF model directory (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "openft" / "base-models"))
    parser.add_argument("--steps", type=int, default=8, help="measured steps per side (plus one warm-up)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--trl-fp32",
        action="store_true",
        help="also run TRL with bf16=False (its default bf16 is emulated, ~5x slower, on AVX2-only CPUs)",
    )
    parser.add_argument(
        "--skip-trl-default",
        action="store_true",
        help="skip TRL's default configuration (with --trl-fp32: compare against TRL in fp32 only)",
    )
    parser.add_argument(
        "--skip-trl-padding-free", action="store_true", help="skip TRL with padding_free=True"
    )
    parser.add_argument("--side", choices=list(SIDES), help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.side:
        result = (
            run_openft(args, Path(args.work)) if args.side == "openft" else run_trl(args, Path(args.work))
        )
        print("BENCH_RESULT " + json.dumps(result), flush=True)
        return

    if not args.model:
        from openft.settings import SMOLLM2_PACKAGE_SOURCE
        from openft.training.base_models import materialize

        args.model = str(materialize(SMOLLM2_PACKAGE_SOURCE, Path(args.cache_dir)))
    from openft.training.hardware import cpu_has_native_bf16, cpu_name
    from openft.training.launch import child_command

    rows = synthetic_rows(args.examples, 0)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        native_bf16 = cpu_has_native_bf16()
        # Without native bf16 (AVX2-only CPUs) one bf16 2048^2 matmul takes about a minute: time 512^2.
        peaks = {
            "bf16": matmul_peak_flops("bfloat16", 2048 if native_bf16 else 512),
            "fp32": matmul_peak_flops("float32"),
        }
        peak = peaks["bf16"] if native_bf16 else max(peaks.values())
        results = {}
        baselines = (
            (() if args.skip_trl_default else ("trl",))
            + (() if args.skip_trl_padding_free else ("trl-padding-free",))
            + (("trl-fp32",) if args.trl_fp32 else ())
        )
        if not baselines:
            sys.exit("nothing to compare against: drop --skip-trl-default or --skip-trl-padding-free")
        for side in ("openft", *baselines):
            argv = [sys.executable, __file__, "--side", side, "--work", str(work), "--model", args.model]
            argv += ["--steps", str(args.steps), "--batch-size", str(args.batch_size), "--lr", str(args.lr)]
            argv += ["--rank", str(args.rank), "--seed", str(args.seed)]
            # openft runs as the worker starts it (tcmalloc preloaded when installed); TRL as users run it
            env = child_command(work / "unused.json")[1] if side == "openft" else dict(os.environ)
            done = subprocess.run(argv, env=env, capture_output=True, text=True)
            marker = [line for line in done.stdout.splitlines() if line.startswith("BENCH_RESULT ")]
            if done.returncode != 0 or not marker:
                sys.exit(f"{side} side failed:\n{done.stderr[-4000:]}")
            results[side] = json.loads(marker[-1].removeprefix("BENCH_RESULT "))
            print(f"{side}: {throughput(results[side]['steps']):.1f} tokens/s", flush=True)

    from transformers import AutoConfig

    from openft.training.models import load_tokenizer

    config = AutoConfig.from_pretrained(args.model)
    stats = DataStats.of(rows, load_tokenizer(args.model), MAX_SEQ_LENGTH)
    flops_per_token = ModelFlops.of(config).per_token(stats, "lora", lora_parameters(config, args.rank))
    print(f"model: {args.model}")
    print(
        f"CPU: {cpu_name()}, {len(os.sched_getaffinity(0))} threads, native bf16: {native_bf16}; matmul peak "
        f"GFLOP/s: bf16 {peaks['bf16'] / 1e9:.1f}, fp32 {peaks['fp32'] / 1e9:.1f} (MFU against "
        f"{'bf16' if native_bf16 else 'the higher'})"
    )
    print(
        f"batch {args.batch_size}, LoRA rank {args.rank}, lr {args.lr}, {args.steps} measured steps + 1 warm-up; "
        f"{stats.tokens / stats.examples:.0f} tokens per example, {100 * stats.trained_tokens / stats.tokens:.0f}% "
        f"trained; {flops_per_token / 1e9:.3f} GFLOP per token (4N LoRA + head on trained tokens + attention)"
    )
    rates = {}
    for side, label in SIDES.items():
        if side not in results:
            continue
        rate = throughput(results[side]["steps"])
        rates[side] = rate
        print(f"{label:36s} {rate:8.1f} tokens/s   MFU {100 * flops_per_token * rate / peak:5.1f}%")
    floors = {"trl": 2.5, "trl-padding-free": 1.8, "trl-fp32": None}
    for side in baselines:
        floor = f" (floor {floors[side]}x)" if floors[side] and native_bf16 else ""
        print(f"ratio openft / {SIDES[side]}: {rates['openft'] / rates[side]:.2f}x{floor}")
    print("step  openft_loss  " + "  ".join(f"{side:>16s}" for side in baselines))
    print("      (different shuffles and batching: equal within noise, not bit for bit)")
    for i, steps in enumerate(
        zip(*(results[side]["steps"] for side in ("openft", *baselines)), strict=False), 1
    ):
        cells = [f"{s['loss']:16.4f}" if s.get("loss") is not None else f"{'n/a':>16s}" for s in steps[1:]]
        print(f"{i:4d}  {steps[0]['loss']:11.4f}  " + "  ".join(cells))


if __name__ == "__main__":
    main()
