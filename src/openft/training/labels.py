"""Chat rendering and the assistant-only loss mask: which tokens of a conversation are trained.

The mask is found without knowing the template's syntax: the conversation is rendered prefix by
prefix (up to each assistant turn with the generation prompt, then through that turn) and the
characters between the two renderings are the assistant turn as the template writes it, end-of-turn
token included. Token offsets map that character span onto the tokenized full conversation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IGNORE_INDEX = -100

# ChatML that renders tools and tool calls; used when a model's own template cannot render tools.
# Newlines right after a block tag are written as {{ '\n' }}: HF compiles templates with trim_blocks.
CHATML_WITH_TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n\n{% endif %}"
    "# Tools\nYou may call one or more functions. Available functions:"
    "{% for tool in tools %}{{ '\\n' }}{{ tool | tojson }}{% endfor %}<|im_end|>\n"
    "{% elif messages[0]['role'] == 'system' %}<|im_start|>system\n{{ messages[0]['content'] }}<|im_end|>\n"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' and loop.first %}"
    "{% elif message['role'] == 'assistant' %}<|im_start|>assistant\n"
    "{% if message['content'] %}{{ message['content'] }}{% endif %}"
    "{% if message['tool_calls'] %}{% for call in message['tool_calls'] %}{{ '\\n' }}<tool_call>\n"
    '{"name": {{ call["function"]["name"] | tojson }}, "arguments": {{ call["function"]["arguments"] }}}'
    "\n</tool_call>{% endfor %}{% endif %}<|im_end|>\n"
    "{% else %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class NothingToTrainError(ValueError):
    """An example has no token to train on (no trainable assistant turn, or all of it truncated)."""


class TemplateError(ValueError):
    """The chat template renders a conversation in a way the mask cannot be derived from."""


@dataclass(frozen=True)
class TokenizedSequence:
    """Token ids and their labels (``IGNORE_INDEX`` where not trained), not yet shifted."""

    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_trainable(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)

    def truncated(self, max_length: int) -> TokenizedSequence:
        return TokenizedSequence(self.input_ids[:max_length], self.labels[:max_length])


def template_renders_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template shows tool definitions to the model at all."""
    probe = [{"type": "function", "function": {"name": "zq_probe_tool", "description": "", "parameters": {}}}]
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}], tools=probe, tokenize=False, add_generation_prompt=True
        )
    except Exception:
        return False
    return "zq_probe_tool" in text


def render(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    *,
    add_generation_prompt: bool,
    chat_template: str | None = None,
) -> str:
    # The weight key is ours, not the template's: strip it so templates that print unknown keys don't.
    clean = [{k: v for k, v in m.items() if k != "weight"} for m in messages]
    return tokenizer.apply_chat_template(
        clean,
        tools=tools or None,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
        chat_template=chat_template,
    )


def assistant_only_labels(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    chat_template: str | None = None,
) -> TokenizedSequence:
    """Tokenize a conversation; label only the tokens of trainable assistant messages.

    Every assistant message is trainable unless it has ``weight: 0``. The trained span of a turn
    is what the template renders for it after the generation prompt, so its end-of-turn token is
    included. Raises ``NothingToTrainError`` when no token is trained and ``TemplateError`` when
    the template does not render conversations as a sequence of prefixes.
    """
    full = render(tokenizer, messages, tools, add_generation_prompt=False, chat_template=chat_template)
    spans: list[tuple[int, int]] = []
    for index, message in enumerate(messages):
        if message.get("role") != "assistant" or message.get("weight", 1) == 0:
            continue
        prompt = render(
            tokenizer, messages[:index], tools, add_generation_prompt=True, chat_template=chat_template
        )
        through = render(
            tokenizer, messages[: index + 1], tools, add_generation_prompt=False, chat_template=chat_template
        )
        if not (through.startswith(prompt) and full.startswith(through)):
            raise TemplateError(
                f"The chat template does not render message {index} (assistant) as an extension of the "
                "conversation before it, so its tokens cannot be located. Use a template whose rendering of "
                "a conversation prefix is a prefix of the full rendering."
            )
        spans.append((len(prompt), len(through)))
    if not spans:
        raise NothingToTrainError(
            "The example has no assistant message to train on (every assistant message has weight 0 or "
            "there is none). Add an assistant message with weight 1 or remove the example."
        )
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    labels = [IGNORE_INDEX] * len(encoded["input_ids"])
    for position, (token_id, (start, end)) in enumerate(
        zip(encoded["input_ids"], encoded["offset_mapping"], strict=True)
    ):
        # A token belongs to the turn it starts in; one straddling the end (rare) is trained.
        if end > start and any(lo <= start < hi for lo, hi in spans):
            labels[position] = token_id
    sequence = TokenizedSequence(list(encoded["input_ids"]), labels)
    if sequence.n_trainable == 0:
        raise NothingToTrainError("The example's assistant messages render to no tokens; nothing to train.")
    return sequence


def completion_labels(tokenizer: Any, prompt: str, completion: str) -> TokenizedSequence:
    """The legacy ``{"prompt", "completion"}`` format: prompt masked, completion plus EOS trained."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        completion_ids = completion_ids + [tokenizer.eos_token_id]
    if not completion_ids:
        raise NothingToTrainError("The example's completion is empty; nothing to train.")
    return TokenizedSequence(
        list(prompt_ids) + list(completion_ids), [IGNORE_INDEX] * len(prompt_ids) + list(completion_ids)
    )
