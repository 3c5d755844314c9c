"""The dashboard in real headless Chromium against a live openft: jobs list, live chart, cancel."""

from __future__ import annotations

from pathlib import Path

from live import JobDriver, LiveServer, create_job, write_chat_file

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


def test_static_files_are_served_and_nothing_outside_them(live_server: LiveServer) -> None:
    import httpx

    root = live_server.base_url.removesuffix("/v1")
    index = httpx.get(f"{root}/")
    assert index.status_code == 200 and '<script type="module" src="/dashboard/app.js">' in index.text
    script = httpx.get(f"{root}/dashboard/app.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert httpx.get(f"{root}/dashboard/..%2Fdashboard.py").status_code == 404
    assert httpx.get(f"{root}/dashboard/nope.js").status_code == 404


def test_dashboard_shows_live_metrics_and_cancels_a_job(
    live_server: LiveServer, page, tmp_path: Path
) -> None:
    root = live_server.base_url.removesuffix("/v1")
    done = create_job(live_server, write_chat_file(tmp_path / "a.jsonl"))
    finished = JobDriver(live_server.services, done, total_steps=4).start()
    for step, loss in enumerate([2.4, 1.9, 1.5, 1.2], start=1):
        finished.step(step, loss, train_mean_token_accuracy=0.2 * step)
    finished.checkpoint(2, 1.9, tmp_path)
    model = finished.succeed(tmp_path)
    job_id = create_job(live_server, write_chat_file(tmp_path / "b.jsonl"))
    driver = JobDriver(live_server.services, job_id, total_steps=20).start()
    driver.step(1, 2.8, train_mean_token_accuracy=0.1)
    driver.step(2, 2.5, valid_loss=2.6, train_mean_token_accuracy=0.2, valid_mean_token_accuracy=0.15)

    # The jobs list: both jobs with their status and the finished one's model.
    page.goto(f"{root}/?poll=200#/jobs")
    page.locator(f'tr[data-job="{job_id}"] [data-status="running"]').wait_for()
    assert page.locator(f'tr[data-job="{done}"] [data-status="succeeded"]').is_visible()
    assert page.locator(f'tr[data-job="{done}"]', has_text=model).is_visible()

    # The job page: the chart grows as new metrics events arrive.
    page.locator(f'tr[data-job="{job_id}"] a').click()
    train = page.locator('#loss-chart path[data-series="train_loss"]')
    page.wait_for_function(
        "document.querySelector('#loss-chart path[data-series=\"train_loss\"]')?.dataset.points === '2'"
    )
    assert page.locator('#loss-chart path[data-series="valid_loss"]').get_attribute("data-points") == "1"
    for step in range(3, 9):
        driver.step(step, 2.5 - 0.15 * step, train_mean_token_accuracy=0.05 * step)
    page.wait_for_function(
        "document.querySelector('#loss-chart path[data-series=\"train_loss\"]')?.dataset.points === '8'"
    )
    assert train.get_attribute("d").count("L") == 7
    assert page.locator("#job-step").inner_text().startswith("Step 8 / 20")
    assert page.locator("#events", has_text="Step 8/20: training loss=").is_visible()
    assert page.locator("#hyperparameters", has_text="batch_size").is_visible()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=False)

    # Cancel with the button; the API agrees.
    page.locator("#cancel").click()
    page.locator('#job-status [data-status="cancelled"]').wait_for()
    assert live_server.client().fine_tuning.jobs.retrieve(job_id).status == "cancelled"
    assert page.locator("#cancel").is_disabled()

    # The finished job shows its checkpoint and model name.
    page.goto(f"{root}/?poll=200#/jobs/{done}")
    page.locator("#checkpoints", has_text=":ckpt-step-2").wait_for()
    page.locator("#fine-tuned-model", has_text=model).wait_for()
    page.screenshot(path=str(ARTIFACTS / "dashboard-succeeded.png"), full_page=True)


def test_files_page_uploads_a_file(live_server: LiveServer, page, tmp_path: Path) -> None:
    root = live_server.base_url.removesuffix("/v1")
    path = write_chat_file(tmp_path / "upload-me.jsonl")
    page.goto(f"{root}/#/files")
    page.locator("#files", has_text="No files yet.").wait_for()
    page.set_input_files("#upload-file", str(path))
    page.locator("#upload").click()
    page.locator("#files", has_text="upload-me.jsonl").wait_for()
    assert [f.filename for f in live_server.client().files.list().data] == ["upload-me.jsonl"]


def test_api_key_field_is_sent_as_bearer(live_server: LiveServer, page) -> None:
    root = live_server.base_url.removesuffix("/v1")
    page.goto(f"{root}/#/jobs")
    page.fill("#api-key", "sk-from-the-field")
    with page.expect_request(lambda r: "/v1/fine_tuning/jobs" in r.url) as request:
        page.locator("#api-key").dispatch_event("change")
    assert request.value.headers["authorization"] == "Bearer sk-from-the-field"
    assert page.evaluate("localStorage.getItem('openft.apiKey')") == "sk-from-the-field"
