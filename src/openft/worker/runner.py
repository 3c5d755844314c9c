"""The ``running`` phase: build the TrainingSpec, run the child, record what it reports."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from openft.domain import hyperparameters as hp_rules
from openft.domain.lifecycle import JobStatus
from openft.services.accelerators import memory_plan
from openft.services.job_runtime import LeaseLost
from openft.training.launch import EXIT_FENCED, LEASE_FILE
from openft.training.memory import DoesNotFit
from openft.training.spec import ERROR_OUT_OF_MEMORY, ERROR_TRAINING, ERROR_WORKER_LOST, TrainingSpec
from openft.worker.integrations import JobIntegrations
from openft.worker.lease import LeaseKeeper
from openft.worker.sync import ArtifactSync

log = logging.getLogger(__name__)

# training.checkpoints.COMPLETE_MARKER (that module imports torch): a checkpoint without it is torn
CHECKPOINT_COMPLETE = "COMPLETE"
# After a cancel or pause the child stops at the next step boundary; a step that takes longer
# than this is killed (a cancel must free the process; a pause falls back to the last checkpoint).
STOP_GRACE_SECONDS = 120.0
# A child that reported an error (a CUDA out-of-memory, say) must exit; one stuck in its teardown is
# killed after this long so the worker never hangs on it.
ERROR_EXIT_GRACE_SECONDS = 30.0


class ChildLauncher(Protocol):
    """Starts the training child. ``cuda_visible_devices`` is given only on a machine with GPUs:
    the child's ``CUDA_VISIBLE_DEVICES`` (``""``: none); absent, the environment is inherited."""

    def start(self, spec_path: Path, log_path: Path, **devices: str) -> subprocess.Popen: ...


class SubprocessLauncher:
    """Runs ``python -m openft.training.child SPEC`` with tcmalloc preloaded where available, or, for
    a spec with ``n_devices > 1``, torchrun starting that many ranks of it; the child (torchrun's
    agent, whose ranks die with it) dies with the worker (``PR_SET_PDEATHSIG``) so a killed worker
    leaves no trainer behind. Signals to it reach every rank."""

    def command(self, spec_path: Path) -> tuple[list[str], dict[str, str]]:
        from openft.training.launch import child_command

        n_devices = TrainingSpec.from_json(Path(spec_path).read_text(encoding="utf-8")).n_devices
        return child_command(spec_path, n_devices, stop_grace_seconds=STOP_GRACE_SECONDS)

    def start(
        self, spec_path: Path, log_path: Path, *, cuda_visible_devices: str | None = None
    ) -> subprocess.Popen:
        from openft.training.launch import die_with_parent

        argv, env = self.command(spec_path)
        if cuda_visible_devices is not None:
            # nvidia-smi's numbering (PCI bus order), which the worker's inventory uses
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
            env["CUDA_VISIBLE_DEVICES"] = cuda_visible_devices
        with open(log_path, "ab") as err:
            return subprocess.Popen(
                argv,
                env=env,
                stdout=subprocess.PIPE,
                stderr=err,
                stdin=subprocess.DEVNULL,
                # its own session: a Ctrl-C at the worker's terminal is the worker's to handle
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )


class ModelSeam(Protocol):
    def base_model_dir(self, base_model: str) -> Path: ...


@dataclass
class RunState:
    """What the child reported, and what was asked of it."""

    result: dict | None = None
    error: dict | None = None
    stopped: str | None = None  # "paused" | "cancelled" as reported by the child
    requested: str | None = None  # "pause" | "cancel" | "drain" as asked by the API or the worker
    step_times: list[float] = field(default_factory=list)
    last_elapsed: float | None = None  # the child's elapsed_seconds at its previous step
    fine_tuned_model: str | None = None  # set when the job succeeded
    outcome: str = "stopped"  # what the run ended in, for the integrations' runs


def output_dir(settings, job_id: str) -> Path:
    return settings.models_dir / "jobs" / job_id


def fence_output_dir(out: Path, token: str) -> None:
    """Claim the job's directory for this attempt: write the fence file the child checks (atomically,
    so a child never reads half a token), then remove what killed attempts left half-written.

    Any earlier child still alive (a stalled machine, a worker that lost its lease) sees the new
    token at its next step boundary and exits without writing; its temporaries are no one's now.
    """
    temp = out / f".{LEASE_FILE}-{os.getpid()}-{threading.get_ident()}"
    temp.write_text(token, encoding="utf-8")
    os.replace(temp, out / LEASE_FILE)
    torn = [d for d in out.glob("checkpoints/step-*") if not (d / CHECKPOINT_COMPLETE).is_file()]
    for leftover in [*out.glob(".final-*"), *out.glob("checkpoints/.tmp-step-*"), *torn]:
        shutil.rmtree(leftover, ignore_errors=True)


