"""Server commands: ``serve`` (API + embedded worker), ``api``, ``worker`` and ``keys``."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
