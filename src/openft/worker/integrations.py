"""A job's integrations on the training side: Weights & Biases and MLflow runs fed with what the
training child reports.

Why here, in the worker, and not in the training child: every step's metrics already pass through
the worker as parsed lines, the worker holds the database handle that turns a failure into a
``warn`` event, and the child never imports, waits on or crashes with W&B or MLflow. The worker
itself never waits while the child trains: each run is fed from a queue by a thread of its own; a
failure disables that integration for the rest of the run with one ``warn`` event, and training goes
on. Once the child has exited the worker waits, at most ``FLUSH_TIMEOUT_SECONDS``, for the runs to
catch up before it records the job's outcome (their events, such as the run's URL, must come before
the job's closing event), then at most ``FINISH_TIMEOUT_SECONDS`` for them to close.
"""

from __future__ import annotations

import logging
import queue
import threading
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

FLUSH_TIMEOUT_SECONDS = 60.0
FINISH_TIMEOUT_SECONDS = 120.0
QUEUE_LIMIT = 10_000
# OpenAI's metric names, as in the metrics events; W&B and MLflow get exactly these.
METRIC_KEYS = (
    "train_loss",
    "train_mean_token_accuracy",
    "valid_loss",
    "valid_mean_token_accuracy",
    "full_valid_loss",
    "full_valid_mean_token_accuracy",
)
_STOP = object()


class Integration(Protocol):
    label: str  # "Weights & Biases", "MLflow": how events name it

    def start(self) -> str:
        """Open (or resume) the run; returns the event message that says where it is."""
        ...

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None: ...

    def log_checkpoint(self, step: int, name: str) -> None: ...

    def finish(self, fine_tuned_model: str | None, outcome: str) -> None: ...


def run_config(job) -> dict[str, Any]:
    """What a run records about its job: OpenAI's W&B config keys, plus the resolved base model."""
    return {
        "job_id": job.id,
        "model": job.model,
        "base_model": job.base_model,
        "training_file": job.training_file,
        "validation_file": job.validation_file,
        "method": job.method_type,
        "hyperparameters": dict(job.hyperparameters),
        "seed": job.seed,
        "suffix": job.suffix,
    }


class WandbRun:
    """One W&B run per job: id and default name are the job id (as OpenAI does), resumable."""

    label = "Weights & Biases"

    def __init__(self, job, options: dict[str, Any], *, directory: Path, api_key: str | None) -> None:
        self.job = job
        self.options = options
        self.directory = directory
        self.api_key = api_key
        self.run: Any = None
        self.checkpoints: list[int] = []

    def start(self) -> str:
        wandb = _require("wandb")
        self.directory.mkdir(parents=True, exist_ok=True)
        settings: dict[str, Any] = {
            "console": "off",  # the worker's own output is not the run's
            "x_disable_stats": True,  # nor are the worker's CPU and memory
            "x_disable_meta": True,
            "save_code": False,
            "silent": True,
        }
        if self.api_key:
            settings["api_key"] = self.api_key
        tags = [*self.options.get("tags", []), "openft/finetune", f"openft/{self.job.id}"]
        base_tag = f"openft/{self.job.base_model}"
        if len(base_tag) <= 64:
            tags.append(base_tag)
        self.run = wandb.init(
            project=self.options["project"],
            entity=self.options.get("entity"),
            name=self.options.get("name") or self.job.id,
            id=self.job.id,
            tags=tags,
            config=run_config(self.job),
            dir=str(self.directory),
            resume="allow",
            reinit="create_new",
            settings=wandb.Settings(**settings),
        )
        if self.run.url:
            return f"Weights & Biases run: {self.run.url}"
        return (
            f"Weights & Biases run {self.run.id} is logged offline in {self.run.settings.sync_dir}; upload it "
            "with `wandb sync` on that directory"
        )

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def log_checkpoint(self, step: int, name: str) -> None:
        self.checkpoints.append(step)
        self.run.summary["checkpoint_steps"] = list(self.checkpoints)
        self.run.summary[f"checkpoint_step_{step}"] = name

    def finish(self, fine_tuned_model: str | None, outcome: str) -> None:
        if fine_tuned_model is not None:
            self.run.summary["fine_tuned_model"] = fine_tuned_model
        self.run.summary["status"] = outcome
        # A pause or a drain is no failure: the run resumes under the same id when the job does.
        self.run.finish(exit_code=1 if outcome == "failed" else 0)


