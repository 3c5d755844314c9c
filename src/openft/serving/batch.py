"""Continuous batching: the requests for one model decode together, joining and leaving between steps.

Each loaded model has a loop, and the engine's compute thread (``serving/compute.py``) gives the loops with
work their turns. Each turn admits waiting requests while the batch has rows
for them (the prompts admitted together are prefilled in one forward, and a request's ``n`` choices share its
prefill), runs one decode step for every running choice at once (each row through its own LoRA adapter, or
the base), samples, and drops the choices that finished or whose reader went away. A prefill pauses the
decoding of the others for its duration (prompts are not split into chunks). Requests wait in a bounded queue; a request
that finds it full gets a 429 at once.

Prefills and decode steps run through ``FastDecoder`` where the model's architecture allows
(``serving/decoder.py``), through transformers' forward otherwise. When nothing is running or waiting, the
loop gives the batch's key/value cache back.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from openft.errors import InvalidRequestError, OpenFTError, RateLimitError, ServerError
from openft.serving.adapters import BASE, AdapterSet
from openft.serving.choice import ChoiceText
from openft.serving.compute import ComputeThread
from openft.serving.decoder import FastDecoder
from openft.serving.kv_cache import SlotCache
from openft.serving.prompt import Prompt
from openft.serving.protocols import GenerationEvent
from openft.serving.request import ChatRequest
from openft.serving.sampling import RequestSampler
from openft.serving.stream import EventStream, wake_readers

logger = logging.getLogger(__name__)

# What a 429 asks the client to wait, in seconds: the batch frees rows as requests end, typically within this.
RETRY_AFTER_SECONDS = 1


@dataclass
class BatchModel:
    """A loaded model and what the loop needs to know about it."""

    model: Any
    eos_ids: frozenset[int]
    context_window: int
    vocab_size: int
    adapters: AdapterSet | None = None
    decoder: FastDecoder | None = None  # the written-out decode step; None: transformers' forward

    def __post_init__(self) -> None:
        parameter = next(self.model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        # transformers 5 names the forward argument `cache`; 4.x called it `past_key_values`.
        self.cache_argument = (
            "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        )


@dataclass
class Submission:
    """A request whose prompt is rendered and checked, waiting for rows in the batch."""

    request: ChatRequest
    prompt: Prompt
    adapter_path: str | None
    tokenizer: Any
    stream: EventStream


@dataclass(frozen=True)
class BatchStats:
    """Counters of one model's batch; the ones about steps only ever grow."""

    running: int  # choices decoding now (rows of the batch)
    waiting: int  # requests queued for rows
    steps: int  # decode steps taken
    admitted: int  # requests prefilled and joined
    completed: int  # requests whose every choice finished
    cancelled: int  # requests dropped because their reader went away
    largest_batch: int  # most rows decoded in one step
    most_adapters: int  # most distinct adapters (the base counting as one) in one step


@dataclass(eq=False)
class _Request:
    submission: Submission
    sampler: RequestSampler
    adapter_name: str
    left: int  # choices still running

    @property
    def stream(self) -> EventStream:
        return self.submission.stream


@dataclass(eq=False)
class _Choice:
    request: _Request
    text: ChoiceText
    row: int
    length: int  # positions of this row held in the cache
    last: int = -1  # the token sampled last, fed to the next step

    @property
    def index(self) -> int:
        return self.text.index

    @property
    def done(self) -> bool:
        return self.text.done


@dataclass
class _Counters:
    steps: int = 0
    admitted: int = 0
    completed: int = 0
    cancelled: int = 0
    largest_batch: int = 0
    most_adapters: int = 0


