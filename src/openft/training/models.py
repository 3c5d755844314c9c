"""The trained model: load the base, make it trainable (LoRA, QLoRA or full), and save its servable weights.

Dtypes and placement follow the device (``training/devices.py``); trained parameters are always fp32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from openft.training.spec import TrainingSpec

if TYPE_CHECKING:
    from openft.training.devices import Device

ADAPTER_TYPES = ("lora", "qlora")


class ModelLoadError(RuntimeError):
    """The base model (or the adapter to continue from) could not be loaded."""


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as exc:
        raise ModelLoadError(f"Cannot load the tokenizer of base model {path!r}: {exc}") from exc


def load_base(
    path: str,
    device: Device | None = None,
    dtype: torch.dtype = torch.float32,
    quantized: bool = False,
    placed: bool = True,
) -> torch.nn.Module:
    """The causal LM at ``path`` in ``dtype`` on ``device`` (default: fp32 on the CPU, SDPA).

    ``quantized``: linear weights in 4-bit NF4 (bitsandbytes, CUDA only), computing in bf16.
    ``placed=False`` leaves the weights in RAM (set up for ``device`` all the same): FSDP2 moves
    each rank's shard to its GPU, so the whole model never has to fit on one.
    """
    from transformers import AutoModelForCausalLM

    options: dict[str, Any] = {"dtype": dtype, "attn_implementation": device.attention if device else "sdpa"}
    if device is not None and device.kind == "cuda" and placed:
        options["device_map"] = {"": device.torch_device.index or 0}  # straight onto the GPU
    if quantized:
        from transformers import BitsAndBytesConfig

        options["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **options)
    except Exception as exc:
        hint = " QLoRA needs bitsandbytes (pip install 'openft[gpu]')." if quantized else ""
        raise ModelLoadError(f"Cannot load base model {path!r}: {exc}{hint}") from exc
    if device is not None and device.kind == "cuda":
        from openft.training.attention import VARLEN_KEY

        setattr(model, VARLEN_KEY, device.varlen)  # forward_hidden hands it to the attention layers
    return model


def trainable_model(
    spec: TrainingSpec, weights_dir: Path | None, device: Device | None = None, sharded: bool = False
) -> torch.nn.Module:
    """The model to optimise. ``weights_dir`` (a checkpoint's adapter/ or model/) overrides the start.
    ``sharded``: FSDP2 will shard it (full fine-tuning on several ranks), so it loads into RAM."""
    if spec.fine_tuning_type == "full":
        model = load_base(
            str(weights_dir) if weights_dir else spec.base_model_path, device, placed=not sharded
        )
        model.requires_grad_(True)
        return _with_checkpointing(model, spec)
    from peft import LoraConfig, PeftModel, get_peft_model

    dtype = device.base_dtype(spec.fine_tuning_type) if device else torch.float32
    base = load_base(spec.base_model_path, device, dtype, quantized=spec.fine_tuning_type == "qlora")
    _with_checkpointing(base, spec)
    start = weights_dir or (Path(spec.init_adapter_path) if spec.init_adapter_path else None)
    if start is not None:
        try:
            model = PeftModel.from_pretrained(base, str(start), is_trainable=True)
        except Exception as exc:
            raise ModelLoadError(f"Cannot load the LoRA adapter at {str(start)!r}: {exc}") from exc
    else:
        config = LoraConfig(
            r=spec.lora_rank,
            lora_alpha=spec.lora_alpha,
            lora_dropout=spec.lora_dropout,
            target_modules=spec.lora_target_modules,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(base, config)
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()  # fp32 adapters and optimizer state over a bf16 base
    if device is not None and device.kind == "cpu" and device.compute == "bf16":
        _adapted_weights_in_bf16(model)
    return model


def _adapted_weights_in_bf16(model: torch.nn.Module) -> None:
    """Store the frozen weight of every LoRA-adapted linear layer in bf16. Under bf16 autocast each
    use casts it to bf16 anyway, so the forward and backward see the same bits; this skips that cast
    at every forward and halves those weights' memory. Embeddings, norms and the LM head stay fp32
    (they are not autocast's to cast, and the residual stream stays fp32)."""
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer):
            base = module.get_base_layer()
            if isinstance(base, torch.nn.Linear) and not base.weight.requires_grad:
                base.weight.data = base.weight.data.to(torch.bfloat16)


def _with_checkpointing(model: torch.nn.Module, spec: TrainingSpec) -> torch.nn.Module:
    if spec.gradient_checkpointing:
        # Non-reentrant: works with frozen inputs (LoRA) and keeps the RNG state for dropout replays.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a PEFT wrapper (LoRA layers stay injected in it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class ReferencePolicy:
    """For DPO: ``with reference() as model`` yields the model computing the reference policy;
    ``module`` is the frozen copy when there is one (for FSDP2 to shard with the trained model)."""

    def __init__(
        self,
        context: Callable[[], contextlib.AbstractContextManager[torch.nn.Module]],
        module: torch.nn.Module | None = None,
    ) -> None:
        self.context = context
        self.module = module

    def __call__(self) -> contextlib.AbstractContextManager[torch.nn.Module]:
        return self.context()


def reference_policy(
    spec: TrainingSpec, model: torch.nn.Module, device: Device | None = None, sharded: bool = False
) -> ReferencePolicy:
    """For DPO: the reference policy.

    LoRA: the same model with adapters disabled (no extra memory). Full: a frozen copy of the
    base weights (not of a resumed checkpoint: the reference never moves); in RAM when ``sharded``.
    """
    if spec.fine_tuning_type in ADAPTER_TYPES:

        @contextlib.contextmanager
        def adapters_off() -> Iterator[torch.nn.Module]:
            with model.disable_adapter():
                yield causal_lm(model)

        return ReferencePolicy(adapters_off)
    dtype = device.reference_dtype() if device else torch.float32
    frozen = load_base(spec.base_model_path, device, dtype, placed=not sharded).requires_grad_(False).eval()

    @contextlib.contextmanager
    def base_copy() -> Iterator[torch.nn.Module]:
        yield frozen

    return ReferencePolicy(base_copy, frozen)


def weights_subdir(spec: TrainingSpec) -> str:
    return "adapter" if spec.fine_tuning_type in ADAPTER_TYPES else "model"


def save_servable(
    model: torch.nn.Module,
    tokenizer: Any,
    spec: TrainingSpec,
    directory: Path,
    weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``adapter/`` (PEFT format) or ``model/`` with the tokenizer and chat template beside it.
    ``weights``: the whole model's weights when the model holds only a shard of them (FSDP2)."""
    target = directory / weights_subdir(spec)
    if weights is None:
        model.save_pretrained(target)
    else:
        model.save_pretrained(target, state_dict=weights)
    tokenizer.save_pretrained(target)
    return target
