"""``openft webhooks``: an organization's webhook endpoints and their delivery attempts (server-side,
like ``keys``: it runs against the server's database)."""

from __future__ import annotations

import datetime as dt

import click

from openft.settings import Settings


def _services():
    from openft.services.context import Services

    settings = Settings.from_env()
    return settings, Services.build(settings)


@click.group()
def webhooks() -> None:
    """Send fine_tuning.job.succeeded / failed / cancelled events to your URL, signed per Standard
    Webhooks (verify with the openai SDK's client.webhooks.unwrap(body, headers, secret=...))."""


@webhooks.command("add")
@click.argument("url")
@click.option("--organization", "-o", default=None, help="Organization name (default: the default one).")
@click.option(
    "--events",
    default=None,
    help="Comma-separated event types (default: fine_tuning.job.succeeded,fine_tuning.job.failed,"
    "fine_tuning.job.cancelled).",
)
def webhooks_add(url: str, organization: str | None, events: str | None) -> None:
    """Register URL for the organization's job events; prints the endpoint id and, once, its secret."""
    from openft.errors import OpenFTError

    settings, services = _services()
    org = services.organizations.ensure(organization or settings.default_organization)
    chosen = [e.strip() for e in events.split(",") if e.strip()] if events else None
    try:
        endpoint = services.webhooks.add_endpoint(org.id, url, chosen)
    except OpenFTError as exc:
        raise click.UsageError(exc.message) from None
    click.echo(f"{endpoint.id}\t{endpoint.secret}")
    click.echo(
        f"organization {org.name}: {', '.join(endpoint.events)} -> {url}. Keep the secret: it is not shown again.",
        err=True,
    )


@webhooks.command("list")
@click.option("--organization", "-o", default=None, help="Only this organization's endpoints.")
def webhooks_list(organization: str | None) -> None:
    """List endpoints: id, organization, events, URL."""
    _, services = _services()
    org_id = services.organizations.ensure(organization).id if organization else None
    for endpoint in services.webhooks.list_endpoints(org_id):
        owner = services.organizations.get(endpoint.organization_id)
        name = owner.name if owner is not None else endpoint.organization_id
        click.echo(f"{endpoint.id}\t{name}\t{','.join(endpoint.events)}\t{endpoint.url}")


@webhooks.command("remove")
@click.argument("endpoint_id")
def webhooks_remove(endpoint_id: str) -> None:
    """Remove an endpoint; what it had not received yet is not sent."""
    from openft.errors import OpenFTError

    _, services = _services()
    try:
        services.webhooks.remove_endpoint(endpoint_id)
    except OpenFTError as exc:
        raise click.UsageError(exc.message) from None
    click.echo(f"removed {endpoint_id}")


@webhooks.command("deliveries")
@click.argument("endpoint_id")
def webhooks_deliveries(endpoint_id: str) -> None:
    """Every attempt at ENDPOINT_ID, oldest first: time, event, attempt number, answer, delivery state."""
    _, services = _services()
    for a in services.webhooks.attempts(endpoint_id):
        when = dt.datetime.fromtimestamp(a.attempted_at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        answer = str(a.status_code) if a.status_code is not None else "-"
        detail = "" if a.succeeded else f"\t{a.error}"
        click.echo(
            f"{when}\t{a.event_id}\t{a.type}\tattempt {a.attempt_number}\t{answer}\t{a.duration_ms}ms\t"
            f"{a.delivery_status}{detail}"
        )
    for d in services.webhooks.pending(endpoint_id):
        if d.attempts == 0:
            click.echo(f"-\t{d.event_id}\t{d.type}\tnot attempted yet\t-\t-\tpending")


COMMANDS: list[click.Command] = [webhooks]
