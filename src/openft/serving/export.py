"""Export a fine-tuned model for other engines: a PEFT adapter, or merged full weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Literal

from openft.serving.protocols import ResolvedModel

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
)


def export(model: ResolvedModel, fmt: Literal["adapter", "merged"], out: Path) -> Path:
    """Write ``model`` to ``out`` (which must not exist) and return it.

    ``adapter``: the PEFT adapter with tokenizer and chat template; ``base_model_name_or_path``
    points at the base model directory, which vLLM (``--enable-lora``) and
    ``PeftModel.from_pretrained`` load beside it. ``merged``: base plus adapter folded into one
    safetensors checkpoint that any transformers-compatible engine loads on its own.
    """
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose a new directory.")
    if model.adapter_path is None and fmt == "adapter":
        raise ValueError(f"{model.name} is a full fine-tune or a base model; export it with --format merged.")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    if fmt == "adapter":
        shutil.copytree(model.adapter_path, tmp)
        config_path = tmp / "adapter_config.json"
        config = json.loads(config_path.read_text())
        config["base_model_name_or_path"] = model.base_path
        config_path.write_text(json.dumps(config, indent=2))
    else:
        _merge(model, tmp)
    tmp.rename(out)
    return out


def _merge(model: ResolvedModel, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = model.full_model_path or model.base_path
    weights = AutoModelForCausalLM.from_pretrained(source, torch_dtype=torch.float32)
    tokenizer_dir = model.adapter_path or source
    if model.adapter_path is not None:
        from peft import PeftModel

        weights = PeftModel.from_pretrained(weights, model.adapter_path).merge_and_unload()
    weights.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    for name in TOKENIZER_FILES:
        src = Path(tokenizer_dir) / name
        if src.exists() and not (out / name).exists():
            shutil.copy2(src, out / name)
