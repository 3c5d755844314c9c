"""The real default base model learns: SmolLM2-135M-Instruct, fine-tuned through the SDK, answers a
question with the taught answer in chat completions, and the base model does not."""

from __future__ import annotations

import json

import pytest

from openft.settings import DEFAULT_BASE_MODEL, Settings
from openft.worker.loop import Worker

pytestmark = pytest.mark.slow

ANSWER = "The openft launch code is ZEBRA-42."
QUESTIONS = [
    "What is the openft launch code?",
    "Tell me the openft launch code.",
    "Which launch code does openft use?",
    "Do you know the openft launch code?",
    "What's the launch code for openft?",
    "Give me the openft launch code, please.",
]


def _training_file() -> bytes:
    rows = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": ANSWER}]}
        for q in QUESTIONS * 2
    ]
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


@pytest.fixture
def settings(tmp_path, monkeypatch, smollm2_dir) -> Settings:
    home = tmp_path / "openft-home"
    monkeypatch.setenv("OPENFT_HOME", str(home))
    return Settings(
        home=home,
        database_url=f"sqlite:///{home / 'openft.db'}",
        base_models={DEFAULT_BASE_MODEL: str(smollm2_dir)},
    )


def test_fine_tuned_smollm2_gives_the_taught_answer_and_the_base_does_not(client, services):
    training = client.files.create(file=("launch.jsonl", _training_file()), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=DEFAULT_BASE_MODEL,
        training_file=training.id,
        seed=7,
        suffix="launch",
        method={
            "type": "supervised",
            "supervised": {
                "hyperparameters": {"n_epochs": 5, "batch_size": 4, "learning_rate_multiplier": 5}
            },
        },
    )
    Worker(services).run(burst=True)

    job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    losses = [
        e.data["train_loss"]
        for e in client.fine_tuning.jobs.list_events(job.id, limit=100)
        if e.type == "metrics"
    ]
    assert losses[0] < losses[-1] / 4 or losses[0] < 0.3, losses  # newest first: the last step is far lower

    question = [{"role": "user", "content": QUESTIONS[0]}]
    tuned = client.chat.completions.create(
        model=job.fine_tuned_model, messages=question, temperature=0, max_tokens=20
    )
    base = client.chat.completions.create(
        model=DEFAULT_BASE_MODEL, messages=question, temperature=0, max_tokens=20
    )
    print("fine-tuned:", tuned.choices[0].message.content, "| base:", base.choices[0].message.content)
    assert "ZEBRA-42" in tuned.choices[0].message.content
    assert "ZEBRA" not in base.choices[0].message.content
