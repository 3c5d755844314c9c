"""Resolves a model name a caller typed to the weights that serve it (base, adapter or full model)."""

from __future__ import annotations

from pathlib import Path

from openft.serving.protocols import ResolvedModel


class ServicesModelResolver:
    """The serving layer's ``ModelResolver`` over the Models service: the caller's organization and
    project decide what it may see (its own models and those shared with it); base models are materialized (GGUF → safetensors) on first use."""

    def __init__(self, services) -> None:
        self.services = services

    def resolve(self, owner, model: str) -> ResolvedModel:
        base_name, artifact = self.services.models.resolve_for_inference(owner, model)
        # Lazy: the registry's conversion path imports transformers, which the API only pays for
        # on its first chat request.
        from openft.training.base_models import BaseModelRegistry

        base_path = BaseModelRegistry.from_settings(self.services.settings).materialize(base_name)
        if artifact is None:
            return ResolvedModel(name=model, base_path=str(base_path))
        artifact = Path(artifact)
        if (artifact / "adapter").is_dir():
            return ResolvedModel(name=model, base_path=str(base_path), adapter_path=str(artifact / "adapter"))
        return ResolvedModel(name=model, base_path=str(base_path), full_model_path=str(artifact / "model"))
