"""A model grader whose model openft does not serve goes to the operator's OpenAI-compatible
endpoint (OPENFT_GRADER_BASE_URL): here a second openft on a free port, serving the judge model."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from openft.api.app import create_app
from openft.settings import Settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cli"))
from live import serve  # noqa: E402

JUDGE = "judge-tiny"


@pytest.fixture
def settings(tmp_path, monkeypatch, tiny_model_dir):
    external_home = tmp_path / "external"
    external = create_app(
        Settings(
            home=external_home,
            database_url=f"sqlite:///{external_home / 'openft.db'}",
            base_models={JUDGE: str(tiny_model_dir)},
        )
    )
    home = tmp_path / "openft-home"
    monkeypatch.setenv("OPENFT_HOME", str(home))
    with serve(external) as url:
        yield Settings(
            home=home,
            database_url=f"sqlite:///{home / 'openft.db'}",
            base_models={"tiny-llama": str(tiny_model_dir)},
            grader_base_url=f"{url}/v1",
            grader_api_key="unused",
        )
    external.state.services.close()


def test_a_score_model_grader_reaches_the_external_endpoint(client):
    grader = {
        "type": "score_model",
        "name": "external judge",
        "model": JUDGE,
        "input": [{"role": "user", "content": "Rate {{sample.output_text}} from 0 to 1."}],
        "sampling_params": {"temperature": 0, "max_completions_tokens": 3},
    }
    assert client.fine_tuning.alpha.graders.validate(grader=grader).grader.model == JUDGE
    result = client.fine_tuning.alpha.graders.run(grader=grader, model_sample="fine", item={})
    assert result.metadata.sampled_model_name == JUDGE
    assert result.metadata.errors.model_grader_server_error is False
    usage = result.model_grader_token_usage_per_model[JUDGE]
    assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= 3