class MlflowRun:
    """One MLflow run per job in the chosen experiment, found again by its ``openft.job_id`` tag
    when the job resumes on another attempt."""

    label = "MLflow"

    def __init__(self, job, options: dict[str, Any], *, tracking_uri: str | None) -> None:
        self.job = job
        self.options = options
        self.tracking_uri = tracking_uri
        self.client: Any = None
        self.run_id: str | None = None

    def start(self) -> str:
        self.client = _require("mlflow.tracking").MlflowClient(tracking_uri=self.tracking_uri)
        name = self.options["experiment"]
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            try:
                experiment_id = self.client.create_experiment(name)
            except Exception:  # another worker created it meanwhile
                experiment = self.client.get_experiment_by_name(name)
                if experiment is None:
                    raise
                experiment_id = experiment.experiment_id
        else:
            experiment_id = experiment.experiment_id
        found = self.client.search_runs(
            [experiment_id], filter_string=f"tags.`openft.job_id` = '{self.job.id}'", max_results=1
        )
        if found:
            self.run_id = found[0].info.run_id
        else:
            tags = {
                **self.options.get("tags", {}),
                "openft.job_id": self.job.id,
                "openft.base_model": self.job.base_model,
            }
            run = self.client.create_run(
                experiment_id, run_name=self.options.get("run_name") or self.job.id, tags=tags
            )
            self.run_id = run.info.run_id
            self._log_params()
        where = self.client.tracking_uri
        if str(where).startswith(("http://", "https://")):
            return f"MLflow run: {where.rstrip('/')}/#/experiments/{experiment_id}/runs/{self.run_id}"
        return f"MLflow run {self.run_id} in experiment '{name}' ({experiment_id}) at {where}"

    def _log_params(self) -> None:
        from mlflow.entities import Param

        config = run_config(self.job)
        hyperparameters = config.pop("hyperparameters")
        params = [Param(k, str(v)) for k, v in config.items()]
        params += [Param(f"hyperparameters.{k}", str(v)) for k, v in hyperparameters.items()]
        self.client.log_batch(self.run_id, params=params)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()]
        )

    def log_checkpoint(self, step: int, name: str) -> None:
        self.client.log_metric(self.run_id, "checkpoint_step", step, step=step)
        self.client.set_tag(self.run_id, f"openft.checkpoint.step_{step}", name)

    def finish(self, fine_tuned_model: str | None, outcome: str) -> None:
        if fine_tuned_model is not None:
            self.client.set_tag(self.run_id, "fine_tuned_model", fine_tuned_model)
        status = {"succeeded": "FINISHED", "cancelled": "KILLED"}.get(outcome, "FAILED")
        if outcome in ("succeeded", "failed", "cancelled"):
            self.client.set_terminated(self.run_id, status=status)


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise RuntimeError(
            f"the {module.split('.')[0]} package is not installed on this worker; install openft's "
            "integrations extra (pip install 'openft[integrations]')"
        ) from None


def build(services, job, options: list[dict[str, Any]]) -> list[Integration]:
    """The job's integrations as configured at create time (validated there)."""
    settings = services.settings
    out: list[Integration] = []
    for item in options:
        if item.get("type") == "wandb":
            org = services.organizations.get(job.organization_id)
            key = settings.wandb_api_keys.get(org.name) if org is not None else None
            out.append(WandbRun(job, item["wandb"], directory=settings.home / "wandb", api_key=key))
        elif item.get("type") == "mlflow":
            out.append(MlflowRun(job, item["mlflow"], tracking_uri=settings.mlflow_tracking_uri))
    return out


class JobIntegrations:
    """Feeds one training run's integrations from a thread of its own; see the module docstring."""

    def __init__(self, runtime, job_id: str, generation: int, integrations: list[Integration]) -> None:
        self.runtime = runtime
        self.job_id = job_id
        self.generation = generation
        self.integrations = list(integrations)
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_LIMIT)
        self._dropped = False
        self._thread = threading.Thread(target=self._work, name=f"integrations-{job_id}", daemon=True)
        self._thread.start()

    @classmethod
    def for_job(cls, services, claim, runtime) -> JobIntegrations | None:
        try:
            options = services.fine_tuning.retrieve(claim.job.owner, claim.job_id).integrations or []
        except Exception:
            log.exception("job %s: could not read its integrations", claim.job_id)
            return None
        integrations = build(services, claim.job, options)
        return cls(runtime, claim.job_id, claim.generation, integrations) if integrations else None

    # -- called by the training run (never blocks) ---------------------------------------

    def metrics(self, step: int, data: dict[str, Any]) -> None:
        values = {k: float(data[k]) for k in METRIC_KEYS if data.get(k) is not None}
        self._put(("log_metrics", step, values))

    def checkpoint(self, step: int, name: str | None) -> None:
        if name is not None:
            self._put(("log_checkpoint", step, name))

    def flush(self, timeout: float = FLUSH_TIMEOUT_SECONDS) -> None:
        """Wait until everything reported so far is logged (or ``timeout`` passes)."""
        done = threading.Event()
        self._put(("_flushed", done), block=True)
        if not done.wait(timeout):
            log.warning(
                "job %s: integrations still behind after %ss; recording the outcome", self.job_id, timeout
            )

    def close(
        self, fine_tuned_model: str | None, outcome: str, timeout: float = FINISH_TIMEOUT_SECONDS
    ) -> None:
        """Finish every run (the model name goes in its summary) and wait for that, at most ``timeout``."""
        self._put(("finish", fine_tuned_model, outcome), block=True)
        self._put(_STOP, block=True)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("job %s: integrations still finishing after %ss; leaving them", self.job_id, timeout)

    def _put(self, item, block: bool = False) -> None:
        try:
            self._queue.put(item, block=block, timeout=5 if block else None)
        except queue.Full:
            if not self._dropped:
                self._dropped = True
                self._warn("integrations fell behind; some steps were not logged")

    # -- the thread ----------------------------------------------------------------------

    def _work(self) -> None:
        started: list[Integration] = []
        for integration in list(self.integrations):
            message = self._call(integration, "start")
            if message is not None:
                started.append(integration)
                self.runtime.add_event(self.job_id, self.generation, message)
        self.integrations = started
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            method, *args = item
            if method == "_flushed":
                args[0].set()
                continue
            for integration in list(self.integrations):
                self._call(integration, method, *args)

    def _call(self, integration: Integration, method: str, *args):
        try:
            return getattr(integration, method)(*args)
        except Exception as exc:  # noqa: BLE001 - an integration never fails a job
            log.warning("job %s: %s %s failed", self.job_id, integration.label, method, exc_info=True)
            if integration in self.integrations:
                self.integrations.remove(integration)
            self._warn(
                f"{integration.label} failed ({type(exc).__name__}: {str(exc)[:300]}); training goes on without "
                f"logging to {integration.label}."
            )
            return None

    def _warn(self, message: str) -> None:
        try:
            self.runtime.add_event(self.job_id, self.generation, message, level="warn")
        except Exception:
            log.exception("job %s: could not record: %s", self.job_id, message)
