"""Reinforcement fine-tuning really teaches the real base model a format: SmolLM2-135M-Instruct,
rewarded by a python grader for answers that end in ``#### <number>``, raises its mean training
reward, and the ft: model uses the format on held-out prompts more often than the base does."""

from __future__ import annotations

import json
import random
import re

import pytest

from openft.settings import DEFAULT_BASE_MODEL, Settings
from openft.worker.loop import Worker

pytestmark = pytest.mark.slow

FORMAT = re.compile(r"####\s*-?\d+\s*$")
GRADER = {
    "type": "python",
    "name": "ends with #### number",
    "source": "import re\n\ndef grade(sample, item):\n"
    "    return 1.0 if re.search(r'####\\s*-?\\d+\\s*$', sample['output_text'].strip()) else 0.0\n",
}
# One earlier exchange shows the format; the base model follows it only now and then (about one
# answer in five when this test was written), which leaves the reward room to rise.
SHOT = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "2 + 3 = 5 #### 5"}]


def _questions(seed: int, n: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    return [(rng.randint(2, 40), rng.randint(2, 40)) for _ in range(n)]


def _messages(a: int, b: int) -> list[dict]:
    return [*SHOT, {"role": "user", "content": f"What is {a} + {b}?"}]


def _prompts(seed: int, n: int) -> bytes:
    rows = [{"messages": _messages(a, b), "answer": str(a + b)} for a, b in _questions(seed, n)]
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


def _format_rate(client, model: str, questions: list[tuple[int, int]]) -> float:
    hits = total = 0
    for i, (a, b) in enumerate(questions):
        reply = client.chat.completions.create(
            model=model, messages=_messages(a, b), max_tokens=24, temperature=1.0, n=4, seed=i
        )
        for choice in reply.choices:
            hits += bool(FORMAT.search((choice.message.content or "").strip()))
            total += 1
    return hits / total


def test_rft_teaches_smollm2_to_end_answers_with_the_format(client, services):
    training = client.files.create(file=("prompts.jsonl", _prompts(1, 16)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=DEFAULT_BASE_MODEL,
        training_file=training.id,
        seed=3,
        suffix="format",
        method={
            "type": "reinforcement",
            "reinforcement": {
                "grader": GRADER,
                "hyperparameters": {
                    "n_epochs": 1,
                    "batch_size": 4,
                    "learning_rate_multiplier": 50,
                    "compute_multiplier": 1.5,  # groups of 6 completions
                    "max_completion_tokens": 24,
                },
            },
        },
    )
    Worker(services).run(burst=True)
    job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error

    metrics = [e.data for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if e.type == "metrics"][
        ::-1
    ]
    rewards = [m["train_reward_mean"] for m in metrics]
    print("training rewards by step:", [round(r, 3) for r in rewards])
    assert len(rewards) == 4
    assert sum(rewards[-2:]) / 2 > sum(rewards[:2]) / 2 + 0.2, rewards

    held_out = _questions(2, 8)
    base = _format_rate(client, DEFAULT_BASE_MODEL, held_out)
    tuned = _format_rate(client, job.fine_tuned_model, held_out)
    print(f"format on held-out prompts: base {base:.2f}, fine-tuned {tuned:.2f}")
    assert tuned > base + 0.25, (base, tuned)
