"""``openft export`` refuses an unknown organization or model with a clear error and no side
effect (no organization created, no directory written), on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from openft.cli.main import main
from openft.services.context import Services
from openft.settings import Settings
from openft.store.tables import OrganizationRow


@pytest.fixture
def services(tmp_path, database_url, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("OPENFT_HOME", str(home))
    monkeypatch.setenv("OPENFT_DATABASE_URL", database_url)
    services = Services.build(Settings(home=home, database_url=database_url))
    services.organizations.ensure("acme")
    yield services
    services.close()


def _organizations(services) -> list[str]:
    with services.db.read() as session:
        return sorted(session.scalars(select(OrganizationRow.name)))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-o", "UNKNOWN"], "No organization named 'UNKNOWN'"),
        (["-o", "acme"], "The model 'ft:base:acme::AbCdEfGh' does not exist"),
        ([], "The model 'ft:base:acme::AbCdEfGh' does not exist"),
    ],
    ids=["unknown-organization", "unknown-model", "default-organization"],
)
def test_export_refusal_is_a_clear_error_with_no_side_effect(services, tmp_path, args, message):
    before = _organizations(services)
    out = tmp_path / "exported"
    result = CliRunner().invoke(main, ["export", "ft:base:acme::AbCdEfGh", str(out), *args])
    assert result.exit_code == 1, result.output
    assert message in result.output and "nothing was exported" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback
    assert _organizations(services) == before == ["acme", "personal"]
    assert not out.exists()
