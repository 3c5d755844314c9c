"""Client commands that talk to any OpenAI-compatible endpoint through the official SDK."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
