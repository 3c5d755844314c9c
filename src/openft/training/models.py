"""The trained model: load the base, make it trainable (LoRA or full), and save its servable weights."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from openft.training.spec import TrainingSpec


class ModelLoadError(RuntimeError):
    """The base model (or the adapter to continue from) could not be loaded."""


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as exc:
        raise ModelLoadError(f"Cannot load the tokenizer of base model {path!r}: {exc}") from exc


def load_base(path: str) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    try:
        # fp32 master weights whatever the checkpoint's dtype; bf16 compute comes from autocast.
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    except Exception as exc:
        raise ModelLoadError(f"Cannot load base model {path!r}: {exc}") from exc


def trainable_model(spec: TrainingSpec, weights_dir: Path | None) -> torch.nn.Module:
    """The model to optimise. ``weights_dir`` (a checkpoint's adapter/ or model/) overrides the start."""
    if spec.fine_tuning_type == "full":
        model = load_base(str(weights_dir) if weights_dir else spec.base_model_path)
        model.requires_grad_(True)
        return model
    from peft import LoraConfig, PeftModel, get_peft_model

    base = load_base(spec.base_model_path)
    start = weights_dir or (Path(spec.init_adapter_path) if spec.init_adapter_path else None)
    if start is not None:
        try:
            return PeftModel.from_pretrained(base, str(start), is_trainable=True)
        except Exception as exc:
            raise ModelLoadError(f"Cannot load the LoRA adapter at {str(start)!r}: {exc}") from exc
    config = LoraConfig(
        r=spec.lora_rank,
        lora_alpha=spec.lora_alpha,
        lora_dropout=spec.lora_dropout,
        target_modules=spec.lora_target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(base, config)


def causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a PEFT wrapper (LoRA layers stay injected in it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def reference_policy(
    spec: TrainingSpec, model: torch.nn.Module
) -> Callable[[], contextlib.AbstractContextManager[torch.nn.Module]]:
    """For DPO: a context that yields the model computing the reference policy.

    LoRA: the same model with adapters disabled (no extra memory). Full: a frozen copy of the
    base weights (not of a resumed checkpoint: the reference never moves).
    """
    if spec.fine_tuning_type == "lora":

        @contextlib.contextmanager
        def adapters_off() -> Iterator[torch.nn.Module]:
            with model.disable_adapter():
                yield causal_lm(model)

        return adapters_off
    frozen = load_base(spec.base_model_path).requires_grad_(False).eval()

    @contextlib.contextmanager
    def base_copy() -> Iterator[torch.nn.Module]:
        yield frozen

    return base_copy


def weights_subdir(spec: TrainingSpec) -> str:
    return "adapter" if spec.fine_tuning_type == "lora" else "model"


def save_servable(model: torch.nn.Module, tokenizer: Any, spec: TrainingSpec, directory: Path) -> Path:
    """Write ``adapter/`` (PEFT format) or ``model/`` with the tokenizer and chat template beside it."""
    target = directory / weights_subdir(spec)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target
