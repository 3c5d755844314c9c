"""Reuses the database fixtures of tests/api/conftest.py (one definition for everyone)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "openft_tests_api_fixtures", Path(__file__).resolve().parents[1] / "api" / "conftest.py"
)
assert _spec is not None and _spec.loader is not None
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)

database_url = _fixtures.database_url
