"""Benchmark: ``openft validate`` (exact chat-template token counts) against the OpenAI cookbook's checks.

The baseline re-implements ``Chat_finetuning_data_prep.ipynb`` (OpenAI cookbook) as written: the
file loaded whole, the format-error checks, the missing-system/user warnings, and the token counts
of ``num_tokens_from_messages`` and ``num_assistant_tokens_from_messages``: one tokenizer call per
string (every key's value of every message, then each assistant content again), with the same
Hugging Face tokenizer instead of tiktoken. It counts an approximation (3 tokens per message plus
the strings); openft counts exactly what the trainer tokenizes: each example rendered with the
base model's chat template, normalised as for training. Values the notebook assumes are strings
(a ``weight``, content parts, tool calls) are JSON-encoded for the baseline instead of crashing.

Both run in this process on the same file, best of ``--repeat`` runs each, interleaved; each line
prints examples/s by wall clock and by this process's CPU time (on a shared machine the CPU-time
rate is the steadier one; a tokenizer using several cores makes it lower than the wall rate). The
previous openft counter (the trainer's path per example: one render per conversation prefix, then
an encoding with offsets) runs on the first ``--previous`` examples, and its counts must equal
openft's.

    python bench/validate.py                      # 20,000 synthetic chat examples, SmolLM2's tokenizer
    python bench/validate.py --turns 12           # longer conversations
    python bench/validate.py --file data.jsonl    # your file
    python bench/validate.py --model DIR          # another local Hugging Face model directory
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

_WORD_LIST = (
    "the of and to in is that it for on with as was at by an be this which or from but not are have one all "
    "were when there can more if out so what up about into than them some could time people year way day "
    "thing world life hand part child eye woman place work week case point number group problem fact"
)
WORDS = _WORD_LIST.split()


def _text(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(low, high))).capitalize() + "."


def synthetic_example(rng: random.Random, i: int, max_turns: int = 3) -> dict[str, Any]:
    """Chat examples of one to ``max_turns`` turns (one turn in half of them); one in ten each has a
    weight-0 turn, content parts, tools."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are a helpful assistant."}]
    kind = i % 10
    turns = 1 if rng.random() < 0.5 else rng.randint(1, max_turns)
    for _ in range(max(2, turns) if kind == 1 else turns):
        messages.append({"role": "user", "content": _text(rng, 4, 40)})
        messages.append({"role": "assistant", "content": _text(rng, 6, 80)})
    if kind == 1:
        messages[2]["weight"] = 0  # the first reply is context; the second is trained
    elif kind == 2:
        messages[1]["content"] = [
            {"type": "text", "text": _text(rng, 3, 15)},
            {"type": "text", "text": " " + _text(rng, 3, 15)},
        ]
    example: dict[str, Any] = {"messages": messages}
    if kind == 3:
        example["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Current weather in a city",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                },
            }
        ]
        call = {
            "id": f"call_{i}",
            "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})},
        }
        messages += [
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": f"call_{i}", "content": '{"sky": "clear", "celsius": 21}'},
            {"role": "assistant", "content": "It is clear and 21 degrees in Paris."},
        ]
    return example


