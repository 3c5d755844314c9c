"""The training recipe: ``train(spec, reporter)`` runs one fine-tune top to bottom (setup, loop, save).

Supervised (assistant-only cross-entropy) or DPO, LoRA, QLoRA or full, on packed padding-free
micro-batches with fp32 trained weights under bf16 autocast, on the CPU or one CUDA device
(``training/devices.py`` decides what differs), or as one of ``n_devices`` ranks that torchrun
started (``training/distributed.py``: DDP or FSDP2, each rank a share of every step, rank 0 alone
reporting and writing). It resumes from the latest complete checkpoint in
``output_dir/checkpoints/``, whichever number of ranks wrote it, and is reproducible bit for bit on
CPU for a given seed and number of ranks: shuffling uses its own seeded generator per epoch, and
checkpoints carry every RNG state.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch

from openft.training import checkpoints, devices, distributed
from openft.training.data import Dataset, load_dataset
from openft.training.labels import TokenizedSequence
from openft.training.models import (
    load_tokenizer,
    reference_policy,
    save_servable,
    trainable_model,
    weights_subdir,
)
from openft.training.objectives import DPOObjective, Objective, SupervisedObjective, Tally
from openft.training.packing import micro_batches
from openft.training.spec import TrainingSpec

StopRequest = Literal["pause", "cancel"]
MAX_GRAD_NORM = 1.0


class Reporter(Protocol):
    def emit(self, line: dict[str, Any]) -> None:
        """One progress line of the JSON-lines protocol in ``spec.py``."""
        ...

    def stop_requested(self) -> StopRequest | None:
        """Asked at every step boundary."""
        ...


@dataclass(frozen=True)
class TrainingResult:
    output_path: str  # output_dir/final/ (adapter/ or model/ inside); the checkpoint when paused
    trained_tokens: int  # tokens processed by optimizer steps, all epochs (after truncation)
    steps: int
    final_metrics: dict[str, Any]
    stopped: StopRequest | None = None


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stops at once."""


@dataclass
class Progress:
    """Where the run is; saved in every checkpoint so a resumed run continues exactly."""

    epoch: int = 0
    position: int = 0  # index of the next batch in this epoch's order
    step: int = 0
    trained_tokens: int = 0
    elapsed_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


