"""``openft validate``: the server's training-file validator, run offline, plus what the file would get."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from openft.domain import hyperparameters as hp

if TYPE_CHECKING:
    from openft.datasets import TokenCounter


def resolve_model_dir(model: str) -> Path:
    """A local Hugging Face directory for ``model``: a directory, a .gguf file (converted once into
    the cache under OPENFT_HOME), or a base model name or alias configured in OPENFT_BASE_MODELS."""
    from openft.settings import Settings
    from openft.training.base_models import (
        BaseModelRegistry,
        BaseModelSourceError,
        conversion_notice,
        materialize,
        pending_conversion,
    )

    settings = Settings.from_env()
    registry = BaseModelRegistry.from_settings(settings)
    try:
        if Path(model).exists():
            source = model
        elif model in registry:
            source = registry.local_source(model)
        else:
            raise click.ClickException(
                f"Unknown model {model!r}: give a local Hugging Face directory, a .gguf file, or one of the "
                f"configured base models ({', '.join(registry.names()) or 'none'}; see OPENFT_BASE_MODELS)."
            )
        gguf = pending_conversion(source, settings.models_dir / "base")
        if gguf is not None:
            click.echo(conversion_notice(model, gguf) + ".", err=True)
        return materialize(source, settings.models_dir / "base")
    except BaseModelSourceError as exc:
        raise click.ClickException(str(exc)) from None


def token_counter(model_dir: Path, method: str) -> TokenCounter:
    """Counts exactly what the trainer will see, with the base model's tokenizer and chat template."""
    from openft.training.models import load_tokenizer
    from openft.training.token_counts import TemplateTokenCounter

    return TemplateTokenCounter(load_tokenizer(str(model_dir)), method)  # type: ignore[arg-type]


def default_max_tokens(model_dir: Path) -> int:
    from openft.training.base_models import model_facts

    return min(model_facts(model_dir).context_length, hp.DEFAULT_MAX_SEQ_LENGTH)


def describe_plan(n_examples: int, method: str, billable_tokens: int | None) -> str:
    """The ``auto`` hyperparameters, step count and trained tokens a job on this file would get."""
    n_epochs = hp.resolve_n_epochs(n_examples)
    batch_size = hp.resolve_batch_size(n_examples)
    steps = hp.total_steps(n_examples, batch_size, n_epochs)
    text = (
        f"Auto hyperparameters ({method}): n_epochs={n_epochs}, batch_size={batch_size}, "
        f"learning_rate_multiplier=1.0 -> {steps:,} steps"
    )
    if billable_tokens:
        text += f", about {billable_tokens * n_epochs:,} trained tokens"
    return text + "."


@click.command("validate")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--method",
    type=click.Choice(["supervised", "dpo", "reinforcement"]),
    default="supervised",
    show_default=True,
)
@click.option(
    "--model",
    help="Base model whose tokenizer counts tokens: a configured name or alias, a local Hugging Face "
    "directory, or a .gguf file. Without it, tokens are not counted.",
)
@click.option(
    "--max-tokens",
    type=click.IntRange(1),
    help="Training length per example; longer ones are truncated. Default: the model's context, at most 2048.",
)
def validate(path: Path, method: str, model: str | None, max_tokens: int | None) -> None:
    """Check a training file exactly as the server will, without uploading it.

    Prints errors by line and kind, warnings, token statistics, and the auto hyperparameters and
    number of steps the file would get. Exits 1 if the file would fail validation.
    """
    from openft.datasets import format_report, validate_file

    kwargs: dict[str, Any] = {"method": method}
    if model is not None:
        model_dir = resolve_model_dir(model)
        kwargs["count_tokens"] = token_counter(model_dir, method)
        kwargs["max_tokens"] = max_tokens or default_max_tokens(model_dir)
    report = validate_file(path, **kwargs)
    click.echo(format_report(report))
    if model is None:
        click.echo("\nTokens not counted: pass --model NAME to count them with that model's tokenizer.")
    if not report.n_errors and report.n_examples:
        click.echo("\n" + describe_plan(report.n_examples, method, report.billable_tokens if model else None))
    sys.exit(0 if report.ok else 1)
