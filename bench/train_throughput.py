"""Benchmark: openft's training engine against TRL's SFTTrainer (default configuration) on the same run.

Both sides train the same synthetic chat data (64 examples, 50-400 tokens), model, LoRA rank,
batch size, learning rate and seed, each in its own process (openft's launched as the worker
launches it, via ``child_command``'s environment). Prints tokens/s (real, non-padding tokens),
their ratio, model FLOPs utilisation (6 x trainable-forward params x tokens/s against this CPU's
bf16 matmul peak, measured in the same run) and the first steps' losses side by side.

    python bench/train_throughput.py                  # SmolLM2-135M-Instruct from the packaged GGUF
    python bench/train_throughput.py --model DIR      # any local HF directory (e.g. a tiny model)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOPICS = ["the ocean", "a bicycle", "tax forms", "volcanoes", "jazz", "gardening", "compilers", "tea"]
WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "it",
    "for",
    "on",
    "with",
    "as",
    "was",
    "at",
    "by",
    "an",
    "be",
    "this",
    "which",
    "or",
    "from",
    "but",
    "not",
    "are",
    "have",
    "one",
    "all",
    "were",
    "when",
    "there",
    "can",
    "more",
    "if",
    "out",
    "so",
    "what",
    "up",
    "about",
    "into",
    "than",
    "them",
    "some",
    "could",
    "time",
]


def synthetic_rows(n: int, seed: int) -> list[dict]:
    """Chat examples whose lengths spread over roughly 50-400 tokens."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        question = f"Tell me something about {topic}. " + " ".join(rng.choices(WORDS, k=rng.randint(5, 40)))
        answer = " ".join(rng.choices(WORDS, k=rng.randint(20, 280))) + "."
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
    return rows


def matmul_peak_flops(dtype_name: str, size: int = 2048, seconds: float = 3.0) -> float:
    """FLOP/s of a square matmul loop (at least one timed iteration)."""
    import torch

    dtype = getattr(torch, dtype_name)
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    a @ b
    count, start = 0, time.perf_counter()
    while count == 0 or time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - start)


def forward_params(model_dir: str) -> int:
    """Parameters a forward pass multiplies by (embedding lookup excluded, LM head included)."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(model_dir)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    attn = c.hidden_size * head_dim * (2 * c.num_attention_heads + 2 * c.num_key_value_heads)
    mlp = 3 * c.hidden_size * c.intermediate_size
    return c.num_hidden_layers * (attn + mlp) + c.hidden_size * c.vocab_size


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
        max_seq_length=1024,
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


def throughput(steps: list[dict]) -> float:
    """Tokens/s over every step but the first (warm-up)."""
    measured = steps[1:]
    return sum(s["tokens"] for s in measured) / (measured[-1]["time"] - steps[0]["time"])


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
    parser.add_argument("--side", choices=["openft", "trl", "trl-fp32"], help=argparse.SUPPRESS)
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
    from openft.training.launch import child_command

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "train.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in synthetic_rows(args.examples, 0))
        )
        from openft.training.recipe import cpu_has_native_bf16

        native_bf16 = cpu_has_native_bf16()
        # Without native bf16 (AVX2-only CPUs) one bf16 2048^2 matmul takes about a minute: time 512^2.
        peaks = {
            "bf16": matmul_peak_flops("bfloat16", 2048 if native_bf16 else 512),
            "fp32": matmul_peak_flops("float32"),
        }
        peak = max(peaks.values())
        results = {}
        baselines = (() if args.skip_trl_default else ("trl",)) + (("trl-fp32",) if args.trl_fp32 else ())
        if not baselines:
            sys.exit("nothing to compare against: drop --skip-trl-default or add --trl-fp32")
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

    n_params = forward_params(args.model)
    print(f"model: {args.model}")
    print(
        f"threads: {len(os.sched_getaffinity(0))}, native bf16: {native_bf16}, matmul peak GFLOP/s: "
        f"bf16 {peaks['bf16'] / 1e9:.1f}, fp32 {peaks['fp32'] / 1e9:.1f} (MFU uses the higher)"
    )
    print(
        f"batch {args.batch_size}, LoRA rank {args.rank}, lr {args.lr}, {args.steps} measured steps + 1 warm-up"
    )
    rates = {}
    labels = {
        "openft": "openft",
        "trl": "TRL SFTTrainer (defaults)",
        "trl-fp32": "TRL SFTTrainer (bf16=False)",
    }
    for side, label in labels.items():
        if side not in results:
            continue
        rate = throughput(results[side]["steps"])
        rates[side] = rate
        mfu = 6 * n_params * rate / peak
        print(f"{label:28s} {rate:8.1f} tokens/s   MFU {100 * mfu:5.1f}%")
    if "trl" in rates:
        print(f"ratio openft / TRL defaults: {rates['openft'] / rates['trl']:.2f}x")
    if "trl-fp32" in rates:
        print(f"ratio openft / TRL bf16=False: {rates['openft'] / rates['trl-fp32']:.2f}x")
    print("step  openft_loss  trl_loss   (different shuffles: equal within noise, not bit for bit)")
    for i, (a, b) in enumerate(
        zip(results["openft"]["steps"], results[baselines[0]]["steps"], strict=False), start=1
    ):
        trl_loss = f"{b['loss']:.4f}" if b.get("loss") is not None else "   n/a"
        print(f"{i:4d}  {a['loss']:11.4f}  {trl_loss:>8s}")


if __name__ == "__main__":
    main()