def epoch_order(seed: int, epoch: int, n: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def linear_schedule(total_steps: int, warmup_ratio: float):
    """Linear warm-up then linear decay to 0, as transformers' ``get_linear_schedule_with_warmup``."""
    warmup = math.ceil(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


def evaluate(
    step: torch.nn.Module,
    examples: list[list[TokenizedSequence]],
    max_tokens: int,
    precision: contextlib.AbstractContextManager,
    device: torch.device | None = None,
    group: distributed.Group | None = None,
) -> Tally:
    """Loss and accuracy over ``examples`` through ``step`` (``Group.wrap``'s module), each rank
    computing its share; the tally is every rank's."""
    group = group or distributed.Group()
    tally = Tally()
    step.eval()  # dropout off: evaluation consumes no randomness, so resume stays exact
    with torch.no_grad():
        for row in group.padded(micro_batches(group.share(examples), max_tokens, device), device):
            with precision:
                _, row_tally = step(row, 1)
            tally.add(row_tally)
    group.reshard(step)
    step.train()
    return group.total(tally)


def train(spec: TrainingSpec, reporter: Reporter) -> TrainingResult:
    # ---- setup -------------------------------------------------------------------------------
    started = time.monotonic()
    out = Path(spec.output_dir)
    ckpt_root = out / "checkpoints"
    device = devices.select(spec)
    group = distributed.join(spec, device)
    # Rank 0 alone reports and writes; every rank computes, and agrees on when to stop.
    emit = reporter.emit if group.writes else (lambda line: None)
    if group.writes:
        out.mkdir(parents=True, exist_ok=True)
        (out / "spec.json").write_text(spec.to_json())
    precision = device.precision

    tokenizer = load_tokenizer(spec.base_model_path)
    data = load_dataset(spec.training_file, tokenizer, spec.method, spec.max_seq_length)
    valid: Dataset | None = None
    if spec.validation_file:
        valid = load_dataset(spec.validation_file, tokenizer, spec.method, spec.max_seq_length)
    for message in [device.description, group.describe(spec), *data.messages]:
        if message:
            emit({"type": "message", "level": "info", "message": message})
    if data.truncated:
        emit(
            {
                "type": "message",
                "level": "warn",
                "message": f"{data.truncated} training example(s) longer than max_seq_length="
                f"{spec.max_seq_length} tokens were truncated from the end.",
            }
        )
    n = len(data.examples)
    steps_per_epoch = math.ceil(n / spec.batch_size)
    total_steps = spec.n_epochs * steps_per_epoch

    resume = checkpoints.latest(ckpt_root)
    random.seed(spec.seed)
    np.random.seed(spec.seed % 2**32)
    torch.manual_seed(spec.seed)
    sharded = group.strategy == "fsdp"
    if sharded:
        precision = functools.partial(device.precision, cache=False)
    model = trainable_model(spec, resume.path / weights_subdir(spec) if resume else None, device, sharded)
    model.train()
    group.diverge_rng(spec.seed)
    reference = reference_policy(spec, model, device, sharded) if spec.method == "dpo" else None
    objective: Objective = (
        DPOObjective(spec.beta if spec.beta is not None else 0.1, reference)
        if reference is not None
        else SupervisedObjective()
    )
    step = group.wrap(model, objective, reference.module if reference else None)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec.learning_rate, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(total_steps, spec.warmup_ratio))
    progress = Progress()
    if resume:
        state = resume.load_state()
        group.load_optimizer_state(step, optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        group.restore_rng(device, state)
        progress = Progress(**state["progress"])
    if group.writes:
        with open(out / "metrics.jsonl", "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(m) + "\n" for m in progress.history)
    run_offset = progress.elapsed_seconds
    last_checkpoint_time = time.monotonic()
    emit({"type": "started", "total_steps": total_steps, "resumed_from_step": progress.step})

    last_saved: dict[str, Any] = {"step": None, "checkpoint": None}

    def save_checkpoint(epoch_end: bool) -> checkpoints.Checkpoint | None:
        """Every rank calls it (FSDP2 gathers the shards); rank 0 writes and gets the checkpoint.
        A step already saved in this run (a pause right after an epoch end or a timed checkpoint)
        is not written again: nothing changed, and rewriting it would pull the directory from under
        the worker that is publishing it."""
        if last_saved["step"] == progress.step:
            return last_saved["checkpoint"]
        progress.elapsed_seconds = run_offset + time.monotonic() - started
        state = {
            "optimizer": group.optimizer_state(step, optimizer),
            "scheduler": scheduler.state_dict(),
            "rng": device.rng_state(),
            "rank_rng": group.rng_states(device),
            "progress": progress.__dict__,
            "order": epoch_order(spec.seed, progress.epoch, n),
        }
        weights = group.full_weights(model)
        if not group.writes:
            # Every rank remembers the step: all of them skip a second save of it alike, since a save
            # holds collectives (the RNG states, FSDP2's gathers) that would wait for a rank that skipped.
            last_saved.update(step=progress.step, checkpoint=None)
            return None
        saved = checkpoints.save(
            ckpt_root,
            progress.step,
            epoch_end,
            state,
            lambda d: save_servable(model, tokenizer, spec, d, weights),
        )
        checkpoints.prune(ckpt_root, spec.keep_checkpoints)
        last_saved.update(step=progress.step, checkpoint=saved)
        return saved

    # ---- loop --------------------------------------------------------------------------------
    while progress.epoch < spec.n_epochs:
        order = epoch_order(spec.seed, progress.epoch, n)
        batches = [order[i : i + spec.batch_size] for i in range(0, n, spec.batch_size)]
        while progress.position < len(batches):
            stop = group.agree(reporter.stop_requested())
            if stop == "cancel":
                emit({"type": "cancelled", "step": progress.step})
                group.leave()
                return TrainingResult("", progress.trained_tokens, progress.step, {}, stopped="cancel")
            if stop == "pause":
                saved = save_checkpoint(epoch_end=False)
                path = str(saved.path) if saved else ""
                emit({"type": "paused", "step": progress.step, "path": path})
                group.leave()
                return TrainingResult(path, progress.trained_tokens, progress.step, {}, stopped="pause")

            share = group.share([data.examples[i] for i in batches[progress.position]])
            rows = micro_batches(share, spec.micro_batch_tokens, device.torch_device)
            tokens = group.sum(sum(row.n_tokens for row in rows))
            rows = group.padded(rows, device.torch_device)
            normaliser = group.sum(objective.normaliser(rows))
            tally = Tally()
            for index, row in enumerate(rows):
                with group.accumulating(step, last=index == len(rows) - 1):
                    with precision():
                        loss, row_tally = step(row, normaliser)
                    group.scaled(loss).backward()
                tally.add(row_tally)
            tally = group.total(tally)
            if not math.isfinite(tally.loss_sum):
                raise NonFiniteLossError(
                    f"The training loss became {tally.loss_sum} at step {progress.step + 1}; stopping. "
                    "Lower the learning rate multiplier or check the data."
                )
            torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            progress.step += 1
            progress.position += 1
            progress.trained_tokens += tokens

            metrics: dict[str, Any] = {
                "step": progress.step,
                "train_loss": tally.loss,
                "train_mean_token_accuracy": tally.accuracy,
                "total_steps": total_steps,
            }
            if valid and valid.examples and progress.step % spec.eval_interval_steps == 0:
                first = (progress.step // spec.eval_interval_steps - 1) * spec.batch_size
                picked = [valid.examples[(first + k) % len(valid.examples)] for k in range(spec.batch_size)]
                small = evaluate(
                    step, picked, spec.micro_batch_tokens, precision(), device.torch_device, group
                )
                metrics |= {"valid_loss": small.loss, "valid_mean_token_accuracy": small.accuracy}
            epoch_end = progress.position == len(batches)
            if epoch_end and valid and valid.examples:
                full = evaluate(
                    step, valid.examples, spec.micro_batch_tokens, precision(), device.torch_device, group
                )
                metrics |= {"full_valid_loss": full.loss, "full_valid_mean_token_accuracy": full.accuracy}
            progress.history.append(metrics)
            if group.writes:
                with open(out / "metrics.jsonl", "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(metrics) + "\n")
            emit(
                {
                    "type": "metrics",
                    "step": progress.step,
                    "total_steps": total_steps,
                    "data": metrics,
                    "tokens": tokens,
                    "elapsed_seconds": round(run_offset + time.monotonic() - started, 3),
                }
            )
            if epoch_end:
                progress.epoch += 1
                progress.position = 0
                saved = save_checkpoint(epoch_end=True)
                last_checkpoint_time = time.monotonic()
                emit(
                    {
                        "type": "checkpoint",
                        "step": progress.step,
                        "path": str(saved.path) if saved else "",
                        "metrics": metrics,
                        "epoch": progress.epoch,
                        "epoch_end": True,
                    }
                )
                break
            if group.any(time.monotonic() - last_checkpoint_time >= spec.checkpoint_interval_seconds):
                save_checkpoint(epoch_end=False)
                last_checkpoint_time = time.monotonic()

    # ---- save --------------------------------------------------------------------------------
    final = out / "final"
    weights = group.full_weights(model)
    if group.writes:
        staging = out / f".final-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        save_servable(model, tokenizer, spec, staging, weights)
        (staging / "spec.json").write_text(spec.to_json())
        shutil.rmtree(final, ignore_errors=True)
        os.rename(staging, final)
    group.leave()
    final_metrics = dict(progress.history[-1]) if progress.history else {}
    result = TrainingResult(str(final), progress.trained_tokens, progress.step, final_metrics)
    emit(
        {
            "type": "result",
            "output_path": result.output_path,
            "trained_tokens": result.trained_tokens,
            "steps": result.steps,
            "final_metrics": final_metrics,
        }
    )
    return result
