"""GRPO's pieces: prompts, sampling a group of completions with the KV cache, advantages, the loss.

- ``Prompt``: an RFT example rendered with the chat template and the generation prompt, left-
  truncated to leave room for the completion; ``item`` is the whole row, for the grader.
- ``sample``: ``group_size`` completions per prompt from the current policy in one batched
  ``generate`` (left padding, KV cache, the model's end-of-turn tokens stop a completion).
- ``group_advantages``: each reward minus its group's mean, divided by the group's standard
  deviation (plus a small epsilon), as GRPO (DeepSeekMath) and TRL compute them.
- ``policy_loss``: the clipped surrogate ``-min(r·A, clip(r, 1-ε, 1+ε)·A)`` per completion token
  plus ``β·KL`` to the reference with the k3 estimator ``exp(ref-π) - (ref-π) - 1``, summed and
  divided by the step's completion tokens (a token-level mean, as TRL's default loss).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from openft.training import objectives
from openft.training.attention import generation_attention
from openft.training.data import Tokenizing, normalise_message
from openft.training.labels import IGNORE_INDEX, TokenizedSequence, render
from openft.training.packing import PackedRow, pack, pack_row, trained_hidden

# Turn-end tokens of common chat templates (as the serving engine): a completion ends at any of them.
TURN_END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")
CLIP_EPSILON = 0.2
ADVANTAGE_EPSILON = 1e-4


@dataclass(frozen=True)
class Prompt:
    input_ids: list[int]
    item: dict[str, Any]
    truncated: bool = False


@dataclass(frozen=True)
class Completion:
    prompt_index: int  # index into the step's prompts
    token_ids: list[int]  # generated tokens, the stopping end-of-turn token included
    text: str  # what the grader reads: the tokens decoded without special tokens

    @property
    def finished(self) -> bool:
        return bool(self.token_ids)


def build_prompt(tok: Tokenizing, example: dict[str, Any], max_prompt_tokens: int) -> Prompt:
    messages = [normalise_message(m) for m in example["messages"]]
    # Most chat templates know no "developer" role; it carries system instructions (as in serving).
    messages = [{**m, "role": "system"} if m["role"] == "developer" else m for m in messages]
    tools = example.get("tools") or None
    text = render(
        tok.tokenizer, messages, tools, add_generation_prompt=True, chat_template=tok.template_for(tools)
    )
    ids = tok.tokenizer(text, add_special_tokens=False)["input_ids"]
    truncated = len(ids) > max_prompt_tokens
    # The question is at the end of a prompt: keep the end, drop the oldest tokens.
    return Prompt(list(ids[-max_prompt_tokens:]), example, truncated)


def stop_token_ids(tokenizer: Any, model: torch.nn.Module) -> list[int]:
    ids = set()
    for source in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, list):
            ids.update(source)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in TURN_END_TOKENS if t in vocab)
    return sorted(ids)


def sample(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: list[Prompt],
    *,
    group_size: int,
    max_new_tokens: int,
    temperature: float | None,
    stop_ids: list[int],
    precision: contextlib.AbstractContextManager,
) -> list[Completion]:
    """``group_size`` completions per prompt (``temperature=None``: one greedy completion each).

    Sampling draws from torch's global generator, whose state every checkpoint saves; greedy
    decoding draws nothing, so evaluation never shifts a resumed run.
    """
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    width = max(len(p.input_ids) for p in prompts)
    device = next(model.parameters()).device
    input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt.input_ids) :] = torch.tensor(prompt.input_ids)
        attention[row, width - len(prompt.input_ids) :] = 1
    greedy = temperature is None
    was_training = model.training
    model.eval()  # dropout off while sampling
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        with torch.no_grad(), precision, generation_attention(causal):
            output = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                do_sample=not greedy,
                temperature=None if greedy else temperature,
                top_p=None if greedy else 1.0,
                top_k=None if greedy else 0,
                num_return_sequences=1 if greedy else group_size,
                max_new_tokens=max_new_tokens,
                eos_token_id=stop_ids,
                pad_token_id=pad,
                use_cache=True,
            )
    finally:
        model.train(was_training)
    generated = output[:, width:].tolist()
    per_prompt = 1 if greedy else group_size
    stops = set(stop_ids)
    completions = []
    for row, tokens in enumerate(generated):
        end = next((i + 1 for i, t in enumerate(tokens) if t in stops), len(tokens))
        kept = tokens[:end]
        text = tokenizer.decode(kept, skip_special_tokens=True)
        completions.append(Completion(row // per_prompt, kept, text))
    return completions


def group_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    grouped = rewards.view(-1, group_size)
    mean = grouped.mean(dim=1, keepdim=True)
    std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(mean)
    return ((grouped - mean) / (std + ADVANTAGE_EPSILON)).reshape(-1)


@dataclass
class PolicyRow:
    row: PackedRow
    sequences: list[int]  # the step's sequence index of each sequence in the row, in order


def policy_rows(
    sequences: list[TokenizedSequence], max_tokens: int, device: torch.device | None = None
) -> list[PolicyRow]:
    """Pack (prompt, completion) sequences into padding-free rows on ``device``, remembering which
    is which."""
    units = [[s] for s in sequences]
    index = {id(unit): i for i, unit in enumerate(units)}
    return [
        PolicyRow(pack_row([u[0] for u in row]).to(device), [index[id(u)] for u in row])
        for row in pack(units, max_tokens)
    ]


def completion_sequence(prompt: Prompt, completion: Completion) -> TokenizedSequence:
    return TokenizedSequence(
        prompt.input_ids + completion.token_ids, [IGNORE_INDEX] * len(prompt.input_ids) + completion.token_ids
    )


def token_logps(model: torch.nn.Module, row: PackedRow) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each completion token of a row, and which sequence of the row it is in.
    The LM head runs on completion tokens only, in chunks (see ``objectives.token_logps``)."""
    hidden, targets = trained_hidden(model, row)
    head = model.get_output_embeddings()
    logps = objectives.token_logps(head, hidden, targets, objectives.chunk_tokens(head))
    owners = row.sequence_index[row.targets != IGNORE_INDEX]
    return logps, owners


