"""OpenAI's reinforcement fine-tuning (RFT) example: a prompt to answer, plus fields for the grader.

``{"messages": [...], "tools"?: [...], <any other keys>}``: the messages end in a ``user`` or
``developer`` turn (the model writes the next one during training); every other key is the
grader's ``{{item.<key>}}``. Normalised: ``messages`` as in ``datasets.messages``, ``tools`` and
``parallel_tool_calls`` filled in, every other key kept as it was.
"""

from __future__ import annotations

from openft.datasets.messages import check_messages, check_tools
from openft.datasets.problems import ExampleFindings, json_type

RESERVED = frozenset({"messages", "tools", "parallel_tool_calls"})
PROMPT_ENDS = ("user", "developer")


def check_reinforcement(example: dict, found: ExampleFindings) -> dict | None:
    before = len(found.errors)
    messages = check_messages(example["messages"], found, path="messages", allow_weight=False)
    tools: list[dict] | None = []
    if example.get("tools") is not None:
        tools = check_tools(example["tools"], found, path="tools")
    parallel = example.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        found.error(
            f"'parallel_tool_calls' must be true or false, got {json_type(parallel)}",
            field="parallel_tool_calls",
        )
    if messages:
        last = messages[-1]["role"]
        if last not in PROMPT_ENDS:
            found.error(
                f"the last message is {'an' if last == 'assistant' else 'a'} {last} message; a reinforcement "
                "fine-tuning example ends with the user (or developer) turn the model should answer, and the "
                'reference answer goes in another key for the grader (for example "answer")',
                message_index=len(messages),
                field=f"messages[{len(messages) - 1}].role",
            )
    if len(found.errors) != before or messages is None or tools is None:
        return None
    extra = {key: value for key, value in example.items() if key not in RESERVED}
    return {"messages": messages, "tools": tools, "parallel_tool_calls": parallel, **extra}
