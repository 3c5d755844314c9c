"""The ``openft`` command: one entry point whose help is each command's docstring."""

from __future__ import annotations

import sys

import click

from openft.cli import client, projects, server, webhooks


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="openft")
def main() -> None:
    """openft: a self-hosted, OpenAI-compatible fine-tuning service.

    Point the official openai SDK at it with base_url="http://127.0.0.1:8000/v1".
    """


for command in server.COMMANDS + client.COMMANDS + projects.COMMANDS + webhooks.COMMANDS:
    main.add_command(command)


def run() -> None:
    """The console script: ``openft serve`` and ``openft api`` first start over with tcmalloc preloaded."""
    server.preload_tcmalloc(sys.argv[1:])
    main()


if __name__ == "__main__":
    run()
