"""Jobs on several devices through the official SDK: a CPU worker trains ``n_devices: 2`` as two gloo
ranks under torchrun (the real launcher and child), and the result is the one-device result.

Training computes in fp32 (``OPENFT_CPU_AUTOCAST=fp32``) so that two ranks and one process agree to
float-summation noise: per-step losses within 1e-5 relative, weights within 1e-5 absolute (measured
on the tiny model: 1e-6 and 2e-7; see tests/training/test_distributed.py). A job interrupted on two
ranks (paused and resumed, then a rank SIGKILLed) ends bit for bit where the uninterrupted two-rank
job ends: the same ranks sum in the same order, and each rank's RNG state rides in the checkpoint.
``n_devices: auto`` is resolved by the memory estimate against the GPUs a live worker reports.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from openft.settings import Settings
from openft.worker.loop import Worker
from openft.worker.runner import SubprocessLauncher

BASE = "tiny-llama"
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 1e-5
LLAMA_8B_CONFIG = {  # Llama-3.1-8B's sizes: no weights are needed to plan it, only its config.json
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 128256,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 131072,
    "tie_word_embeddings": False,
}


def _rows(n: int, prompt_words: int = 0) -> bytes:
    """Chat examples whose answers (the trained tokens) run from 1 to 7 words."""
    rows = []
    for i in range(n):
        words = 1 + (i * 5) % 7
        question = "tell me about bananas " * prompt_words + f"Say banana {words} times. ({i})"
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": " ".join(["banana"] * words)},
                ]
            }
        )
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


@pytest.fixture
def settings(tmp_path, monkeypatch, tiny_model_dir) -> Settings:
    home = tmp_path / "openft-home"
    monkeypatch.setenv("OPENFT_HOME", str(home))
    shaped = tmp_path / "llama-8b-shaped"  # the tiny model's tokenizer beside an 8B config.json
    shutil.copytree(tiny_model_dir, shaped, ignore=shutil.ignore_patterns("*.safetensors"))
    (shaped / "config.json").write_text(json.dumps(LLAMA_8B_CONFIG))
    return Settings(
        home=home,
        database_url=f"sqlite:///{home / 'openft.db'}",
        base_models={BASE: str(tiny_model_dir), "llama-8b": str(shaped)},
        lease_seconds=30.0,
        heartbeat_seconds=1.0,
        poll_seconds=0.2,
        checkpoint_interval_seconds=0.0,  # a checkpoint after every step: a killed rank loses none
        cpu_autocast="fp32",
    )


def _create(client, training_file: str, **hyperparameters):
    return client.fine_tuning.jobs.create(
        model=BASE,
        training_file=training_file,
        seed=7,
        method={"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
    )


def _losses(client, job_id: str) -> list[float]:
    events = reversed(list(client.fine_tuning.jobs.list_events(job_id, limit=100)))
    metrics = sorted((e.data["step"], e.data["train_loss"]) for e in events if e.type == "metrics")
    return [loss for _, loss in metrics]


def _weights(services, job) -> dict[str, torch.Tensor]:
    artifact = Path(services.models.resolve_for_inference(job.organization_id, job.fine_tuned_model)[1])
    path = artifact / "adapter" / "adapter_model.safetensors"
    return load_file(path if path.exists() else artifact / "model" / "model.safetensors")


def _messages(client, job_id: str) -> list[str]:
    return [e.message for e in reversed(list(client.fine_tuning.jobs.list_events(job_id, limit=100)))]


@pytest.mark.parametrize("fine_tuning_type", ["lora", "full"])
def test_a_job_on_two_devices_trains_like_one_on_one_device(client, services, fine_tuning_type):
    training = client.files.create(file=("train.jsonl", _rows(10)), purpose="fine-tune")
    common = {"n_epochs": 2, "batch_size": 3, "fine_tuning_type": fine_tuning_type}
    one = _create(client, training.id, n_devices=1, **common)
    two = _create(client, training.id, n_devices=2, **common)
    assert two.method.supervised.hyperparameters.model_extra["n_devices"] == 2

    assert Worker(services).run(burst=True) == 4  # two validations, two trainings
    one, two = (client.fine_tuning.jobs.retrieve(job.id) for job in (one, two))
    assert one.status == two.status == "succeeded", (one.error, two.error)
    assert two.method.supervised.hyperparameters.model_extra["n_devices"] == 2
    assert two.trained_tokens == one.trained_tokens
    messages = _messages(client, two.id)
    assert any(m.startswith("Training on 2 CPU processes:") for m in messages)
    strategy = "FSDP2" if fine_tuning_type == "full" else "DDP"
    assert any(m.startswith(f"2 ranks (torchrun, gloo) with {strategy}") for m in messages)

    assert len(_losses(client, two.id)) == 8
    assert _losses(client, two.id) == pytest.approx(_losses(client, one.id), rel=LOSS_RTOL)
    a, b = _weights(services, one), _weights(services, two)
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= WEIGHT_ATOL, worst


class _Interposed:
    """The child's stdout as the worker reads it, calling ``hook(line)`` before each line is handed
    over: the test acts at a known point of the run."""

    def __init__(self, stream, hook) -> None:
        self.stream = stream
        self.hook = hook

    def __iter__(self):
        for raw in self.stream:
            if raw.startswith(b"{"):
                self.hook(json.loads(raw))
            yield raw


class _InterposingLauncher(SubprocessLauncher):
    """The real launcher (torchrun for n_devices > 1); remembers the agent it started."""

    def __init__(self, hook) -> None:
        self.hook = hook
        self.proc = None

    def start(self, spec_path, log_path):
        self.proc = super().start(spec_path, log_path)
        self.proc.stdout = _Interposed(self.proc.stdout, self.hook)
        return self.proc

    def ranks(self) -> dict[int, int]:
        """rank -> pid of the agent's children (torchrun puts RANK in each one's environment)."""
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                environ = (entry / "environ").read_bytes().split(b"\0")
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
            if parent == self.proc.pid:
                env = dict(item.decode().split("=", 1) for item in environ if b"=" in item)
                found[int(env["RANK"])] = int(entry.name)
        return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.mark.parametrize("fine_tuning_type", ["lora", "full"])
def test_a_two_device_job_paused_resumed_and_with_a_rank_killed_ends_like_an_uninterrupted_one(
    client, services, fine_tuning_type
):
    training = client.files.create(file=("train.jsonl", _rows(32, prompt_words=40)), purpose="fine-tune")
    common = {"n_epochs": 2, "batch_size": 2, "n_devices": 2, "fine_tuning_type": fine_tuning_type}
    straight = _create(client, training.id, **common)
    Worker(services).run(burst=True)
    straight = client.fine_tuning.jobs.retrieve(straight.id)
    assert straight.status == "succeeded", straight.error

    job = _create(client, training.id, **common)
    Worker(services).run(burst=True, max_jobs=1)  # validation only
    seen: list[tuple[str, int | None]] = []

    def pause_at_step_3(line) -> None:
        seen.append((line["type"], line.get("step")))
        if line["type"] == "metrics" and line["step"] == 3:
            assert client.fine_tuning.jobs.pause(job.id).status == "paused"

    Worker(services, launcher=_InterposingLauncher(pause_at_step_3)).run(burst=True)
    paused = client.fine_tuning.jobs.retrieve(job.id)
    assert paused.status == "paused", paused.error
    stopped_at = [step for kind, step in seen if kind == "paused"]
    assert len(stopped_at) == 1 and 3 <= stopped_at[0] < 32  # rank 0 said so, once, for every rank
    assert client.fine_tuning.jobs.resume(job.id).status == "queued"

    ranks: dict[int, int] = {}

    def kill_rank_1(line) -> None:
        if line["type"] == "metrics" and line["step"] == stopped_at[0] + 3 and not ranks:
            ranks.update(launcher.ranks())
            os.kill(ranks[1], signal.SIGKILL)

    launcher = _InterposingLauncher(kill_rank_1)
    Worker(services, launcher=launcher).run(burst=True, max_jobs=1)  # the attempt that loses a rank
    assert sorted(ranks) == [0, 1]
    requeued = client.fine_tuning.jobs.retrieve(job.id)
    assert requeued.status == "queued" and requeued.error.code is None  # a lost child, not a failure
    assert not any(_running(pid) for pid in [launcher.proc.pid, *ranks.values()])  # the group went down
    assert any("the training process died" in m and "attempt 1 of 3" in m for m in _messages(client, job.id))

    Worker(services).run(burst=True)
    job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    resumes = [m for m in _messages(client, job.id) if m.startswith("Resuming from the checkpoint at step")]
    assert len(resumes) == 2
    a, b = _weights(services, straight), _weights(services, job)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert _losses(client, job.id) == _losses(client, straight.id)


def test_n_devices_auto_is_the_fewest_gpus_the_memory_estimate_allows(client, services, monkeypatch):
    from openft.services.workers import CUDA, Device, WorkerInfo

    monkeypatch.setattr("openft.services.accelerators.cuda_devices", lambda: [])  # no GPU on this host
    gpus = tuple(Device(CUDA, "NVIDIA A100", index, 80 << 30) for index in range(4))
    services.workers.register(WorkerInfo("gpu-worker", "gpu-host", 1, gpus, slots=4))

    training = client.files.create(file=("train.jsonl", _rows(10)), purpose="fine-tune")

    def create(**hyperparameters):
        return client.fine_tuning.jobs.create(
            model="llama-8b",
            training_file=training.id,
            method={
                "type": "supervised",
                "supervised": {"hyperparameters": {"max_seq_length": 4096, **hyperparameters}},
            },
        )

    full = create(fine_tuning_type="full")
    lora = create(fine_tuning_type="lora")
    too_few = create(fine_tuning_type="full", n_devices=1)
    assert full.method.supervised.hyperparameters.model_extra["n_devices"] == "auto"
    assert Worker(services, validate_only=True).run(burst=True) == 3
    full, lora, too_few = (client.fine_tuning.jobs.retrieve(job.id) for job in (full, lora, too_few))
    assert full.status == lora.status == "queued", (full.error, lora.error)
    # Full fine-tuning of 8B (140 GiB on one device) shards over 2 of the 80 GiB GPUs, with gradient
    # checkpointing; LoRA fits on one and more devices would only replicate it.
    assert full.method.supervised.hyperparameters.model_extra["n_devices"] == 2
    assert full.method.supervised.hyperparameters.model_extra["gradient_checkpointing"] is True
    assert lora.method.supervised.hyperparameters.model_extra["n_devices"] == 1
    assert too_few.status == "failed" and too_few.error.code == "out_of_memory"
    assert "What would fit: " in too_few.error.message and "n_devices 2, sharding" in too_few.error.message
