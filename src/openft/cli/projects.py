"""``openft projects``: list and create the projects of an organization (server-side, like ``keys``)."""

from __future__ import annotations

import click

from openft.settings import Settings


@click.group()
def projects() -> None:
    """Projects inside organizations: objects belong to the project of the key that created them."""


@projects.command("create")
@click.argument("name")
@click.option("--organization", "-o", default=None, help="Organization name (created if new).")
def projects_create(name: str, organization: str | None) -> None:
    """Create project NAME (or find it) and print its id, for OpenAI-Project headers and sharing."""
    from openft.services.context import Services

    settings = Settings.from_env()
    services = Services.build(settings)
    org = services.organizations.ensure(organization or settings.default_organization)
    click.echo(services.projects.ensure(org.id, name).id)


@projects.command("list")
@click.option("--organization", "-o", default=None, help="Organization name (default: the default one).")
def projects_list(organization: str | None) -> None:
    """List an organization's projects: id, name. The default project is created on first use."""
    from openft.services.context import Services

    settings = Settings.from_env()
    services = Services.build(settings)
    org = services.organizations.ensure(organization or settings.default_organization)
    services.projects.ensure_default(org.id)
    for row in services.projects.list(org.id):
        click.echo(f"{row.id}\t{row.name}")


COMMANDS: list[click.Command] = [projects]
