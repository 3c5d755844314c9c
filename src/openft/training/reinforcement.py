"""The reinforcement recipe: ``train(spec, reporter)`` for ``method = "reinforcement"`` (GRPO-style).

Each step takes ``batch_size`` prompts, samples ``group_size`` completions of each from the current
policy (KV cache), grades them with the job's grader on a bounded pool, turns rewards into
group-normalised advantages and takes one optimizer step on the clipped policy-gradient loss with a
KL penalty to the reference (the base model: LoRA adapters switched off, or a frozen copy for full
fine-tuning). Setup, checkpoints, pause, cancel, resume and seeding are the supervised recipe's:
the same model, optimizer, schedule and checkpoint code, and the same progress protocol.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from openft.graders import parse_grader
from openft.graders.runner import GradeResult, Grading
from openft.graders.sandbox import SandboxLimits
from openft.training import checkpoints, devices
from openft.training.data import Tokenizing, read_jsonl
from openft.training.models import (
    causal_lm,
    load_tokenizer,
    reference_policy,
    save_servable,
    trainable_model,
    weights_subdir,
)
from openft.training.recipe import (
    MAX_GRAD_NORM,
    NonFiniteLossError,
    Progress,
    Reporter,
    TrainingResult,
    epoch_order,
    linear_schedule,
)
from openft.training.rollouts import (
    LossTally,
    Prompt,
    build_prompt,
    completion_sequence,
    group_advantages,
    policy_loss,
    policy_rows,
    sample,
    stop_token_ids,
)
from openft.training.spec import TrainingSpec

MAX_GRADER_WARNINGS = 10


def load_prompts(path: str, tok: Tokenizing, max_prompt_tokens: int) -> list[Prompt]:
    return [build_prompt(tok, example, max_prompt_tokens) for example in read_jsonl(path)]


def grading_for(spec: TrainingSpec) -> Grading:
    """The grader's runtime: the sandbox's limits and, for model graders, the models to ask."""
    settings = spec.grading or {}
    chat = None
    models = settings.get("models") or {}
    if models:
        from openft.graders.model_graders import OpenAICompatibleClient
        from openft.serving.engine import InferenceEngine
        from openft.serving.grader_models import EngineChatClient
        from openft.serving.protocols import ResolvedModel, StaticModelResolver

        local = {
            name: ResolvedModel(name=name, **paths) for name, paths in models.items() if "base_path" in paths
        }
        external = None
        if settings.get("external_base_url"):
            # The key comes from the worker's environment, never from the spec written to disk.
            external = OpenAICompatibleClient(
                settings["external_base_url"], os.environ.get("OPENFT_GRADER_API_KEY")
            )
        chat = EngineChatClient(StaticModelResolver(local), InferenceEngine(), "training", external)
    limits = SandboxLimits(
        timeout_seconds=float(settings.get("timeout_seconds", 30.0)),
        memory_bytes=int(settings.get("memory_mb", 1024)) * 1024 * 1024,
        protected_paths=tuple(settings.get("protected_paths", ())),
    )
    return Grading(chat=chat, sandbox=limits, concurrency=int(settings.get("concurrency", 4)))


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def reward_metrics(prefix: str, results: list[GradeResult]) -> dict[str, Any]:
    """``{prefix}_reward_mean`` and, for a multi grader, ``{prefix}_reward_<name>`` per sub-grader."""
    metrics: dict[str, Any] = {f"{prefix}_reward_mean": mean([r.reward for r in results])}
    for name in results[0].sub_rewards if results else ():
        metrics[f"{prefix}_reward_{name}"] = mean([r.sub_rewards[name] for r in results])
    return metrics


def train(spec: TrainingSpec, reporter: Reporter) -> TrainingResult:
    # ---- setup -------------------------------------------------------------------------------
    started = time.monotonic()
    out = Path(spec.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "spec.json").write_text(spec.to_json())
    ckpt_root = out / "checkpoints"
    device = devices.select(spec)
    precision = device.precision

    tokenizer = load_tokenizer(spec.base_model_path)
    tok = Tokenizing(tokenizer)
    budget = spec.max_completion_tokens
    max_prompt_tokens = max(1, spec.max_seq_length - budget)
    prompts = load_prompts(spec.training_file, tok, max_prompt_tokens)
    valid = load_prompts(spec.validation_file, tok, max_prompt_tokens) if spec.validation_file else []
    eval_prompts = valid[: spec.eval_samples]
    grader = parse_grader(spec.grader, "grader")
    grading = grading_for(spec)
    messages = [
        device.description,
        f"Reinforcement fine-tuning with grader {grader.name!r} ({grader.type}): {spec.group_size} completions "
        f"per prompt, at most {budget} tokens each, temperature {spec.temperature:g}, KL weight {spec.beta:g}.",
    ]
    truncated = sum(p.truncated for p in prompts)
    if truncated:
        messages.append(
            f"{truncated} prompt(s) longer than {max_prompt_tokens} tokens (max_seq_length minus the completion "
            "budget) were truncated from the start."
        )
    for message in messages + tok.messages:
        reporter.emit({"type": "message", "level": "info", "message": message})

    n = len(prompts)
    steps_per_epoch = math.ceil(n / spec.batch_size)
    total_steps = spec.n_epochs * steps_per_epoch
    resume = checkpoints.latest(ckpt_root)
    random.seed(spec.seed)
    np.random.seed(spec.seed % 2**32)
    torch.manual_seed(spec.seed)
    model = trainable_model(spec, resume.path / weights_subdir(spec) if resume else None, device)
    model.train()
    stop_ids = stop_token_ids(tokenizer, causal_lm(model))
    reference = reference_policy(spec, model, device) if spec.beta else None
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec.learning_rate, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(total_steps, spec.warmup_ratio))
    progress = Progress()
    if resume:
        state = resume.load_state()
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        device.restore_rng_state(state["rng"])
        progress = Progress(**state["progress"])
    with open(out / "metrics.jsonl", "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(m) + "\n" for m in progress.history)
    run_offset = progress.elapsed_seconds
    last_checkpoint_time = time.monotonic()
    warned: set[str] = set()
    reporter.emit({"type": "started", "total_steps": total_steps, "resumed_from_step": progress.step})

    last_saved: dict[str, Any] = {"step": None, "checkpoint": None}

    def save_checkpoint(epoch_end: bool) -> checkpoints.Checkpoint:
        # A step already saved in this run is not rewritten (see the supervised recipe).
        if last_saved["step"] == progress.step:
            return last_saved["checkpoint"]
        progress.elapsed_seconds = run_offset + time.monotonic() - started
        state = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": device.rng_state(),
            "progress": progress.__dict__,
        }
        saved = checkpoints.save(
            ckpt_root, progress.step, epoch_end, state, lambda d: save_servable(model, tokenizer, spec, d)
        )
        checkpoints.prune(ckpt_root, spec.keep_checkpoints)
        last_saved.update(step=progress.step, checkpoint=saved)
        return saved

    def warn_grader_errors(step: int, results: list[GradeResult]) -> None:
        failed = [r.error_summary() for r in results if r.failed]
        for summary in dict.fromkeys(failed):
            if summary in warned or len(warned) >= MAX_GRADER_WARNINGS:
                continue
            warned.add(summary)
            reporter.emit(
                {
                    "type": "message",
                    "level": "warn",
                    "message": f"Step {step}: {failed.count(summary)} of {len(results)} samples got reward 0 "
                    f"because the grader failed ({summary}).",
                }
            )

    # ---- loop --------------------------------------------------------------------------------
    while progress.epoch < spec.n_epochs:
        order = epoch_order(spec.seed, progress.epoch, n)
        batches = [order[i : i + spec.batch_size] for i in range(0, n, spec.batch_size)]
        while progress.position < len(batches):
            stop = reporter.stop_requested()
            if stop == "cancel":
                reporter.emit({"type": "cancelled", "step": progress.step})
                return TrainingResult("", progress.trained_tokens, progress.step, {}, stopped="cancel")
            if stop == "pause":
                saved = save_checkpoint(epoch_end=False)
                reporter.emit({"type": "paused", "step": progress.step, "path": str(saved.path)})
                return TrainingResult(
                    str(saved.path), progress.trained_tokens, progress.step, {}, stopped="pause"
                )

            # rollout: sample a group per prompt, grade every completion
            step_prompts = [prompts[i] for i in batches[progress.position]]
            completions = sample(
                model,
                tokenizer,
                step_prompts,
                group_size=spec.group_size,
                max_new_tokens=budget,
                temperature=spec.temperature,
                stop_ids=stop_ids,
                precision=precision(),
            )
            results = grading.grade_many(
                grader, [(c.text, step_prompts[c.prompt_index].item) for c in completions]
            )
            warn_grader_errors(progress.step + 1, results)
            rewards = torch.tensor([r.reward for r in results], dtype=torch.float32)
            advantages = group_advantages(rewards, spec.group_size)

            # update: one optimizer step on the clipped surrogate with the KL penalty
            sequences = [completion_sequence(step_prompts[c.prompt_index], c) for c in completions]
            normaliser = sum(len(c.token_ids) for c in completions)
            tally = LossTally()
            for prow in policy_rows(sequences, spec.micro_batch_tokens, device.torch_device):
                with precision():
                    loss = policy_loss(
                        causal_lm(model),
                        reference,
                        prow,
                        advantages,
                        None,
                        beta=spec.beta or 0.0,
                        normaliser=normaliser,
                        tally=tally,
                    )
                loss.backward()
            if not math.isfinite(tally.loss_sum):
                raise NonFiniteLossError(
                    f"The policy loss became {tally.loss_sum} at step {progress.step + 1}; stopping. "
                    "Lower the learning rate multiplier."
                )
            torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            tokens = sum(len(s) for s in sequences)
            progress.step += 1
            progress.position += 1
            progress.trained_tokens += tokens

            metrics: dict[str, Any] = {
                "step": progress.step,
                **reward_metrics("train", results),
                "train_reward_std": float(rewards.std()) if len(rewards) > 1 else 0.0,
                "train_loss": tally.loss_sum / max(tally.tokens, 1),
                "kl": tally.kl_sum / max(tally.tokens, 1) if spec.beta else None,
                "completion_length_mean": normaliser / max(len(completions), 1),
                "grader_error_rate": sum(r.failed for r in results) / max(len(results), 1),
                "total_steps": total_steps,
            }
            if eval_prompts and progress.step % spec.eval_interval_steps == 0:
                answers = sample(
                    model,
                    tokenizer,
                    eval_prompts,
                    group_size=1,
                    max_new_tokens=budget,
                    temperature=None,
                    stop_ids=stop_ids,
                    precision=precision(),
                )
                graded = grading.grade_many(
                    grader, [(a.text, eval_prompts[a.prompt_index].item) for a in answers]
                )
                metrics |= reward_metrics("valid", graded)
            epoch_end = progress.position == len(batches)
            progress.history.append(metrics)
            with open(out / "metrics.jsonl", "a", encoding="utf-8") as handle:
                handle.write(json.dumps(metrics) + "\n")
            reporter.emit(
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
                reporter.emit(
                    {
                        "type": "checkpoint",
                        "step": progress.step,
                        "path": str(saved.path),
                        "metrics": metrics,
                        "epoch": progress.epoch,
                        "epoch_end": True,
                    }
                )
                break
            if time.monotonic() - last_checkpoint_time >= spec.checkpoint_interval_seconds:
                save_checkpoint(epoch_end=False)
                last_checkpoint_time = time.monotonic()

    # ---- save --------------------------------------------------------------------------------
    final = out / "final"
    staging = out / f".final-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    save_servable(model, tokenizer, spec, staging)
    (staging / "spec.json").write_text(spec.to_json())
    shutil.rmtree(final, ignore_errors=True)
    os.rename(staging, final)
    final_metrics = dict(progress.history[-1]) if progress.history else {}
    result = TrainingResult(str(final), progress.trained_tokens, progress.step, final_metrics)
    reporter.emit(
        {
            "type": "result",
            "output_path": result.output_path,
            "trained_tokens": result.trained_tokens,
            "steps": result.steps,
            "final_metrics": final_metrics,
        }
    )
    return result
