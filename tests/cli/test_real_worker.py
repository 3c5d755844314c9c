"""The CLI against a live openft with a real worker training the tiny model: create --watch to the end,
then chat with the result and continue training from it (``model="ft:..."``)."""

from __future__ import annotations

import threading
from pathlib import Path

from live import Openft, serve, write_chat_file

from openft.api.app import create_app
from openft.settings import Settings
from openft.worker.loop import Worker


def test_create_watch_trains_for_real_then_chat_and_continue_from_the_fine_tune(
    tmp_path: Path, tiny_model_dir
):
    home = tmp_path / "home"
    settings = Settings(
        home=home,
        database_url=f"sqlite:///{home / 'openft.db'}",
        base_models={"tiny-llama": str(tiny_model_dir)},
        poll_seconds=0.1,
        heartbeat_seconds=1.0,
    )
    app = create_app(settings)
    worker = Worker(app.state.services)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        with serve(app) as url:
            openft = Openft(f"{url}/v1")
            data = write_chat_file(tmp_path / "train.jsonl")
            created = openft(
                "jobs",
                "create",
                data,
                "--model",
                "tiny-llama",
                "--epochs",
                "2",
                "--batch-size",
                "4",
                "--suffix",
                "cli",
                "--watch",
            )
            assert "ft:tiny-llama:personal:cli:" in created.output
            job = openft.json("jobs", "list")[0]
            assert job["status"] == "succeeded" and job["trained_tokens"] > 0
            model = job["fine_tuned_model"]

            reply = openft("chat", model, "--message", "What is 2 + 2?")
            assert reply.output.strip()

            again = openft("jobs", "create", data, "--model", model, "--epochs", "1", "--watch")
            assert "ft:" in again.output
            child = openft.json("jobs", "list")[0]
            assert child["model"] == model and child["status"] == "succeeded"
            assert child["fine_tuned_model"] != model
    finally:
        worker.drain.set()
        thread.join(timeout=60)
        app.state.services.close()