def owns_output_dir(out: Path, token: str) -> bool:
    try:
        return (out / LEASE_FILE).read_text(encoding="utf-8") == token
    except FileNotFoundError:
        return False


def build_spec(services, job, seam: ModelSeam) -> TrainingSpec:
    settings = services.settings
    hp = job.hyperparameters
    init_adapter = None
    base_dir = seam.base_model_dir(job.base_model)
    if job.parent_model:
        _, artifact = services.models.resolve_for_inference(job.owner, job.parent_model)
        artifact = Path(artifact)
        if (artifact / "adapter").exists():
            init_adapter = str(artifact / "adapter")
        elif (artifact / "model").exists():
            base_dir = artifact / "model"
    out = output_dir(settings, job.id)
    validation_path = None
    if job.validation_file:
        validation_path = str(services.files.local_path(services.files.get(job.owner, job.validation_file)))
    method = job.method_type
    # This worker's device may differ from the one validation planned for: plan again (DoesNotFit
    # fails the job). Jobs validated before gradient_checkpointing existed have no value: auto.
    planned = memory_plan(settings, base_dir, job.base_model, method, hp)
    checkpointing = hp.get("gradient_checkpointing", hp_rules.AUTO)
    if checkpointing == hp_rules.AUTO:
        checkpointing = bool(planned and planned.gradient_checkpointing)
    sizing = {"micro_batch_tokens": planned.micro_batch_tokens} if planned else {}
    extra = {}
    if method == "reinforcement":
        from openft.worker.reinforcement import spec_fields

        extra = spec_fields(services, job)
    return TrainingSpec(
        job_id=job.id,
        method=method,
        base_model_path=str(base_dir),
        training_file=str(services.files.local_path(services.files.get(job.owner, job.training_file))),
        validation_file=validation_path,
        output_dir=str(out),
        seed=int(job.seed),
        n_epochs=int(hp["n_epochs"]),
        batch_size=int(hp["batch_size"]),
        learning_rate=hp_rules.base_learning_rate(method, hp["fine_tuning_type"])
        * float(hp["learning_rate_multiplier"]),
        fine_tuning_type=hp["fine_tuning_type"],
        lora_rank=int(hp["lora_rank"]),
        lora_alpha=float(hp["lora_alpha"]),
        lora_dropout=float(hp["lora_dropout"]),
        lora_target_modules=hp["lora_target_modules"],
        max_seq_length=int(hp["max_seq_length"]),
        beta=float(hp["beta"]) if method in ("dpo", "reinforcement") else None,
        init_adapter_path=init_adapter,
        checkpoint_interval_seconds=settings.checkpoint_interval_seconds,
        n_devices=int(hp.get("n_devices", 1)),
        gradient_checkpointing=bool(checkpointing),
        extra={} if settings.cpu_autocast == "auto" else {"autocast": settings.cpu_autocast},
        **sizing,
        **extra,
    )


def result_csv(metrics_path: Path) -> bytes:
    """OpenAI's result file: one row per step, 5 decimals, empty cells where not evaluated."""
    rows: dict[int, dict] = {}
    if metrics_path.exists():
        for line in metrics_path.read_text().splitlines():
            data = json.loads(line)
            rows[int(data["step"])] = data  # a step repeated after a resume: the last run wins
    if any("train_reward_mean" in data for data in rows.values()):
        from openft.worker.reinforcement import result_csv as reinforcement_csv

        return reinforcement_csv(rows)

    def cell(value) -> str:
        return "" if value is None else f"{float(value):.5f}"

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"])
    for step in sorted(rows):
        d = rows[step]
        writer.writerow(
            [
                step,
                cell(d.get("train_loss")),
                cell(d.get("train_mean_token_accuracy")),
                cell(d.get("valid_loss")),
                cell(d.get("valid_mean_token_accuracy")),
            ]
        )
    return out.getvalue().encode()