class BatchLoop:
    def __init__(
        self, model: BatchModel, *, max_batch: int, max_queue: int, label: str, compute: ComputeThread
    ) -> None:
        self.model = model
        self._compute = compute
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.label = label
        self._lock = threading.Lock()
        self._waiting: deque[Submission] = deque()
        self._held = 0
        self._choices: list[_Choice] = []  # row i of the batch is _choices[i]; the compute thread only
        self._cache = SlotCache(max_rows=max_batch, max_positions=model.context_window)
        self._counters = _Counters()
        self._touched: set[EventStream] = set()  # streams given events this turn, woken at its end

    # -- the callers' side -------------------------------------------------------------------------------

    def submit(self, submission: Submission) -> None:
        """Queue a request, or raise a 429 when the queue is full."""
        n = submission.request.n
        if n > self.max_batch:
            raise InvalidRequestError(
                f"`n` is {n}, but this server decodes at most {self.max_batch} sequences of a model at once.",
                param="n",
            )
        with self._lock:
            # A request that a free row awaits does not queue; beyond the free rows, max_queue may wait.
            free = self.max_batch - len(self._choices) - sum(s.request.n for s in self._waiting)
            if free < n and len(self._waiting) >= self.max_queue:
                raise RateLimitError(
                    f"The model `{submission.request.model}` is busy: {len(self._waiting)} requests are already "
                    f"waiting for it. Retry in a moment.",
                    retry_after_seconds=RETRY_AFTER_SECONDS,
                )
            submission.stream.on_cancel = self._wake
            self._waiting.append(submission)
            self._start_or_wake()

    def stats(self) -> BatchStats:
        with self._lock:
            waiting = len(self._waiting)
        c = self._counters
        return BatchStats(
            running=len(self._choices),
            waiting=waiting,
            steps=c.steps,
            admitted=c.admitted,
            completed=c.completed,
            cancelled=c.cancelled,
            largest_batch=c.largest_batch,
            most_adapters=c.most_adapters,
        )

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Queue requests without admitting them until the block ends (then they join in one step)."""
        with self._lock:
            self._held += 1
        try:
            yield
        finally:
            with self._lock:
                self._held -= 1
                self._start_or_wake()

    def _start_or_wake(self) -> None:
        # Called with the lock held.
        if self._waiting:
            self._compute.wake(self)

    def _wake(self) -> None:
        self._compute.wake(self)

    # -- the loop: a turn at a time, on the engine's compute thread --------------------------------------

    def turn(self) -> bool:
        """Admit what fits, then one decode step for every running choice; False when there is nothing to do."""
        with self._lock:
            admissions = self._take_admissions()
            if not admissions and not self._choices:
                if not self._waiting:
                    self._cache.release()
                return False  # a held queue is woken again when the hold ends
        try:
            self._drop_finished()
            self._admit(admissions)
            # The admitted requests' first tokens reach their readers now, not after the next step.
            wake_readers(self._touched)
            self._touched.clear()
            self._drop_finished()
            if self._choices:
                self._decode()
                self._drop_finished()
        except Exception as exc:  # the batch's state is unknown: fail what runs, keep serving
            logger.exception("decode step failed for %s", self.label)
            self._fail_running(ServerError(f"Generation failed: {exc}"))
        finally:
            wake_readers(self._touched)
            self._touched.clear()
        return True

    def _take_admissions(self) -> list[Submission]:
        """Waiting requests that fit the free rows, first come first served (called with the lock held)."""
        while self._waiting and self._waiting[0].stream.cancelled:
            self._waiting.popleft().stream.end()
            self._counters.cancelled += 1
        if self._held:
            return []
        free = self.max_batch - len(self._choices)
        taken = []
        while self._waiting and self._waiting[0].request.n <= free:
            submission = self._waiting.popleft()
            if submission.stream.cancelled:
                submission.stream.end()
                self._counters.cancelled += 1
                continue
            free -= submission.request.n
            taken.append(submission)
        return taken

    def _admit(self, admissions: list[Submission]) -> None:
        adapters = self.model.adapters
        ready: list[tuple[Submission, str]] = []
        for position, submission in enumerate(admissions):
            path = submission.adapter_path if adapters is not None else None
            try:
                # Outside inference mode: weights made inside it are inference tensors, and PEFT later
                # fails to flip their requires_grad.
                name = adapters.acquire(path) if path is not None else BASE
            except OpenFTError as exc:
                submission.stream.end(exc)
                continue
            if name is None:  # every loaded adapter serves a running request: wait, keeping the place in line
                with self._lock:
                    self._waiting.extendleft(reversed(admissions[position:]))
                break
            ready.append((submission, name))
        for group in _packs(ready):
            try:
                self._prefill(group)
            except Exception as exc:
                if not isinstance(exc, OpenFTError):
                    logger.exception("prefill failed for %s", self.label)
                    exc = ServerError(f"Generation failed: {exc}")
                for submission, name in group:
                    if name != BASE and adapters is not None and submission.adapter_path is not None:
                        adapters.release(submission.adapter_path)
                    submission.stream.end(exc)

    def _prefill(self, group: list[tuple[Submission, str]]) -> None:
        """Prefill the prompts of ``group`` in one forward, then sample each request's first tokens.

        Several prompts are packed into one row, each attending only to itself (FastDecoder: one SDPA per prompt;
        transformers' forward: a block-diagonal mask) with positions restarting at 0, so no padding is computed;
        each request's ``n`` choices share its prompt's prefill.
        """
        model = self.model
        lengths = [len(submission.prompt.token_ids) for submission, _ in group]
        ids = torch.tensor(
            [[t for submission, _ in group for t in submission.prompt.token_ids]], device=model.device
        )
        names = [name for _, name in group]
        with torch.inference_mode():
            if model.decoder is not None:
                segment = torch.repeat_interleave(
                    torch.arange(len(group), device=model.device), torch.tensor(lengths, device=model.device)
                )
                positions = torch.cat([torch.arange(length, device=model.device) for length in lengths])
                with self._rows(names, tokens=segment):
                    logits, layers = model.decoder.prefill(ids[0], positions, lengths, model.adapters)
            else:
                logits, layers = self._prefill_through_transformers(ids, lengths, names)
            logits = logits.float()  # one row per prompt: its last position's
        start = 0
        for k, ((submission, adapter_name), length) in enumerate(zip(group, lengths, strict=True)):
            request = submission.request
            first_row = len(self._choices)
            prompt = [
                (keys[:, :, start : start + length], values[:, :, start : start + length])
                for keys, values in layers
            ]
            start += length
            self._cache.store(range(first_row, first_row + request.n), prompt)
            owner = _Request(
                submission,
                RequestSampler(request, vocab_size=model.vocab_size, device=model.device),
                adapter_name,
                left=request.n,
            )
            choices = [
                _Choice(
                    owner,
                    ChoiceText(
                        i,
                        submission.tokenizer,
                        stop=request.stop,
                        tools=bool(request.tools),
                        eos_ids=model.eos_ids,
                        max_tokens=submission.prompt.max_tokens,
                    ),
                    row=first_row + i,
                    length=length,
                )
                for i in range(request.n)
            ]
            with torch.inference_mode():
                tokens = self._sample_request(
                    owner, logits[k : k + 1].expand(request.n, -1), list(range(request.n))
                )
            self._choices.extend(choices)
            self._counters.admitted += 1
            for choice, token in zip(choices, tokens.tolist(), strict=True):
                self._accept(choice, token)

    def _prefill_through_transformers(
        self, ids: torch.Tensor, lengths: list[int], names: list[str]
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        model = self.model
        ends = torch.tensor(lengths, device=model.device).cumsum(0)
        if len(lengths) == 1:
            with self._rows(names):
                # The last position by index, not `logits_to_keep=1`: the slice that makes is a view with
                # the prompt's strides, and a bfloat16 matmul of such a view on a CPU copied the whole
                # LM head first (SmolLM2: 62 ms against 3.5 for the same row indexed).
                out = model.model(input_ids=ids, use_cache=True, logits_to_keep=ends - 1)
        else:
            segment = torch.repeat_interleave(
                torch.arange(len(lengths), device=model.device), ends.diff(prepend=ends.new_zeros(1))
            )
            index = torch.arange(ids.shape[1], device=model.device)
            allowed = (segment[:, None] == segment[None, :]) & (index[:, None] >= index[None, :])
            mask = torch.zeros(allowed.shape, dtype=model.dtype, device=model.device)
            mask = mask.masked_fill_(~allowed, torch.finfo(model.dtype).min)[None, None]
            positions = (index - (ends - ends.new_tensor(lengths))[segment])[None]
            with self._rows(names, tokens=segment):
                out = model.model(
                    input_ids=ids,
                    position_ids=positions,
                    attention_mask=mask,
                    use_cache=True,
                    logits_to_keep=ends - 1,
                )
        return out.logits[0], _layers(_output_cache(out))

    def _decode(self) -> None:
        model = self.model
        choices = self._choices
        with torch.inference_mode():
            positions = torch.tensor([c.length for c in choices], device=model.device)
            span = max(c.length for c in choices) + 1
            self._cache.prepare(positions, span)
            attend = torch.arange(span, device=model.device)[None, :] <= positions[:, None]
            input_ids = torch.tensor([c.last for c in choices], device=model.device)
            names = [c.request.adapter_name for c in choices]
            with self._rows(names):
                if model.decoder is not None:
                    logits = model.decoder.step(input_ids, positions, self._cache, attend, model.adapters)
                else:
                    mask = torch.zeros(attend.shape, dtype=model.dtype, device=model.device)
                    mask = mask.masked_fill_(~attend, torch.finfo(model.dtype).min)[:, None, None, :]
                    logits = model.model(
                        input_ids=input_ids[:, None],
                        position_ids=positions[:, None],
                        attention_mask=mask,
                        use_cache=True,
                        **{model.cache_argument: self._cache},
                    ).logits[:, -1]
            for choice in choices:
                choice.length += 1
            tokens = self._sample(logits)
        counters = self._counters
        counters.steps += 1
        counters.largest_batch = max(counters.largest_batch, len(choices))
        counters.most_adapters = max(counters.most_adapters, len(set(names)))
        for choice, token in zip(choices, tokens, strict=True):
            self._accept(choice, token)

    def _rows(
        self, names: list[str], tokens: torch.Tensor | None = None
    ) -> contextlib.AbstractContextManager:
        adapters = self.model.adapters
        return adapters.rows(names, tokens=tokens) if adapters is not None else contextlib.nullcontext()

    # -- sampling ----------------------------------------------------------------------------------------

    def _sample(self, logits: torch.Tensor) -> list[int]:
        """One token per row: the batch's argmax for plain greedy requests, each request's own draw otherwise."""
        groups: dict[_Request, list[tuple[int, int]]] = {}
        for row, choice in enumerate(self._choices):
            groups.setdefault(choice.request, []).append((choice.index, row))
        tokens = logits.argmax(dim=-1)
        for request, members in groups.items():
            if request.sampler.is_plain_greedy:
                continue
            # In choice order, whatever rows they moved to: one generator draws for them in turn.
            indexes, rows = zip(*sorted(members), strict=True)
            index = torch.tensor(rows, device=logits.device)
            tokens[index] = self._sample_request(
                request, logits.index_select(0, index).float(), list(indexes)
            )
        return tokens.tolist()

    @staticmethod
    def _sample_request(request: _Request, scores: torch.Tensor, indexes: list[int]) -> torch.Tensor:
        if request.sampler.is_plain_greedy:
            return scores.argmax(dim=-1)
        tokens = request.sampler.sample(scores, indexes)
        request.sampler.accept(indexes, tokens)
        return tokens

    # -- text, stops and the end of a choice -----------------------------------------------------------

    def _accept(self, choice: _Choice, token: int) -> None:
        choice.last = token
        owner = choice.request
        for event in choice.text.accept(token):
            self._emit(owner.stream, event)
        if choice.done:
            owner.left -= 1
            if owner.left == 0:
                # Counted and released before the reader hears the end, so what it sees next is up to date.
                self._release(owner)
                self._counters.completed += 1
                owner.stream.end(wake=False)

    def _emit(self, stream: EventStream, event: GenerationEvent) -> None:
        stream.put(event, wake=False)
        self._touched.add(stream)

    def _release(self, owner: _Request) -> None:
        path = owner.submission.adapter_path
        if path is not None and self.model.adapters is not None and owner.adapter_name != BASE:
            self.model.adapters.release(path)

    # -- leaving the batch -------------------------------------------------------------------------------

    def _drop_finished(self) -> None:
        """Free the rows of finished choices and of requests whose reader went away; keep the rest packed."""
        choices = self._choices
        keep = [c for c in choices if not c.done and not c.request.stream.cancelled]
        if len(keep) == len(choices):
            return
        for owner in {c.request for c in choices if not c.done and c.request.stream.cancelled}:
            self._release(owner)
            self._counters.cancelled += 1
            owner.stream.end()
            for c in choices:
                if c.request is owner:
                    c.text.done = True
        # The kept choices beyond the new end move into the freed rows below it.
        end = len(keep)
        holes = sorted(c.row for c in choices if c.done and c.row < end)
        movers = [c for c in keep if c.row >= end]
        for choice, hole in zip(movers, holes, strict=True):
            self._cache.move(choice.row, hole, choice.length)
            choice.row = hole
        self._choices = sorted(keep, key=lambda c: c.row)

    def _fail_running(self, error: ServerError) -> None:
        for owner in {c.request for c in self._choices}:
            self._release(owner)
            owner.stream.end(error)
        self._choices = []
        self._cache.release()


# Prompts packed into one prefill: at most this many tokens together (the mask is tokens x tokens).
PACKED_PREFILL_TOKENS = 2048


def _packs(ready: list[tuple[Submission, str]]) -> Iterator[list[tuple[Submission, str]]]:
    """Consecutive groups of admitted prompts, each within PACKED_PREFILL_TOKENS (a longer prompt alone)."""
    group: list[tuple[Submission, str]] = []
    tokens = 0
    for item in ready:
        length = len(item[0].prompt.token_ids)
        if group and tokens + length > PACKED_PREFILL_TOKENS:
            yield group
            group, tokens = [], 0
        group.append(item)
        tokens += length
    if group:
        yield group


def _output_cache(out: Any) -> Any:
    # transformers 5 renamed the output field `past_key_values` to `cache`.
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _layers(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A prefill's keys and values per layer, from a transformers DynamicCache."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache, strict=True))
