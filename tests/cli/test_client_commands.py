"""Each client command against a live openft: files, jobs, models, errors, and every --help."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from live import JobDriver, LiveServer, Openft, create_job, write_chat_file

from openft.cli.main import main


def _leaf_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for name, command in group.commands.items():
        path = (*prefix, name)
        paths.append(path)
        if isinstance(command, click.Group):
            paths.extend(_leaf_commands(command, path))
    return paths


CLIENT_PATHS = [p for p in _leaf_commands(main) if p[0] in {"jobs", "files", "models", "chat", "validate"}]


@pytest.mark.parametrize("path", CLIENT_PATHS, ids=" ".join)
def test_help_of_every_client_command_shows_its_docstring(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    command = main
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    first_line = (command.help or "").strip().splitlines()[0]
    assert first_line and first_line[:40] in " ".join(result.output.split())


def test_client_commands_cover_the_documented_surface() -> None:
    expected = (
        {
            ("jobs", verb)
            for verb in (
                "create",
                "list",
                "get",
                "events",
                "checkpoints",
                "cancel",
                "pause",
                "resume",
                "watch",
            )
        }
        | {("files", verb) for verb in ("list", "upload", "download", "delete")}
        | {
            ("models", "list"),
            ("models", "delete"),
            ("chat",),
            ("validate",),
        }
    )
    assert expected <= set(CLIENT_PATHS)


def test_files_upload_list_download_delete_round_trip(
    openft: Openft, chat_file: Path, tmp_path: Path
) -> None:
    file_id = openft("files", "upload", chat_file).stdout.strip()
    assert file_id.startswith("file-")

    listed = openft.json("files", "list")
    assert [f["id"] for f in listed] == [file_id]
    assert listed[0]["filename"] == "train.jsonl" and listed[0]["purpose"] == "fine-tune"
    assert file_id in openft("files", "list").stdout

    out = tmp_path / "copy.jsonl"
    openft("files", "download", file_id, "-o", out)
    assert out.read_bytes() == chat_file.read_bytes()
    assert openft("files", "download", file_id).stdout_bytes == chat_file.read_bytes()

    openft("files", "delete", file_id)
    assert openft.json("files", "list") == []


def test_files_download_unknown_id_exits_1_with_the_server_message(openft: Openft) -> None:
    result = openft("files", "download", "file-nope", expect=1)
    assert "No such File object: file-nope" in result.output
    assert "HTTP 404" in result.output
    assert "Traceback" not in result.output


def test_jobs_create_uploads_files_and_sends_every_option(
    openft: Openft, live_server: LiveServer, chat_file: Path, tmp_path: Path
) -> None:
    validation = write_chat_file(tmp_path / "valid.jsonl", n=3)
    job = openft.json(
        "jobs",
        "create",
        chat_file,
        "--validation",
        validation,
        "--suffix",
        "demo",
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--learning-rate-multiplier",
        "0.5",
        "--seed",
        "7",
    )
    assert job["object"] == "fine_tuning.job" and job["status"] == "validating_files"
    assert job["seed"] == 7 and job["user_provided_suffix"] == "demo"
    assert job["method"]["type"] == "supervised"
    hp = job["method"]["supervised"]["hyperparameters"]
    assert (hp["n_epochs"], hp["batch_size"], hp["learning_rate_multiplier"]) == (2, 4, 0.5)
    files = {f["id"]: f["filename"] for f in openft.json("files", "list")}
    assert files[job["training_file"]] == "train.jsonl"
    assert files[job["validation_file"]] == "valid.jsonl"


def test_jobs_list_get_and_events_show_the_job(openft: Openft, chat_file: Path) -> None:
    created = openft("jobs", "create", chat_file).stdout
    job_id = created.split()[3]
    assert job_id.startswith("ftjob-")

    assert [j["id"] for j in openft.json("jobs", "list")] == [job_id]
    assert job_id in openft("jobs", "list").stdout
    assert openft.json("jobs", "get", job_id)["id"] == job_id
    shown = openft("jobs", "get", job_id).stdout
    assert "validating_files" in shown and "SmolLM2-135M-Instruct" in shown

    events = openft.json("jobs", "events", job_id)
    assert events[-1]["message"] == f"Created fine-tuning job: {job_id}"  # newest first, as the API
    printed = openft("jobs", "events", job_id).stdout.splitlines()
    assert printed[0].endswith(f"Created fine-tuning job: {job_id}")  # oldest first, for reading


def test_jobs_pause_resume_cancel_follow_the_lifecycle(
    openft: Openft, live_server: LiveServer, chat_file: Path
) -> None:
    job_id = create_job(live_server, chat_file)
    JobDriver(live_server.services, job_id).start()

    assert openft.json("jobs", "pause", job_id)["status"] == "paused"
    assert f"Job {job_id} is now queued." in openft("jobs", "resume", job_id).stdout
    assert openft.json("jobs", "cancel", job_id)["status"] == "cancelled"
    refused = openft("jobs", "cancel", job_id, expect=1)
    assert "cancelled" in refused.output and "HTTP 400" in refused.output


def test_jobs_checkpoints_lists_servable_names(
    openft: Openft, live_server: LiveServer, chat_file: Path, tmp_path: Path
) -> None:
    job_id = create_job(live_server, chat_file)
    driver = JobDriver(live_server.services, job_id).start()
    driver.step(1, 2.0)
    name = driver.checkpoint(1, 2.0, tmp_path)

    listed = openft.json("jobs", "checkpoints", job_id)
    assert [(c["step_number"], c["fine_tuned_model_checkpoint"]) for c in listed] == [(1, name)]
    assert listed[0]["metrics"]["train_loss"] == 2.0
    assert name in openft("jobs", "checkpoints", job_id).stdout


def test_models_list_and_delete(
    openft: Openft, live_server: LiveServer, chat_file: Path, tmp_path: Path
) -> None:
    job_id = create_job(live_server, chat_file)
    driver = JobDriver(live_server.services, job_id).start()
    model = driver.succeed(tmp_path)

    ids = [m["id"] for m in openft.json("models", "list")]
    assert "SmolLM2-135M-Instruct" in ids and model in ids
    assert model in openft("models", "list").stdout

    openft("models", "delete", model)
    assert model not in [m["id"] for m in openft.json("models", "list")]
    assert "does not exist" in openft("models", "delete", "ft:nope", expect=1).output


def test_unreachable_server_is_one_line_with_a_hint(tmp_path: Path) -> None:
    # A port that was just free: nothing listens there.
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = CliRunner().invoke(main, ["jobs", "list", "--base-url", f"http://127.0.0.1:{port}/v1"])
    assert result.exit_code == 1
    assert "Could not reach" in result.output and "openft serve" in result.output
