"""The app skeleton: error envelope, request ids, unknown routes, and no torch in the API process."""

from __future__ import annotations

import subprocess
import sys

import openai
import pytest


def test_create_app_does_not_import_torch(tmp_path):
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from openft.api.app import create_app\n"
        "from openft.settings import Settings\n"
        f"home = Path({str(tmp_path)!r})\n"
        "app = create_app(Settings(home=home, database_url=f'sqlite:///{home}/db.sqlite'))\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_unknown_route_answers_404_in_the_envelope(http):
    response = http.get("/v1/no/such/thing")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert response.headers["x-request-id"].startswith("req_")


def test_wrong_method_answers_405_in_the_envelope(http):
    response = http.put("/v1/files")
    assert response.status_code == 405
    assert "PUT" in response.json()["error"]["message"]


def test_malformed_json_answers_400_with_the_openai_message(http):
    response = http.post("/v1/uploads", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("We could not parse the JSON body of your request.")


def test_validation_error_names_the_dotted_field_path(http):
    response = http.post(
        "/v1/uploads", json={"filename": "a.jsonl", "purpose": "fine-tune", "mime_type": "text/jsonl"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "bytes"


def test_unexpected_exception_answers_500_server_error_with_request_id(app, services, client, monkeypatch):
    def explode(*_args, **_kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(services.files, "get", explode)
    with pytest.raises(openai.InternalServerError) as caught:
        client.files.retrieve("file-abc")
    assert caught.value.response.json()["error"]["type"] == "server_error"
    assert caught.value.request_id and caught.value.request_id.startswith("req_")


def test_sdk_exposes_the_request_id_of_a_success(client):
    page = client.files.with_raw_response.list()
    assert page.headers["x-request-id"].startswith("req_")