def write_synthetic(path: Path, n: int, *, max_turns: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as out:
        for i in range(n):
            out.write(json.dumps(synthetic_example(rng, i, max_turns)) + "\n")


def cookbook_checks(path: Path, encode: Callable[[str], list[int]]) -> dict[str, Any]:
    """The notebook's cells in order, with ``encoding.encode`` replaced by ``encode``."""
    with open(path, encoding="utf-8") as f:
        dataset = [json.loads(line) for line in f]

    format_errors: dict[str, int] = defaultdict(int)
    for ex in dataset:
        if not isinstance(ex, dict):
            format_errors["data_type"] += 1
            continue
        messages = ex.get("messages", None)
        if not messages:
            format_errors["missing_messages_list"] += 1
            continue
        for message in messages:
            if "role" not in message or "content" not in message:
                format_errors["message_missing_key"] += 1
            if any(k not in ("role", "content", "name", "function_call", "weight") for k in message):
                format_errors["message_unrecognized_key"] += 1
            if message.get("role", None) not in ("system", "user", "assistant", "function"):
                format_errors["unrecognized_role"] += 1
            content = message.get("content", None)
            function_call = message.get("function_call", None)
            if (not content and not function_call) or not isinstance(content, str):
                format_errors["missing_content"] += 1
        if not any(message.get("role", None) == "assistant" for message in messages):
            format_errors["example_missing_assistant_message"] += 1

    def as_text(value: Any) -> str:
        return value if isinstance(value, str) else json.dumps(value)

    def num_tokens_from_messages(messages, tokens_per_message=3, tokens_per_name=1):
        num_tokens = 0
        for message in messages:
            num_tokens += tokens_per_message
            for key, value in message.items():
                num_tokens += len(encode(as_text(value)))
                if key == "name":
                    num_tokens += tokens_per_name
        num_tokens += 3
        return num_tokens

    def num_assistant_tokens_from_messages(messages):
        num_tokens = 0
        for message in messages:
            if message["role"] == "assistant":
                num_tokens += len(encode(as_text(message["content"])))
        return num_tokens

    n_missing_system = n_missing_user = 0
    n_messages, convo_lens, assistant_message_lens = [], [], []
    for ex in dataset:
        messages = ex["messages"]
        if not any(message["role"] == "system" for message in messages):
            n_missing_system += 1
        if not any(message["role"] == "user" for message in messages):
            n_missing_user += 1
        n_messages.append(len(messages))
        convo_lens.append(num_tokens_from_messages(messages))
        assistant_message_lens.append(num_assistant_tokens_from_messages(messages))
    for values in (n_messages, convo_lens, assistant_message_lens):
        statistics.quantiles(values, n=20)  # the notebook's p5/p95 (numpy there)
    n_too_long = sum(length > 16385 for length in convo_lens)
    billing = sum(min(16385, length) for length in convo_lens)
    return {"n_examples": len(dataset), "n_too_long": n_too_long, "billing_tokens": billing}


def timed(run: Callable[[], Any]) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = run()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def tokenizer_dir(model: str | None) -> tuple[Path, str]:
    if model:
        return Path(model), model
    from openft.settings import SMOLLM2_PACKAGE_SOURCE, Settings
    from openft.training.base_models import BaseModelSourceError, materialize

    try:
        return materialize(
            SMOLLM2_PACKAGE_SOURCE, Settings.from_env().models_dir / "base"
        ), "SmolLM2-135M-Instruct"
    except BaseModelSourceError as exc:
        from openft.training.tiny import build_tiny_model

        print(f"SmolLM2 unavailable ({exc}); using the tiny test tokenizer instead.")
        return build_tiny_model(Path(tempfile.mkdtemp()) / "tiny"), "tiny test model"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--file", type=Path, help="a chat JSONL file (default: synthetic examples)")
    parser.add_argument("--examples", type=int, default=20_000, help="synthetic examples to write")
    parser.add_argument(
        "--turns", type=int, default=3, help="most user/assistant turns of a synthetic example"
    )
    parser.add_argument("--model", help="local Hugging Face model directory whose tokenizer counts")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each side; the best counts")
    parser.add_argument("--previous", type=int, default=2_000, help="examples for the previous counter")
    args = parser.parse_args()

    from openft.datasets import iter_examples, validate_file
    from openft.training.data import count_tokens
    from openft.training.models import load_tokenizer
    from openft.training.token_counts import TemplateTokenCounter

    model_dir, model_name = tokenizer_dir(args.model)
    tokenizer = load_tokenizer(str(model_dir))
    with tempfile.TemporaryDirectory() as scratch:
        path = args.file
        if path is None:
            path = Path(scratch) / "chat.jsonl"
            write_synthetic(path, args.examples, max_turns=args.turns)
        size_mb = path.stat().st_size / 1e6
        print(f"File: {path.name}, {size_mb:,.1f} MB; tokenizer: {model_name}")

        def encode(text: str) -> list[int]:
            return tokenizer.encode(text, add_special_tokens=False)

        def openft() -> Any:
            counter = TemplateTokenCounter(tokenizer, "supervised")
            return validate_file(path, method="supervised", count_tokens=counter, max_tokens=2048)

        best: dict[str, tuple[Any, float, float]] = {}
        for _ in range(args.repeat):
            for name, run in (("cookbook", lambda: cookbook_checks(path, encode)), ("openft", openft)):
                result, wall, cpu = timed(run)
                if name not in best or wall < best[name][1]:
                    best[name] = (result, wall, cpu)
        report = best["openft"][0]
        n = report.n_examples
        if report.n_errors or n != best["cookbook"][0]["n_examples"]:
            sys.exit(
                f"openft found {report.n_errors} error(s) in {n} examples; the benchmark needs a valid chat file"
            )

        subset = [e for _, e in itertools.islice(iter_examples(path, method="supervised"), args.previous)]
        previous, prev_wall, prev_cpu = timed(
            lambda: [count_tokens(tokenizer, e, "supervised") for e in subset]
        )
        identical = previous == list(report.token_counts[: len(subset)])

    stats = report.token_stats
    print(f"{n:,} examples, {stats.mean:,.0f} tokens each on average (openft's exact count)\n")
    rows = [
        ("cookbook checks, one tokenizer call per string", n, *best["cookbook"][1:]),
        ("openft validate, exact chat-template counts", n, *best["openft"][1:]),
        (f"previous openft counter (first {len(subset):,} examples)", len(subset), prev_wall, prev_cpu),
    ]
    print(f"{'':52} {'examples/s (wall)':>18} {'examples/s (CPU)':>17}")
    rates = {}
    for label, count, wall, cpu in rows:
        rates[label] = (count / wall, count / cpu)
        print(f"{label:52} {count / wall:18,.0f} {count / cpu:17,.0f}")
    cookbook, ours, old = (rates[row[0]] for row in rows)
    print(
        f"\nopenft / cookbook: {ours[0] / cookbook[0]:.2f}x wall, {ours[1] / cookbook[1]:.2f}x CPU"
        f"\nopenft / previous openft: {ours[0] / old[0]:.1f}x wall, {ours[1] / old[1]:.1f}x CPU"
        f"\nopenft's counts equal the previous counter's (the trainer's) on the first {len(subset):,} examples: "
        f"{'yes' if identical else 'NO'}"
    )
    if not identical:
        sys.exit(1)


if __name__ == "__main__":
    main()
