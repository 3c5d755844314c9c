"""Training data: read a validated JSONL file and turn each example into the token sequences trained on.

Supervised examples become one sequence (chat format via the chat template, or the legacy
prompt/completion format); DPO examples become a (chosen, rejected) pair of sequences that share
the prompt. ``count_tokens`` is what the server bills: exactly the tokens the trainer sees for an
example, before truncation.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from openft.training.labels import (
    CHATML_WITH_TOOLS_TEMPLATE,
    TokenizedSequence,
    assistant_only_labels,
    completion_labels,
    template_renders_tools,
)

Method = Literal["supervised", "dpo", "reinforcement"]


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def normalise_content(content: Any) -> str | None:
    """Content parts become one string (text parts joined); the chat templates expect strings."""
    if content is None or isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def normalise_message(message: dict[str, Any]) -> dict[str, Any]:
    out = dict(message)
    out["content"] = normalise_content(message.get("content"))
    if out["content"] is None and out.get("role") == "assistant":
        out["content"] = ""
    return out


@dataclass
class Tokenizing:
    """A tokenizer plus what was learned while tokenizing (fallbacks used), for the caller to report."""

    tokenizer: Any
    renders_tools: bool | None = None
    tool_fallbacks: int = 0
    messages: list[str] = field(default_factory=list)

    def template_for(self, tools: list[dict[str, Any]] | None) -> str | None:
        if not tools:
            return None
        if self.renders_tools is None:
            self.renders_tools = template_renders_tools(self.tokenizer)
        if self.renders_tools:
            return None
        self.tool_fallbacks += 1
        return CHATML_WITH_TOOLS_TEMPLATE

    def chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> TokenizedSequence:
        return assistant_only_labels(
            self.tokenizer, [normalise_message(m) for m in messages], tools, self.template_for(tools)
        )


def tokenize_example(tok: Tokenizing, example: dict[str, Any], method: Method) -> list[TokenizedSequence]:
    """The sequences of one example: ``[sequence]`` for supervised, ``[chosen, rejected]`` for DPO."""
    if method == "dpo":
        prompt = example["input"]["messages"]
        tools = example["input"].get("tools")
        chosen = example.get("preferred_output", example.get("preferred_completion"))
        rejected = example.get("non_preferred_output", example.get("non_preferred_completion"))
        # Only the final answer is trained: earlier assistant turns of the prompt are context.
        context = [{**m, "weight": 0} if m.get("role") == "assistant" else m for m in prompt]
        return [tok.chat(context + [chosen[-1]], tools), tok.chat(context + [rejected[-1]], tools)]
    if method == "reinforcement":  # the prompt only: completions are sampled in training
        from openft.training.rollouts import build_prompt

        prompt = build_prompt(tok, example, max_prompt_tokens=1 << 30)
        return [TokenizedSequence(prompt.input_ids, [-100] * len(prompt.input_ids))]
    if "messages" in example:
        return [tok.chat(example["messages"], example.get("tools"))]
    return [completion_labels(tok.tokenizer, example["prompt"], example["completion"])]


def count_tokens(tokenizer: Any, example: dict[str, Any], method: Method) -> int:
    """Tokens the trainer processes for one example before truncation (DPO: chosen plus rejected)."""
    return sum(len(s) for s in tokenize_example(Tokenizing(tokenizer), example, method))


@dataclass
class Dataset:
    examples: list[list[TokenizedSequence]]
    billable_tokens: int  # before truncation
    truncated: int  # examples cut to max_seq_length
    messages: list[str]


def load_dataset(path: str | Path, tokenizer: Any, method: Method, max_seq_length: int) -> Dataset:
    """Tokenize every example of a file; sequences longer than ``max_seq_length`` lose their end."""
    tok = Tokenizing(tokenizer)
    examples: list[list[TokenizedSequence]] = []
    billable = truncated = 0
    for line_number, example in enumerate(read_jsonl(path), start=1):
        try:
            sequences = tokenize_example(tok, example, method)
        except ValueError as exc:
            raise ValueError(f"{Path(path).name} line {line_number}: {exc}") from exc
        billable += sum(len(s) for s in sequences)
        if any(len(s) > max_seq_length for s in sequences):
            truncated += 1
            sequences = [s.truncated(max_seq_length) for s in sequences]
        examples.append(sequences)
    messages = []
    if tok.tool_fallbacks:
        messages.append(
            f"The base model's chat template cannot render tools; {tok.tool_fallbacks} example(s) with tools "
            "were rendered with a ChatML template that does."
        )
    return Dataset(examples, billable, truncated, messages)