@dataclass
class LossTally:
    loss_sum: float = 0.0
    kl_sum: float = 0.0
    clipped: int = 0
    tokens: int = 0


def policy_loss(
    model: torch.nn.Module,
    reference: Callable[[], contextlib.AbstractContextManager[torch.nn.Module]],
    prow: PolicyRow,
    advantages: torch.Tensor,
    old_logps: torch.Tensor | None,
    *,
    beta: float,
    normaliser: int,
    tally: LossTally,
) -> torch.Tensor:
    """This row's share of the step's loss (to backpropagate). ``old_logps``: the sampling policy's
    log-probabilities of these tokens; None when the update follows sampling at once (then the
    ratio is exactly 1 and only its gradient matters, as in TRL with one iteration per batch)."""
    logps, owners = token_logps(model, prow.row)
    advantages = advantages.to(logps.device)
    sequences = torch.tensor(prow.sequences, dtype=torch.long, device=logps.device)
    per_token_advantage = advantages[sequences[owners]]
    old = logps.detach() if old_logps is None else old_logps
    ratio = torch.exp(logps - old)
    clipped_ratio = torch.clamp(ratio, 1 - CLIP_EPSILON, 1 + CLIP_EPSILON)
    surrogate = torch.minimum(ratio * per_token_advantage, clipped_ratio * per_token_advantage)
    losses = -surrogate
    if beta > 0:
        with torch.no_grad(), reference() as reference_model:
            reference_logps, _ = token_logps(reference_model, prow.row)
        delta = reference_logps - logps
        kl = torch.exp(delta) - delta - 1
        losses = losses + beta * kl
        tally.kl_sum += float(kl.detach().sum())
    tally.loss_sum += float(losses.detach().sum())
    tally.clipped += int((ratio.detach() != clipped_ratio.detach()).sum())
    tally.tokens += int(logps.numel())
    return losses.sum() / max(normaliser, 1)


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
