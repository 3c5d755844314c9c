"""Server commands: ``serve`` (API + embedded worker), ``api``, ``worker`` and ``keys``."""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path

import click

from openft.cli.companion import run_beside_worker
from openft.settings import LOOPBACK_HOSTS, Settings, SettingsError
from openft.worker.gpus import GpuOptionError, NvidiaInventory, owned


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


def preload_tcmalloc(args: list[str]) -> None:
    """Start ``openft serve`` and ``openft api`` (``args``: the command line after ``openft``) over with
    tcmalloc preloaded, when it is installed and not loaded yet. Called by the console script before click
    parses anything, never by a command's own code, so invoking a command inside another process (a test's
    CliRunner) never replaces that process.

    Chat inference runs in the API process, and a decode step or a prefill allocates and frees tensors of a
    few megabytes each: glibc's malloc maps fresh pages for each (and faults them in), tcmalloc reuses them.
    On a 2-core CPU with native bf16 (``bench/serve.py``, every runner preloaded or none) it served a single
    stream 1.2x as fast and 8 streams 1.3x. The process image is replaced before anything else runs (same
    pid, same arguments); ``OPENFT_TCMALLOC=0`` keeps glibc's malloc.
    """
    from openft.training.launch import find_tcmalloc

    if not args or args[0] not in ("serve", "api") or os.environ.get("OPENFT_TCMALLOC", "1") == "0":
        return
    tcmalloc = find_tcmalloc()
    preload = os.environ.get("LD_PRELOAD", "")
    if tcmalloc is None or tcmalloc in preload:
        return
    env = {**os.environ, "LD_PRELOAD": ":".join(p for p in (tcmalloc, preload) if p)}
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def _run_api(settings: Settings, stop: threading.Event | None = None) -> None:
    """Serve until SIGTERM or Ctrl-C, or until ``stop`` is set (``run_beside_worker`` sets it)."""
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
    server = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info"))
    if stop is not None:
        if stop.is_set():
            return

        def exit_on_stop() -> None:
            stop.wait()
            server.should_exit = True  # uvicorn checks it at start-up and every tick of its loop

        threading.Thread(target=exit_on_stop, name="api-stop", daemon=True).start()
    server.run()


GPUS_HELP = (
    "GPUs the worker owns: all (every visible CUDA device; none on a CPU machine), none, or indices "
    "as nvidia-smi numbers them, such as 0,1,3. Default: OPENFT_GPUS, else all."
)


@click.command()
@click.option("--host", default=None, help="Address to bind (default 127.0.0.1, or OPENFT_HOST).")
@click.option("--port", type=int, default=None, help="Port (default 8000, or OPENFT_PORT).")
@click.option("--gpus", default=None, metavar="all|none|0,1,3", help=GPUS_HELP)
def serve(host: str | None, port: int | None, gpus: str | None) -> None:
    """Run everything in one command: the API, one embedded worker and inference.

    State lives under OPENFT_HOME (default ./.openft): a SQLite database, uploaded files, the
    base-model cache and fine-tuned models. The worker (validation lane and training slots) runs
    as a child process: SIGTERM or Ctrl-C drains it before openft exits, and it drains and exits
    by itself if this process is killed.
    """
    _logging()
    try:
        settings = Settings.from_env(
            **{k: v for k, v in (("host", host), ("port", port), ("gpus", gpus)) if v is not None}
        )
        owned(settings.gpus, NvidiaInventory().detect())  # the worker would refuse it; say so now
    except (SettingsError, GpuOptionError) as exc:
        raise click.UsageError(str(exc)) from None
    settings.home.mkdir(parents=True, exist_ok=True)
    # The worker runs as its own process: training imports torch, the API process must not.
    run_beside_worker(["--gpus", gpus] if gpus is not None else [], lambda stop: _run_api(settings, stop))


@click.command()
@click.option("--host", default=None, help="Address to bind (default 127.0.0.1, or OPENFT_HOST).")
@click.option("--port", type=int, default=None, help="Port (default 8000, or OPENFT_PORT).")
@click.option(
    "--validator/--no-validator",
    default=True,
    show_default=True,
    help="Run a validation-only worker beside the API (its own process; it trains nothing), so a "
    "new job's files are checked even while every training worker is busy.",
)
def api(host: str | None, port: int | None, validator: bool) -> None:
    """Run the HTTP API (run as many replicas as you like against one PostgreSQL)."""
    _logging()
    settings = _settings(host, port)
    if not validator:
        _run_api(settings)
        return
    run_beside_worker(["--validate-only"], lambda stop: _run_api(settings, stop))


@click.command()
@click.option("--burst", is_flag=True, help="Exit when no job is left instead of waiting for more.")
@click.option("--max-jobs", type=int, default=None, help="Exit after handling this many jobs.")
@click.option("--gpus", default=None, metavar="all|none|0,1,3", help=GPUS_HELP)
@click.option(
    "--validate-only", is_flag=True, help="Only validate new jobs' files; train nothing, own no GPU."
)
def worker(burst: bool, max_jobs: int | None, gpus: str | None, validate_only: bool) -> None:
    """Claim jobs from the database, validate their files and train them in child processes.

    Files are validated in a lane of their own, beside training, so a bad file fails in seconds
    whatever is training. A GPU worker trains one job per free GPU (a job holds n_devices GPUs),
    each child seeing only its own CUDA_VISIBLE_DEVICES; a CPU worker trains one job at a time.

    SIGTERM or Ctrl-C drains: each running job checkpoints at its next step boundary and is
    requeued, so another worker resumes it.
    """
    _logging()
    from openft.services.context import Services
    from openft.worker.loop import Worker

    try:
        settings = Settings.from_env(**({"gpus": gpus} if gpus is not None else {}))
        services = Services.build(settings)
        w = Worker(services, validate_only=validate_only)
    except (SettingsError, GpuOptionError) as exc:
        raise click.UsageError(str(exc)) from None
    w.install_signal_handlers()
    if validate_only:
        owns = "validation only"
    elif w.pool.cuda:
        owns = "GPU " + ", ".join(f"{g.index} ({g.name})" for g in w.pool.gpus)
    else:
        owns = "CPU, one job at a time"
    click.echo(f"openft worker {w.worker_id}: {owns}; waiting for jobs", err=True)
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
