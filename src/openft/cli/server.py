"""Server commands: ``serve`` (API + embedded worker), ``api``, ``worker`` and ``keys``."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import click

from openft.settings import LOOPBACK_HOSTS, Settings


def _settings(host: str | None = None, port: int | None = None) -> Settings:
    overrides = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    return Settings.from_env(**overrides)


def _logging() -> None:
    logging.basicConfig(
        level=os.environ.get("OPENFT_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _run_api(settings: Settings) -> None:
    import uvicorn

    from openft.api.app import create_app

    app = create_app(settings)
    services = app.state.services
    has_keys = services.organizations.has_keys()
    if not has_keys:
        if settings.host not in LOOPBACK_HOSTS and not settings.allow_remote_without_keys:
            raise click.UsageError(
                f"No API key is configured, so openft only binds to loopback, not {settings.host}. "
                "Create a key with `openft keys create`, or set OPENFT_ALLOW_REMOTE_WITHOUT_KEYS=1 "
                "if the network in front of it is trusted."
            )
        click.echo(
            "openft: no API key configured: every request acts as organization "
            f"'{settings.default_organization}', and the server listens on loopback only.",
            err=True,
        )
    click.echo(
        f"openft: API on http://{settings.host}:{settings.port}/v1 (dashboard at http://{settings.host}:"
        f"{settings.port}/); data under {settings.home}; database {settings.database_url.split('@')[-1]}",
        err=True,
    )
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")


@click.command()
@click.option("--host", default=None, help="Address to bind (default 127.0.0.1, or OPENFT_HOST).")
@click.option("--port", type=int, default=None, help="Port (default 8000, or OPENFT_PORT).")
def serve(host: str | None, port: int | None) -> None:
    """Run everything in one command: the API, one embedded worker and inference.

    State lives under OPENFT_HOME (default ./.openft): a SQLite database, uploaded files, the
    base-model cache and fine-tuned models.
    """
    _logging()
    settings = _settings(host, port)
    settings.home.mkdir(parents=True, exist_ok=True)
    # The worker runs as its own process: training imports torch, the API process must not.
    worker = subprocess.Popen([sys.executable, "-m", "openft.cli.main", "worker"], env=os.environ.copy())
    try:
        _run_api(settings)
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()


@click.command()
@click.option("--host", default=None, help="Address to bind (default 127.0.0.1, or OPENFT_HOST).")
@click.option("--port", type=int, default=None, help="Port (default 8000, or OPENFT_PORT).")
def api(host: str | None, port: int | None) -> None:
    """Run the HTTP API only (run as many replicas as you like against one PostgreSQL)."""
    _logging()
    _run_api(_settings(host, port))


@click.command()
@click.option("--burst", is_flag=True, help="Exit when no job is left instead of waiting for more.")
@click.option("--max-jobs", type=int, default=None, help="Exit after handling this many jobs.")
def worker(burst: bool, max_jobs: int | None) -> None:
    """Claim jobs from the database, validate their files and train them in a child process.

    SIGTERM or Ctrl-C drains: the running job checkpoints at its next step boundary and is
    requeued, so another worker resumes it.
    """
    _logging()
    from openft.services.context import Services
    from openft.worker.loop import Worker

    services = Services.build(_settings())
    w = Worker(services)
    w.install_signal_handlers()
    click.echo(f"openft worker {w.worker_id}: waiting for jobs", err=True)
    handled = w.run(burst=burst, max_jobs=max_jobs)
    click.echo(f"openft worker {w.worker_id}: stopped after {handled} job(s)", err=True)


@click.group()
def keys() -> None:
    """Manage API keys (stored hashed; each belongs to an organization)."""


@keys.command("create")
@click.option("--organization", "-o", default=None, help="Organization name (created if new).")
@click.option(
    "--project",
    "-p",
    default=None,
    help="Bind the key to this project (created if new): it sees and creates only that project's "
    "objects. Without it the key is organization-wide and the OpenAI-Project header picks the project.",
)
def keys_create(organization: str | None, project: str | None) -> None:
    """Create an API key and print it once. With any key present, every request needs one."""
    from openft.services.context import Services

    settings = _settings()
    services = Services.build(settings)
    key = services.organizations.create_key(organization or settings.default_organization, project=project)
    click.echo(key)
    if project is not None:
        org = services.organizations.ensure(organization or settings.default_organization)
        row = services.projects.ensure(org.id, project)
        click.echo(f"project {row.name}: {row.id} (organization {org.name})", err=True)


@click.command()
@click.argument("model")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["adapter", "merged"]),
    default="adapter",
    show_default=True,
    help="adapter: PEFT LoRA adapter (serve with vLLM --enable-lora); merged: full safetensors weights.",
)
@click.option("--organization", "-o", default=None, help="Owner organization (default: the default one).")
def export(model: str, directory: Path, fmt: str, organization: str | None) -> None:
    """Write fine-tuned MODEL (an ft: name or checkpoint) to DIRECTORY for vLLM or transformers.

    Runs on the server's machine against its database and storage, like `openft worker`.
    """
    from openft.errors import OpenFTError
    from openft.services.context import Services
    from openft.services.inference import ServicesModelResolver
    from openft.serving.export import export as write

    settings = _settings()
    services = Services.build(settings)
    name = organization or settings.default_organization
    # Look up, never create: a typo in -o must not leave a new organization behind.
    org = services.organizations.find(name)
    if org is None:
        raise click.ClickException(f"No organization named {name!r}; nothing was exported.")
    try:
        resolved = ServicesModelResolver(services).resolve(org.id, model)
    except OpenFTError as exc:
        raise click.ClickException(
            f"{exc.message} (organization {org.name!r}); nothing was exported."
        ) from None
    out = write(resolved, fmt, directory)
    click.echo(f"wrote {fmt} to {out}")
    if fmt == "adapter":
        click.echo(
            f"serve with: vllm serve {resolved.base_path} --enable-lora --lora-modules '{model}={out}'",
            err=True,
        )


COMMANDS: list[click.Command] = [serve, api, worker, keys, export]
