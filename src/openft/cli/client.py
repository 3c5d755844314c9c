"""Client commands that talk to any OpenAI-compatible endpoint through the official SDK."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import openai

from openft.cli import render
from openft.cli.validate import validate
from openft.cli.watch import report_outcome, watch_job
from openft.settings import DEFAULT_BASE_MODEL

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
# The SDK refuses to start without a key; openft on loopback accepts any, so a placeholder will do.
PLACEHOLDER_API_KEY = "openft-no-key"


class ClientCommand(click.Command):
    """Turns the SDK's errors into one readable line and exit code 1, instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except openai.APIStatusError as exc:
            raise click.ClickException(_describe(exc)) from None
        except openai.APIConnectionError as exc:
            base_url = ctx.params.get("base_url")
            raise click.ClickException(
                f"Could not reach {base_url}: {exc}. Is the server running (`openft serve`)? "
                "Set --base-url or OPENAI_BASE_URL to point elsewhere."
            ) from None


def _describe(exc: openai.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error", body) if isinstance(body.get("error", body), dict) else {}
    message = error.get("message") or exc.message
    details = [f"HTTP {exc.status_code}"]
    if error.get("param"):
        details.append(f"param: {error['param']}")
    if error.get("code"):
        details.append(f"code: {error['code']}")
    return f"{message} ({', '.join(details)})"


def client_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Adds ``--base-url`` and ``--api-key`` and hands the command a ready ``client``."""

    @click.option(
        "--base-url",
        envvar="OPENAI_BASE_URL",
        default=DEFAULT_BASE_URL,
        show_default=True,
        help="OpenAI-compatible endpoint (env: OPENAI_BASE_URL).",
    )
    @click.option(
        "--api-key",
        envvar="OPENAI_API_KEY",
        default=None,
        help="API key sent as Bearer (env: OPENAI_API_KEY; a placeholder if unset).",
    )
    @functools.wraps(func)
    def wrapper(*args: Any, base_url: str, api_key: str | None, **kwargs: Any) -> Any:
        client = openai.OpenAI(base_url=base_url, api_key=api_key or PLACEHOLDER_API_KEY)
        return func(client, *args, **kwargs)

    return wrapper


json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON for scripts instead of a table."
)
limit_option = click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10_000))


# ---------------------------------------------------------------------------------------- jobs

JOB_COLUMNS: list[render.Column] = [
    ("ID", lambda j: j.id),
    ("STATUS", lambda j: j.status),
    ("MODEL", lambda j: j.model),
    ("CREATED", lambda j: render.when(j.created_at)),
    ("DURATION", lambda j: render.duration(j.created_at, j.finished_at) if j.status != "failed" else "-"),
    ("TOKENS", lambda j: j.trained_tokens),
    ("FINE-TUNED MODEL", lambda j: j.fine_tuned_model),
]


@click.group()
def jobs() -> None:
    """Create, follow and control fine-tuning jobs."""


def _upload(client: openai.OpenAI, path: Path) -> str:
    with path.open("rb") as handle:
        uploaded = client.files.create(file=(path.name, handle), purpose="fine-tune")
    click.echo(f"Uploaded {path.name} as {uploaded.id} ({uploaded.bytes:,} bytes).", err=True)
    return uploaded.id


def _method(method: str, hyperparameters: dict[str, Any]) -> dict[str, Any]:
    return {"type": method, method: {"hyperparameters": hyperparameters}}


@jobs.command("create", cls=ClientCommand)
@click.argument("training_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--validation", "validation_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--model", default=DEFAULT_BASE_MODEL, show_default=True, help="Base model, alias, or ft: model."
)
@click.option("--suffix", help="Up to 64 characters, included in the fine-tuned model's name.")
@click.option("--epochs", "n_epochs", type=click.IntRange(1, 50), help="Default: auto.")
@click.option("--batch-size", type=click.IntRange(1, 256), help="Examples per optimizer step. Default: auto.")
@click.option(
    "--learning-rate-multiplier", type=click.FloatRange(min=0, min_open=True), help="Default: auto."
)
@click.option("--method", type=click.Choice(["supervised", "dpo"]), default="supervised", show_default=True)
@click.option("--seed", type=click.IntRange(0, 2_147_483_647))
@click.option("--watch", is_flag=True, help="Follow the job with a live progress bar until it ends.")
@json_option
@client_options
def jobs_create(
    client: openai.OpenAI,
    training_file: Path,
    validation_file: Path | None,
    model: str,
    suffix: str | None,
    n_epochs: int | None,
    batch_size: int | None,
    learning_rate_multiplier: float | None,
    method: str,
    seed: int | None,
    watch: bool,
    as_json: bool,
) -> None:
    """Upload TRAINING_FILE (and --validation) and create a fine-tuning job from it in one go.

    With --watch, a progress bar follows the job; Ctrl-C stops watching, not the job.
    """
    hyperparameters = {
        key: value
        for key, value in (
            ("n_epochs", n_epochs),
            ("batch_size", batch_size),
            ("learning_rate_multiplier", learning_rate_multiplier),
        )
        if value is not None
    }
    params: dict[str, Any] = {
        "model": model,
        "training_file": _upload(client, training_file),
        "method": _method(method, hyperparameters),
    }
    if validation_file is not None:
        params["validation_file"] = _upload(client, validation_file)
    if suffix is not None:
        params["suffix"] = suffix
    if seed is not None:
        params["seed"] = seed
    job = client.fine_tuning.jobs.create(**params)
    if as_json and not watch:
        render.echo_json(job)
        return
    click.echo(f"Created fine-tuning job {job.id} ({job.status}).")
    if watch:
        _follow(client, job.id, as_json)


def _follow(client: openai.OpenAI, job_id: str, as_json: bool) -> None:
    click.echo("Watching; Ctrl-C stops watching, the job keeps running.", err=True)
    try:
        job = watch_job(client, job_id)
    except KeyboardInterrupt:
        click.echo(f"\nStopped watching. The job keeps running: `openft jobs watch {job_id}`.", err=True)
        sys.exit(130)
    if as_json:
        render.echo_json(job)
    sys.exit(report_outcome(job))


@jobs.command("watch", cls=ClientCommand)
@click.argument("job_id")
@json_option
@client_options
def jobs_watch(client: openai.OpenAI, job_id: str, as_json: bool) -> None:
    """Follow JOB_ID with a live progress bar until it ends; Ctrl-C stops watching, not the job.

    Exits 0 if the job succeeded, 1 if it failed or was cancelled.
    """
    _follow(client, job_id, as_json)


@jobs.command("list", cls=ClientCommand)
@limit_option
@json_option
@client_options
def jobs_list(client: openai.OpenAI, limit: int, as_json: bool) -> None:
    """List fine-tuning jobs, newest first."""
    page = client.fine_tuning.jobs.list(limit=limit)
    if as_json:
        render.echo_json(page.data)
    else:
        render.echo_table(page.data, JOB_COLUMNS, empty="No fine-tuning jobs yet.")


def _echo_job(job: Any) -> None:
    hp = job.hyperparameters
    method = job.method.type if job.method else "supervised"
    if job.method is not None and getattr(job.method, method, None) is not None:
        hp = getattr(job.method, method).hyperparameters or hp
    error = job.error if job.error is not None and getattr(job.error, "message", None) else None
    render.echo_fields(
        [
            ("id", job.id),
            ("status", job.status),
            ("model", job.model),
            ("method", method),
            ("created", render.when(job.created_at)),
            ("finished", render.when(job.finished_at)),
            ("training file", job.training_file),
            ("validation file", job.validation_file),
            ("trained tokens", job.trained_tokens),
            ("fine-tuned model", job.fine_tuned_model),
            ("result files", ", ".join(job.result_files or []) or None),
            ("seed", job.seed),
        ]
    )
    if hp is not None:
        values = hp.model_dump(exclude_none=True) if hasattr(hp, "model_dump") else dict(hp)
        click.echo("hyperparameters:  " + ", ".join(f"{k}={v}" for k, v in values.items()))
    if error is not None:
        click.echo(f"error:  {error.message} (code: {error.code}, param: {error.param})")


@jobs.command("get", cls=ClientCommand)
@click.argument("job_id")
@json_option
@client_options
def jobs_get(client: openai.OpenAI, job_id: str, as_json: bool) -> None:
    """Show one fine-tuning job: status, hyperparameters, result, error."""
    job = client.fine_tuning.jobs.retrieve(job_id)
    if as_json:
        render.echo_json(job)
    else:
        _echo_job(job)


@jobs.command("events", cls=ClientCommand)
@click.argument("job_id")
@limit_option
@json_option
@client_options
def jobs_events(client: openai.OpenAI, job_id: str, limit: int, as_json: bool) -> None:
    """List a job's most recent events, printed oldest first (--json: newest first, as the API)."""
    page = client.fine_tuning.jobs.list_events(job_id, limit=limit)
    if as_json:
        render.echo_json(page.data)
        return
    for event in reversed(page.data):
        click.echo(f"{render.when(event.created_at)}  {event.level:5}  {event.message}")


CHECKPOINT_COLUMNS: list[render.Column] = [
    ("STEP", lambda c: c.step_number),
    ("TRAIN LOSS", lambda c: getattr(c.metrics, "train_loss", None)),
    ("VALID LOSS", lambda c: getattr(c.metrics, "valid_loss", None)),
    ("CREATED", lambda c: render.when(c.created_at)),
    ("MODEL", lambda c: c.fine_tuned_model_checkpoint),
]


@jobs.command("checkpoints", cls=ClientCommand)
@click.argument("job_id")
@limit_option
@json_option
@client_options
def jobs_checkpoints(client: openai.OpenAI, job_id: str, limit: int, as_json: bool) -> None:
    """List a job's checkpoints, newest first; each MODEL name can be used for chat."""
    page = client.fine_tuning.jobs.checkpoints.list(job_id, limit=limit)
    if as_json:
        render.echo_json(page.data)
    else:
        render.echo_table(page.data, CHECKPOINT_COLUMNS, empty="No checkpoints yet.")


def _control(verb: str, doc: str) -> click.Command:
    @json_option
    @client_options
    def command(client: openai.OpenAI, job_id: str, as_json: bool) -> None:
        job = getattr(client.fine_tuning.jobs, verb)(job_id)
        if as_json:
            render.echo_json(job)
        else:
            click.echo(f"Job {job.id} is now {job.status}.")

    command.__doc__ = doc
    return jobs.command(verb, cls=ClientCommand)(click.argument("job_id")(command))


_control("cancel", "Cancel JOB_ID; a running job stops at the next step boundary.")
_control("pause", "Pause JOB_ID at the next step boundary, with a checkpoint to resume from.")
_control("resume", "Resume a paused JOB_ID: it is queued again and continues from its checkpoint.")


# --------------------------------------------------------------------------------------- files

FILE_COLUMNS: list[render.Column] = [
    ("ID", lambda f: f.id),
    ("PURPOSE", lambda f: f.purpose),
    ("BYTES", lambda f: f"{f.bytes:,}"),
    ("CREATED", lambda f: render.when(f.created_at)),
    ("FILENAME", lambda f: f.filename),
]


@click.group()
def files() -> None:
    """Upload, list, download and delete files."""


@files.command("list", cls=ClientCommand)
@click.option("--purpose", help="Only files with this purpose (fine-tune, fine-tune-results, ...).")
@limit_option
@json_option
@client_options
def files_list(client: openai.OpenAI, purpose: str | None, limit: int, as_json: bool) -> None:
    """List files, newest first."""
    kwargs: dict[str, Any] = {"limit": limit}
    if purpose:
        kwargs["purpose"] = purpose
    page = client.files.list(**kwargs)
    if as_json:
        render.echo_json(page.data)
    else:
        render.echo_table(page.data, FILE_COLUMNS, empty="No files yet.")


@files.command("upload", cls=ClientCommand)
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--purpose", default="fine-tune", show_default=True)
@json_option
@client_options
def files_upload(client: openai.OpenAI, path: Path, purpose: str, as_json: bool) -> None:
    """Upload PATH; prints the new file id."""
    with path.open("rb") as handle:
        uploaded = client.files.create(file=(path.name, handle), purpose=purpose)  # type: ignore[arg-type]
    if as_json:
        render.echo_json(uploaded)
    else:
        click.echo(uploaded.id)


@files.command("get", cls=ClientCommand)
@click.argument("file_id")
@json_option
@client_options
def files_get(client: openai.OpenAI, file_id: str, as_json: bool) -> None:
    """Show one file's metadata."""
    found = client.files.retrieve(file_id)
    if as_json:
        render.echo_json(found)
    else:
        render.echo_table([found], FILE_COLUMNS)


@files.command("download", cls=ClientCommand)
@click.argument("file_id")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Default: stdout.")
@client_options
def files_download(client: openai.OpenAI, file_id: str, output: Path | None) -> None:
    """Download a file's content to --output, or to stdout."""
    content = client.files.content(file_id).read()
    if output is None:
        sys.stdout.buffer.write(content)
    else:
        output.write_bytes(content)
        click.echo(f"Wrote {len(content):,} bytes to {output}.", err=True)


@files.command("delete", cls=ClientCommand)
@click.argument("file_id")
@client_options
def files_delete(client: openai.OpenAI, file_id: str) -> None:
    """Delete a file."""
    client.files.delete(file_id)
    click.echo(f"Deleted {file_id}.")


# -------------------------------------------------------------------------------------- models


@click.group()
def models() -> None:
    """List and delete models (base and fine-tuned)."""


@models.command("list", cls=ClientCommand)
@json_option
@client_options
def models_list(client: openai.OpenAI, as_json: bool) -> None:
    """List the models this endpoint serves."""
    page = client.models.list()
    if as_json:
        render.echo_json(page.data)
        return
    columns: list[render.Column] = [
        ("ID", lambda m: m.id),
        ("OWNED BY", lambda m: m.owned_by),
        ("CREATED", lambda m: render.when(m.created)),
    ]
    render.echo_table(page.data, columns, empty="No models.")


@models.command("delete", cls=ClientCommand)
@click.argument("name")
@client_options
def models_delete(client: openai.OpenAI, name: str) -> None:
    """Delete a fine-tuned model by NAME (ft:...)."""
    client.models.delete(name)
    click.echo(f"Deleted {name}.")


# ---------------------------------------------------------------------------------------- chat


@click.command("chat", cls=ClientCommand)
@click.argument("model")
@click.option("-m", "--message", help="Send one message, print the streamed answer and exit.")
@click.option("--system", help="A system prompt for the conversation.")
@click.option(
    "--max-tokens",
    type=click.IntRange(1),
    default=None,
    help="Cap the answer's length (default: the server's, up to the model's context).",
)
@click.option("--temperature", type=click.FloatRange(0, 2), default=None)
@client_options
def chat(
    client: openai.OpenAI,
    model: str,
    message: str | None,
    system: str | None,
    max_tokens: int | None,
    temperature: float | None,
) -> None:
    """Chat with MODEL, streaming tokens as they are generated (empty line or Ctrl-D to quit)."""
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    extra: dict[str, Any] = {} if temperature is None else {"temperature": temperature}
    if max_tokens is not None:
        extra["max_tokens"] = max_tokens

    def turn(text: str) -> None:
        history.append({"role": "user", "content": text})
        stream = client.chat.completions.create(model=model, messages=history, stream=True, **extra)  # type: ignore[call-overload]
        answer = []
        for chunk in stream:
            piece = chunk.choices[0].delta.content if chunk.choices else None
            if piece:
                answer.append(piece)
                click.echo(piece, nl=False)
        click.echo()
        history.append({"role": "assistant", "content": "".join(answer)})

    if message is not None:
        turn(message)
        return
    click.echo(f"Chatting with {model}. Empty line or Ctrl-D to quit.", err=True)
    while True:
        try:
            text = click.prompt("you", prompt_suffix="> ", default="", show_default=False)
        except (EOFError, click.Abort):
            break
        if not text.strip():
            break
        turn(text)


COMMANDS: list[click.Command] = [jobs, files, models, chat, validate]