class TrainingRun:
    """One attempt at training one claimed job, from spec to a recorded outcome."""

    def __init__(
        self,
        services,
        claim,
        *,
        launcher: ChildLauncher,
        seam: ModelSeam,
        drain: threading.Event,
        runtime=None,
        cuda_visible_devices: str | None = None,
    ):
        self.services = services
        self.cuda_visible_devices = cuda_visible_devices
        self.settings = services.settings
        self.runtime = runtime or services.runtime
        self.claim = claim
        self.job = claim.job
        self.launcher = launcher
        self.seam = seam
        self.drain = drain
        self.state = RunState()
        self.proc: subprocess.Popen | None = None
        self.keeper: LeaseKeeper | None = None
        self._signal_lock = threading.Lock()
        self._stop_deadline: float | None = None
        self.integrations: JobIntegrations | None = None
        self.sync: ArtifactSync | None = None

    # -- signals to the child ------------------------------------------------------------
    def _ask(self, what: str) -> None:
        with self._signal_lock:
            if self.proc is None or self.proc.poll() is not None:
                return
            # One request per run, except that a cancel overrides a pause or drain still under way.
            if self.state.requested is not None and not (
                what == "cancel" and self.state.requested != "cancel"
            ):
                return
            self.state.requested = what
            self._stop_deadline = time.monotonic() + STOP_GRACE_SECONDS
            sig = signal.SIGTERM if what == "cancel" else signal.SIGUSR1
            log.info("job %s: asking the training child to %s", self.job.id, what)
            self.proc.send_signal(sig)

    def _on_status(self, status: JobStatus) -> None:
        if self.keeper is not None and self.keeper.lost.is_set():
            # another worker owns the job now: stop at once, write nothing more
            self._kill()
        elif status == JobStatus.CANCELLED:
            self._ask("cancel")
        elif status in (JobStatus.PAUSED, JobStatus.QUEUED):
            # QUEUED while our lease still holds: the API paused and resumed the job before the
            # child stopped. Pause all the same, so the next claim continues from this checkpoint
            # instead of step 0, and no attempt is spent on it.
            self._ask("pause")
        elif status != JobStatus.RUNNING and self.proc is not None:
            self._kill()

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()

    def _watchdog(self) -> None:
        while self.proc is not None and self.proc.poll() is None:
            if self.drain.is_set():
                self._ask("drain")
            if self._stop_deadline is not None and time.monotonic() > self._stop_deadline:
                log.warning("job %s: the training child did not stop in time; killing it", self.job.id)
                self._kill()
            time.sleep(0.2)

    # -- the run -------------------------------------------------------------------------
    def run(self) -> None:
        job, gen = self.job, self.claim.generation
        try:
            spec = build_spec(self.services, job, self.seam)
        except DoesNotFit as exc:
            self.runtime.fail(job.id, gen, code=ERROR_OUT_OF_MEMORY, message=exc.message)
            return
        except Exception as exc:
            log.exception("job %s: could not prepare training", job.id)
            self.runtime.fail(
                job.id, gen, code="model_load_failed", message=f"Could not prepare training: {exc}"
            )
            return
        self.integrations = JobIntegrations.for_job(self.services, self.claim, self.runtime)
        try:
            self._run(spec)
        finally:
            if self.integrations is not None:
                self.integrations.close(self.state.fine_tuned_model, self.state.outcome)

    def _run(self, spec: TrainingSpec) -> None:
        job, gen = self.job, self.claim.generation
        out = Path(spec.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        spec_path = out / "spec.json"
        spec_path.write_text(spec.to_json())
        # Written by the training child: rewritten from the checkpoint on resume, so it holds each
        # step of the run that produced the final weights.
        metrics_path = out / "metrics.jsonl"

        # The keeper retries on its own every poll; behind PatientRuntime's backoff it would be
        # seconds late to notice a lease taken over.
        keeper = LeaseKeeper(
            self.services.runtime,
            job.id,
            gen,
            lease_seconds=self.settings.lease_seconds,
            heartbeat_seconds=self.settings.heartbeat_seconds,
            poll_seconds=self.settings.poll_seconds,
            on_status=self._on_status,
        )
        self.keeper = keeper
        # With object storage: checkpoints and the final model are published as they appear, and a
        # machine without the job's newest checkpoint fetches it before the child starts.
        sync = self.sync = ArtifactSync(
            self.services.artifacts,
            out,
            job.id,
            fenced=lambda: self.services.runtime.heartbeat(job.id, gen, self.settings.lease_seconds),
            referenced=lambda: self.runtime.artifact_keys(job.id),
            poll_seconds=self.settings.poll_seconds,
        )
        token = f"generation {gen} on {socket.gethostname()}:{os.getpid()}\n"
        with keeper:
            fence_output_dir(out, token)
            sync.restore()
            # Passed only when set, so launchers written before GPUs existed keep working on CPU.
            devices = (
                {}
                if self.cuda_visible_devices is None
                else {"cuda_visible_devices": self.cuda_visible_devices}
            )
            self.proc = self.launcher.start(spec_path, out / "child.log", **devices)
            if not owns_output_dir(out, token):
                # Another worker claimed the job and fenced the directory while we were starting.
                keeper.lost.set()
                self._kill()
            if keeper.status is not None:
                self._on_status(keeper.status)
            watchdog = threading.Thread(target=self._watchdog, daemon=True)
            watchdog.start()
            sync.start()
            started = time.time()
            assert self.proc.stdout is not None
            for raw in self.proc.stdout:
                if keeper.lost.is_set():
                    self._kill()
                    break
                try:
                    line = json.loads(raw)
                except json.JSONDecodeError:
                    log.warning("job %s: ignoring a non-JSON line from the child: %r", job.id, raw[:200])
                    continue
                try:
                    self._record(line, started)
                except BaseException:
                    # Recording failed past its retries: never leave a child training unwatched.
                    self._kill()
                    raise
            returncode = self.proc.wait()
            watchdog.join()
            sync.stop()
        if keeper.lost.is_set():
            return
        if self.integrations is not None:
            self.integrations.flush()
        self._finish(returncode, spec, metrics_path)

    def _record(self, line: dict, started: float) -> None:
        job, gen = self.job, self.claim.generation
        kind = line.get("type")
        if kind == "metrics":
            step, total, data = int(line["step"]), int(line["total_steps"]), line["data"]
            self.state.step_times.append(time.time())
            self.runtime.record_metrics(
                job.id,
                gen,
                step=step,
                total_steps=total,
                data=data,
                estimated_finish=self._estimate(step, total, started),
                tokens_per_second=self._throughput(line),
            )
            if self.integrations is not None:
                self.integrations.metrics(step, data)
        elif kind == "checkpoint":
            if line.get("epoch") is not None:
                assert self.sync is not None
                # In the store before the database names it (write, then register).
                name = self.sync.publish_checkpoint(
                    Path(line["path"]),
                    lambda key: self.runtime.record_checkpoint(
                        job.id, gen, step=int(line["step"]), metrics=line.get("metrics") or {}, path=key
                    ),
                )
                if self.integrations is not None:
                    self.integrations.checkpoint(int(line["step"]), name)
        elif kind == "message":
            self.runtime.add_event(job.id, gen, line["message"], level=line.get("level", "info"))
        elif kind == "started":
            if line.get("resumed_from_step"):
                self.runtime.add_event(
                    job.id,
                    gen,
                    f"Resuming from the checkpoint at step {line['resumed_from_step']}",
                    dedup_key=f"resume-{self.claim.attempts}",
                )
        elif kind == "result":
            self.state.result = line
        elif kind == "error":
            self.state.error = line
            with self._signal_lock:
                deadline = time.monotonic() + ERROR_EXIT_GRACE_SECONDS
                self._stop_deadline = min(self._stop_deadline or deadline, deadline)
        elif kind in ("paused", "cancelled"):
            self.state.stopped = kind

    def _throughput(self, line: dict) -> float | None:
        """Tokens per second of the step just reported (None for a run's first step: no baseline)."""
        elapsed, previous = line.get("elapsed_seconds"), self.state.last_elapsed
        self.state.last_elapsed = elapsed
        if elapsed is None or previous is None or elapsed <= previous or not line.get("tokens"):
            return None
        return round(float(line["tokens"]) / (elapsed - previous), 3)

    def _estimate(self, step: int, total: int, started: float) -> int | None:
        times = self.state.step_times
        if len(times) < 2:
            return None
        per_step = (times[-1] - started) / len(times)
        return int(time.time() + per_step * max(total - step, 0))

    def _finish(self, returncode: int, spec: TrainingSpec, metrics_path: Path) -> None:
        job, gen, runtime = self.job, self.claim.generation, self.runtime
        state = self.state
        if returncode == EXIT_FENCED:
            # The child found the fence file rewritten: another worker took the job over while this
            # one stalled. Whatever the lease keeper has or has not noticed yet, write nothing.
            log.warning("lease on %s was taken over; this worker stops writing to it", job.id)
            return
        sync = self.sync
        assert sync is not None
        if state.result is not None:
            stats = job.stats or {}
            trained_tokens = int(stats.get("billable_tokens", 0)) * spec.n_epochs or int(
                state.result.get("trained_tokens", 0)
            )
            if spec.method == "reinforcement":  # prompts and sampled completions, as trained on
                trained_tokens = int(state.result.get("trained_tokens", 0))
            try:
                artifact_path = sync.publish_final(Path(state.result["output_path"]))
            except LeaseLost:
                return
            except Exception as exc:
                log.exception("job %s: could not store the fine-tuned model", job.id)
                self._retry_or_fail(f"storing the fine-tuned model failed: {exc}")
                return
            name = runtime.succeed(
                job.id,
                gen,
                artifact_path=artifact_path,
                trained_tokens=trained_tokens,
                result_csv=result_csv(metrics_path),
                final_step=int(state.result.get("steps", 0)),
                final_metrics=state.result.get("final_metrics") or {},
            )
            state.fine_tuned_model = name
            state.outcome = "succeeded" if name is not None else "stopped"
            if name is not None:
                self._after_end(succeeded=True)
            else:
                # Cancelled or paused (perhaps resumed too) while the last step ran, before the
                # child saw the request: the stop was asked for, so the attempt is given back. A
                # paused job keeps its final epoch checkpoint; resumed, it only writes the weights.
                # With object storage that checkpoint is in the store: this machine keeps no copy.
                self._publish_newest()
                runtime.finish_stopped(job.id, gen)
            return
        if state.error is not None:
            state.outcome = "failed"
            runtime.fail(
                job.id,
                gen,
                code=state.error.get("code", ERROR_TRAINING),
                message=state.error.get("message", "Training failed."),
            )
            self._after_end(succeeded=False)
            return
        if state.requested == "cancel":
            state.outcome = "cancelled"
            # the API already moved the job to cancelled; we only give the lease back
            runtime.finish_stopped(job.id, gen)
            self._after_end(succeeded=False)
            return
        # The job will resume, perhaps on another machine: its newest checkpoint goes to the store
        # first, before the job can be claimed again.
        self._publish_newest()
        if state.requested == "drain":
            runtime.requeue(job.id, gen, reason="the worker is shutting down")
            return
        if state.requested == "pause":
            state.outcome = "paused"
            # the API already moved the job to paused; we only give the lease back
            runtime.finish_stopped(job.id, gen)
            return
        how = f"signal {-returncode}" if returncode < 0 else f"exit code {returncode}"
        self._retry_or_fail(f"the training process died ({how})", died=how)

    def _retry_or_fail(self, reason: str, *, died: str | None = None) -> None:
        """A failed attempt: requeued, or failed with ``worker_lost`` once the attempts are spent."""
        job, gen, runtime = self.job, self.claim.generation, self.runtime
        if self.claim.attempts >= self.settings.max_attempts:
            cause = f"The training process died ({died})" if died else f"The attempt failed ({reason})"
            runtime.fail(
                job.id,
                gen,
                code=ERROR_WORKER_LOST,
                message=f"{cause} on each of {self.claim.attempts} attempts; "
                "giving up. See the worker's log for the cause.",
            )
        else:
            runtime.requeue(
                job.id,
                gen,
                reason=f"{reason}; attempt {self.claim.attempts} of {self.settings.max_attempts}",
                failed_attempt=True,
            )

    def _publish_newest(self) -> None:
        if self.sync is None or (self.keeper is not None and self.keeper.lost.is_set()):
            return
        try:
            self.sync.hand_over()
        except LeaseLost:
            pass
        except Exception:  # the job resumes from the last checkpoint the store has
            log.exception("job %s: could not publish its newest checkpoint", self.job.id)

    def _after_end(self, *, succeeded: bool) -> None:
        """The job has ended: with object storage, drop obsolete checkpoints and the local copies."""
        if self.sync is None:
            return
        try:
            if succeeded:
                self.sync.finish()
            self.sync.clean_local()
        except Exception:  # the storage sweep removes what is left
            log.exception("job %s: could not tidy its stored checkpoints", self.job.id)
