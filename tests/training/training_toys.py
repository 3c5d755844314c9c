"""Helpers for training-engine tests: specs over small JSONL files, a recording reporter, toy data."""

from __future__ import annotations

import json
from pathlib import Path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def make_spec(tmp_path: Path, model_dir: Path, rows: list[dict], **overrides):
    """A small spec over ``rows`` written to ``tmp_path/train.jsonl``; output under ``tmp_path/out``."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    from openft.training.spec import TrainingSpec

    fields = {
        "job_id": "ftjob-test",
        "method": "supervised",
        "base_model_path": str(model_dir),
        "training_file": str(write_jsonl(tmp_path / "train.jsonl", rows)),
        "output_dir": str(tmp_path / "out"),
        "seed": 0,
        "n_epochs": 2,
        "batch_size": 4,
        "learning_rate": 1e-2,
        "warmup_ratio": 0.0,
    }
    fields.update(overrides)
    return TrainingSpec(**fields)


class RecordingReporter:
    """Collects protocol lines; asks to stop (``pause``/``cancel``) once ``stop_after`` steps are done."""

    def __init__(self, stop: str | None = None, stop_after: int = 0) -> None:
        self.lines: list[dict] = []
        self.stop = stop
        self.stop_after = stop_after

    def emit(self, line: dict) -> None:
        json.dumps(line)  # every line must be JSON-serialisable
        self.lines.append(line)

    def stop_requested(self):
        steps = sum(1 for line in self.lines if line["type"] == "metrics")
        return self.stop if self.stop and steps >= self.stop_after else None

    def of_type(self, kind: str) -> list[dict]:
        return [line for line in self.lines if line["type"] == kind]


def code_word_rows(n: int = 12) -> list[dict]:
    return [
        {
            "messages": [
                {"role": "system", "content": "You answer briefly."},
                {"role": "user", "content": f"What is the code word? ({i})"},
                {"role": "assistant", "content": "banana"},
            ]
        }
        for i in range(n)
    ]
