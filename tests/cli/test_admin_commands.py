"""Server-side admin commands against a real database: ``openft keys create --project``,
``openft projects``, and ``openft webhooks add / list / deliveries / remove``."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from webhook_receiver import Receiver

from openft.cli.main import main
from openft.services.context import Services
from openft.services.webhooks import WebhookDispatcher
from openft.settings import Settings


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / "openft-home"
    for key in ("OPENFT_DATABASE_URL", "OPENFT_BASE_MODELS", "OPENFT_MODEL_ALIASES"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("OPENFT_HOME", str(home))
    return home


def _run(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_project_keys_and_projects_list(home):
    key = _run("keys", "create", "--organization", "acme", "--project", "research").strip()
    assert key.startswith("sk-openft-")
    listing = dict(reversed(line.split("\t")) for line in _run("projects", "list", "-o", "acme").splitlines())
    assert set(listing) == {"research", "default"} and all(v.startswith("proj_") for v in listing.values())
    assert _run("projects", "create", "research", "-o", "acme").strip() == listing["research"]
    services = Services.build(Settings.from_env())
    try:
        assert services.auth.identify(f"Bearer {key}").project_id == listing["research"]
    finally:
        services.close()


def test_webhooks_add_list_deliveries_remove(home):
    with Receiver(plan=["fail"]) as receiver:
        endpoint_id, secret = _run("webhooks", "add", receiver.url, "-o", "acme").split()
        assert endpoint_id.startswith("we_") and secret.startswith("whsec_")
        (line,) = _run("webhooks", "list").splitlines()
        assert line.split("\t") == [
            endpoint_id,
            "acme",
            "fine_tuning.job.succeeded,fine_tuning.job.failed,fine_tuning.job.cancelled",
            receiver.url,
        ]

        services = Services.build(Settings.from_env())
        try:
            org = services.organizations.ensure("acme").id
            file = services.files.create_from_bytes(org, "t.jsonl", "fine-tune", b'{"messages": []}\n')
            job = services.fine_tuning.create(org, model="SmolLM2-135M-Instruct", training_file=file.id)
            assert _run("webhooks", "deliveries", endpoint_id) == ""
            services.fine_tuning.cancel(org, job.id)
            assert "not attempted yet" in _run("webhooks", "deliveries", endpoint_id)
            assert WebhookDispatcher(services).run_once() == 1
        finally:
            services.close()
    (attempt,) = _run("webhooks", "deliveries", endpoint_id).splitlines()
    fields = attempt.split("\t")
    assert fields[2:5] == ["fine_tuning.job.cancelled", "attempt 1", "500"] and fields[6] == "pending"
    assert _run("webhooks", "remove", endpoint_id).strip() == f"removed {endpoint_id}"
    assert _run("webhooks", "list") == ""
    bad = CliRunner().invoke(main, ["webhooks", "add", "not-a-url"])
    assert bad.exit_code == 2 and "http://" in bad.output
