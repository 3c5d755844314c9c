"""The python grader's sandbox against the escapes it must refuse: the network, openft's files and
environment, new processes, other processes, an endless loop, memory, and output floods. Each one
ends as a runtime error with reward 0 (never an exception, never a hung grader)."""

from __future__ import annotations

import os
import socket
import textwrap
from pathlib import Path

import pytest

from openft.graders import Grading, parse_grader
from openft.graders.sandbox import SandboxLimits, run_python, unavailable_reason

pytestmark = pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))

LIMITS = SandboxLimits(timeout_seconds=3.0, memory_bytes=512 * 1024 * 1024)


def grade(body: str, item: dict | None = None, limits: SandboxLimits = LIMITS):
    source = "def grade(sample, item):\n" + textwrap.indent(textwrap.dedent(body), "    ")
    return run_python(source, {"output_text": "x"}, item or {}, limits)


def refused(outcome, *words: str) -> None:
    assert outcome.reward is None, f"the grader escaped and returned {outcome.reward}"
    assert outcome.server_error is None, outcome.server_error
    assert outcome.runtime_error and all(w in outcome.runtime_error for w in words), outcome.runtime_error


def test_a_plain_grader_runs_and_can_use_numpy_and_its_working_directory():
    outcome = grade(
        """
        import numpy as np
        with open("scratch.txt", "w") as f:
            f.write(sample["output_text"] * 3)
        return float(np.mean([len(open("scratch.txt").read()), item["n"]]))
        """,
        {"n": 5},
    )
    assert outcome.reward == 4.0, outcome


def test_tcp_to_a_listening_local_port_is_refused_and_never_arrives():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.setblocking(False)
        port = server.getsockname()[1]
        outcome = grade(
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\nreturn 1.0"
        )
        refused(outcome, "PermissionError")
        with pytest.raises(BlockingIOError):
            server.accept()  # nothing connected


def test_udp_dns_and_unix_sockets_are_refused(tmp_path):
    path = tmp_path / "openft.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        server.listen(1)
        refused(
            grade(f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({str(path)!r})\nreturn 1.0"),
            "PermissionError",
        )
    refused(grade("import socket\nsocket.getaddrinfo('example.com', 80)\nreturn 1.0"))
    refused(
        grade("import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nreturn 1.0"),
        "PermissionError",
    )


def test_openfts_files_and_other_files_cannot_be_read_or_written(tmp_path):
    import openft

    secret = tmp_path / "openft-home" / "openft.db"
    secret.parent.mkdir()
    secret.write_text("training data")
    for path in (secret, Path(openft.__file__), Path("/etc/passwd"), Path(f"/proc/{os.getpid()}/environ")):
        refused(grade(f"return float(len(open({str(path)!r}, 'rb').read()))"), "PermissionError")
    refused(grade(f"open({str(tmp_path / 'planted')!r}, 'w').write('x')\nreturn 1.0"), "PermissionError")
    assert not (tmp_path / "planted").exists()
    refused(grade("import openft\nreturn 1.0"))  # its source is outside what the sandbox may read


def test_the_environment_is_clean(monkeypatch):
    monkeypatch.setenv("OPENFT_GRADER_API_KEY", "sk-secret")
    monkeypatch.setenv("OPENFT_DATABASE_URL", "postgresql://user:pw@db/openft")
    outcome = grade(
        "import os\nleaked = [k for k, v in os.environ.items() if 'OPENFT' in k or 'secret' in v]\nreturn float(len(leaked))"
    )
    assert outcome.reward == 0.0, outcome


def test_a_fork_bomb_cannot_start_a_single_process():
    refused(grade("import os\nwhile True:\n    os.fork()"), "PermissionError")
    refused(grade("import subprocess\nsubprocess.run(['true'])\nreturn 1.0"))
    refused(grade("import multiprocessing\nmultiprocessing.Process(target=print).start()\nreturn 1.0"))


def test_other_processes_cannot_be_signalled_or_traced():

    refused(
        grade(f"import os, signal\nos.kill({os.getpid()}, signal.SIGKILL)\nreturn 1.0"), "PermissionError"
    )
    refused(grade("import os, signal\nos.kill(os.getppid(), signal.SIGTERM)\nreturn 1.0"), "PermissionError")
    refused(
        grade(
            "import ctypes\nif ctypes.CDLL(None).ptrace(16, 1, 0, 0) != 0:\n    raise OSError('ptrace refused')\nreturn 1.0"
        ),
        "ptrace refused",
    )


def test_limits_cannot_be_raised():
    refused(grade("import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))\nreturn 1.0"))


def test_an_endless_loop_is_stopped_by_the_cpu_limit():
    refused(grade("while True:\n    pass", limits=SandboxLimits(timeout_seconds=1.0)), "CPU time")


def test_a_sleeping_grader_is_stopped_by_the_wall_clock():
    refused(
        grade("import time\ntime.sleep(60)\nreturn 1.0", limits=SandboxLimits(timeout_seconds=1.0)),
        "did not finish within 1 seconds",
    )


def test_memory_is_capped():
    refused(grade("block = bytearray(2 * 1024 ** 3)\nreturn 1.0"), "MemoryError")


def test_a_print_flood_is_discarded_and_a_result_channel_flood_is_cut_off():
    outcome = grade("for _ in range(2000):\n    print('x' * 10000)\nreturn 0.5")
    assert outcome.reward == 0.5, outcome  # prints go nowhere
    refused(
        grade(
            "import os\nfor fd in range(3, 16):\n    try:\n        os.write(fd, b'x' * 1000000)\n    except OSError:\n        pass\nreturn 1.0"
        ),
        "more than",
    )


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ("return 'high'", ("returned str",)),
        ("return float('nan')", ("finite",)),
        ("return True", ("returned bool",)),
        ("raise ValueError('bad item')", ("ValueError: bad item",)),
        ("return item['missing']", ("KeyError",)),
        ("import os\nos._exit(3)", ("exit code 3",)),
    ],
)
def test_crashes_and_non_numbers_are_runtime_errors(body, words):
    refused(grade(body), *words)


def test_a_failing_python_grader_gives_reward_zero_and_openais_error_flags():
    grader = parse_grader(
        {"type": "python", "name": "p", "source": "def grade(sample, item):\n    return 1 / 0\n"}
    )
    result = Grading(sandbox=LIMITS).grade(grader, "x", {})
    assert result.reward == 0.0
    errors = result.to_wire(grader)["metadata"]["errors"]
    assert errors["python_grader_runtime_error"] is True and errors["python_grader_server_error"] is False
    assert "ZeroDivisionError" in errors["python_grader_runtime_error_details"]


def test_a_protected_directory_inside_the_python_installation_refuses_to_run():
    import sys

    exposed = SandboxLimits(timeout_seconds=3.0, protected_paths=(sys.prefix + "/openft-home",))
    outcome = run_python("def grade(sample, item):\n    return 1.0\n", {"output_text": "x"}, {}, exposed)
    assert outcome.reward is None and "move the openft home" in outcome.server_error
    elsewhere = SandboxLimits(timeout_seconds=3.0, protected_paths=("/nonexistent/openft-home",))
    assert (
        run_python("def grade(sample, item):\n    return 1.0\n", {"output_text": "x"}, {}, elsewhere).reward
        == 1.0
    )
