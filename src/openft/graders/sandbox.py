"""The python grader's sandbox: each ``grade(sample, item)`` call runs in a fresh locked-in process.

The process is ``python -I sandbox_boot.py`` (isolated mode: no PYTHON* variables, no user site),
started in its own session with a clean environment (no OPENFT_* variable, no key, no proxy) in an
empty temporary directory. ``sandbox_boot`` locks it in (rlimits, no capabilities, Landlock,
seccomp; see there) before the grader's code runs. Here the parent enforces the wall-clock
timeout and caps what it reads back; a grader that crashes, loops, exhausts its memory, returns
something other than a number or floods its output gets a ``runtime_error``, never an exception.

Linux only (Landlock and an x86_64 seccomp filter); ``unavailable_reason()`` says why not elsewhere.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import platform
import select
import signal
import site
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BOOT = Path(__file__).with_name("sandbox_boot.py")
MAX_RESULT_BYTES = 64 * 1024
_SYSTEM_READ_PATHS = (
    "/usr/lib",
    "/usr/lib64",
    "/usr/local/lib",
    "/lib",
    "/lib64",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/usr/share/zoneinfo",
    "/dev/urandom",
)


@dataclass(frozen=True)
class SandboxLimits:
    timeout_seconds: float = 30.0
    memory_bytes: int = 1024 * 1024 * 1024
    file_bytes: int = 16 * 1024 * 1024
    # Directories a grader must never read (OPENFT_HOME). Landlock cannot carve a hole into an
    # allowed tree, so a protected directory inside the Python installation refuses to run at all.
    protected_paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class PythonOutcome:
    reward: float | None  # None when the grader failed
    runtime_error: str | None = None  # the grader's fault: exception, timeout, bad value, ...
    server_error: str | None = None  # the sandbox could not be set up


@functools.cache
def unavailable_reason() -> str | None:
    """Why python graders cannot run on this server, or None when the sandbox can be built."""
    if not sys.platform.startswith("linux") or platform.machine() != "x86_64":
        return (
            f"python graders run in a Landlock and seccomp sandbox that openft builds on Linux x86_64 only; "
            f"this server is {sys.platform} {platform.machine()}"
        )
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    if libc.syscall(444, None, 0, 1) < 1:  # landlock_create_ruleset(NULL, 0, VERSION)
        return (
            "python graders need the Landlock file-system sandbox (Linux 5.13 or newer, with Landlock enabled "
            f"in the kernel's lsm= list); this kernel does not offer it: {os.strerror(ctypes.get_errno())}"
        )
    return None


def _read_paths() -> list[str]:
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, str(Path(sys.executable).resolve().parent.parent)}
    for entry in [*site.getsitepackages(), site.getusersitepackages()]:
        paths.add(entry)
    paths.update(_SYSTEM_READ_PATHS)
    return sorted({os.path.realpath(p) for p in paths} | paths)


def _exposed(protected: tuple[str, ...], read_paths: list[str]) -> str | None:
    for guarded in protected:
        real = os.path.realpath(guarded)
        for allowed in read_paths:
            if real == allowed or real.startswith(allowed.rstrip("/") + "/"):
                return (
                    f"{guarded} lies inside {allowed}, which python graders may read; move the openft home "
                    "out of the Python installation to use python graders"
                )
    return None


def _clean_env(home: str) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": home,
        "TMPDIR": home,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        # one thread per numeric library: a grader gets one core's worth of work
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def run_python(
    source: str, sample: dict[str, Any], item: dict[str, Any], limits: SandboxLimits
) -> PythonOutcome:
    reason = unavailable_reason()
    if reason:
        return PythonOutcome(None, server_error=reason)
    read_paths = _read_paths()
    exposed = _exposed(limits.protected_paths, read_paths)
    if exposed:
        return PythonOutcome(None, server_error=exposed)
    with tempfile.TemporaryDirectory(prefix="openft-grader-") as workdir:
        payload = {
            "source": source,
            "sample": sample,
            "item": item,
            "limits": {
                "memory_bytes": int(limits.memory_bytes),
                "cpu_seconds": max(1, int(limits.timeout_seconds + 0.999)),
                "file_bytes": int(limits.file_bytes),
            },
            "allow": {"read": read_paths, "write": [workdir]},
        }
        try:
            data = json.dumps(payload).encode()
        except (TypeError, ValueError) as exc:
            return PythonOutcome(
                None, runtime_error=f"the item cannot be passed to the grader as JSON: {exc}"
            )
        proc = subprocess.Popen(
            [sys.executable, "-I", str(BOOT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=workdir,
            env=_clean_env(workdir),
            start_new_session=True,
            close_fds=True,
        )
        try:
            return _collect(proc, data, limits.timeout_seconds)
        finally:
            _kill(proc)


def _collect(proc: subprocess.Popen, data: bytes, timeout: float) -> PythonOutcome:
    deadline = time.monotonic() + timeout + 5.0  # the interpreter's start-up is not the grader's time
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(data)
        proc.stdin.close()
    except BrokenPipeError:
        pass
    out = bytearray()
    fd = proc.stdout.fileno()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return PythonOutcome(None, runtime_error=f"grade() did not finish within {timeout:g} seconds")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        out += chunk
        if b"\n" in out:
            break
        if len(out) > MAX_RESULT_BYTES:
            return PythonOutcome(
                None,
                runtime_error=f"the grader wrote more than {MAX_RESULT_BYTES:,} bytes to its result channel",
            )
    try:
        returncode = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        returncode = -signal.SIGKILL
    line = bytes(out).split(b"\n", 1)[0]
    try:
        result = json.loads(line) if line else None
    except ValueError:
        result = None
    if not isinstance(result, dict):
        how = f"signal {signal.Signals(-returncode).name}" if returncode < 0 else f"exit code {returncode}"
        hint = " (it used up its CPU time)" if returncode in (-signal.SIGXCPU, -signal.SIGKILL) else ""
        return PythonOutcome(None, runtime_error=f"the grader process ended with {how}{hint} and no result")
    if "server_error" in result:
        return PythonOutcome(
            None, server_error=f"the python grader sandbox could not be set up: {result['server_error']}"
        )
    if "runtime_error" in result:
        return PythonOutcome(None, runtime_error=str(result["runtime_error"]))
    reward = result.get("reward")
    if isinstance(reward, int | float) and not isinstance(reward, bool):
        return PythonOutcome(float(reward))
    return PythonOutcome(None, runtime_error="the grader's result could not be read")


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for stream in (proc.stdin, proc.stdout):
        if stream is not None and not stream.closed:
            stream.close()
