"""The contract between the worker and the training child: a frozen spec in, progress lines out.

Standard library only: the worker and services import this module without loading torch.

The child (``python -m openft.training.child SPEC.json``) writes one JSON object per line on
stdout, each with a ``"type"``:

- ``{"type": "started", "total_steps": int, "resumed_from_step": int}``
- ``{"type": "metrics", "step": int, "total_steps": int, "data": {...}, "tokens": int,
  "elapsed_seconds": float}``: ``data`` is OpenAI's metrics-event shape (``step``, ``train_loss``,
  ``train_mean_token_accuracy``, ``total_steps`` and, when evaluated, ``valid_loss``,
  ``valid_mean_token_accuracy``, ``full_valid_loss``, ``full_valid_mean_token_accuracy``).
- ``{"type": "checkpoint", "step": int, "path": str, "metrics": {...}, "epoch": int|null}``
- ``{"type": "message", "level": "info"|"warn"|"error", "message": str}``
- ``{"type": "paused", "step": int, "path": str}``: stopped on request after checkpointing.
- ``{"type": "cancelled", "step": int}``: stopped on request without checkpointing.
- ``{"type": "result", "output_path": str, "trained_tokens": int, "steps": int, "final_metrics": {...}}``
- ``{"type": "error", "code": str, "message": str}``: the run failed; codes below.

Signals: SIGUSR1 asks the child to checkpoint at the next step boundary and exit (pause,
drain); SIGTERM asks it to stop at the next step boundary without saving (cancel).

With ``n_devices > 1`` the child is torchrun's agent and its ranks (``launch.py``): the agent
forwards both signals to every rank, rank 0 alone writes the lines above, and any rank may write
an ``error`` line of its own failure; a rank that fails because another one died writes nothing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

# error.code values a failed training run reports
ERROR_OUT_OF_MEMORY = "out_of_memory"
ERROR_NAN_LOSS = "nan_loss"
ERROR_MODEL_LOAD = "model_load_failed"
ERROR_TRAINING = "training_failed"
ERROR_WORKER_LOST = "worker_lost"


@dataclass(frozen=True)
class TrainingSpec:
    job_id: str
    method: Literal["supervised", "dpo", "reinforcement"]
    base_model_path: str  # a local Hugging Face directory (already converted from GGUF if needed)
    training_file: str  # local path to the validated JSONL
    output_dir: str  # checkpoints/, adapter or model/, spec.json and metrics.jsonl go here
    seed: int
    n_epochs: int
    batch_size: int  # examples per optimizer step, as at OpenAI
    learning_rate: float  # base rate x learning_rate_multiplier, resolved by the caller
    fine_tuning_type: Literal["lora", "qlora", "full"] = "lora"
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    lora_target_modules: str | list[str] = "all-linear"
    max_seq_length: int = 2048
    beta: float | None = None  # DPO's beta; for reinforcement the KL penalty's weight
    validation_file: str | None = None
    init_adapter_path: str | None = None  # continue training from an earlier LoRA fine-tune
    warmup_ratio: float = 0.03
    eval_interval_steps: int = 10  # a small validation batch every N steps
    checkpoint_interval_seconds: float = 300.0  # time-based checkpoints besides epoch ends
    keep_checkpoints: int = 3
    micro_batch_tokens: int = 4096  # packed tokens per forward pass; more examples accumulate
    # Devices the job trains on: GPUs the worker made visible (CUDA_VISIBLE_DEVICES), or CPU processes.
    n_devices: int = 1
    gradient_checkpointing: bool = False  # recompute each layer in backward (memory plan decides)
    extra: dict[str, Any] = field(default_factory=dict)
    # reinforcement only (training/reinforcement.py)
    grader: dict[str, Any] | None = None  # OpenAI's grader object, validated at create
    group_size: int = 4  # completions sampled per prompt
    max_completion_tokens: int = 256  # generation budget per completion
    temperature: float = 1.0  # sampling temperature of the rollouts
    eval_samples: int = 16  # validation prompts scored every eval_interval_steps
    # how to grade: {"models": {name: {"base_path", "adapter_path"?, "full_model_path"?}},
    # "external_base_url"?, "timeout_seconds", "memory_mb", "concurrency"}
    grading: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainingSpec:
        return cls(**json.loads(text))
