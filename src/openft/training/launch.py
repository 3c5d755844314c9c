"""How to start the training child: its argv and environment (standard library only, no torch)."""

from __future__ import annotations

import ctypes.util
import glob
import os
import sys
from pathlib import Path

TCMALLOC = "libtcmalloc_minimal.so.4"
_LIBRARY_DIRS = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
)


def find_tcmalloc() -> str | None:
    """tcmalloc's path, if installed (Debian: libtcmalloc-minimal4); training is ~1.3x faster with it."""
    for directory in _LIBRARY_DIRS:
        matches = sorted(glob.glob(os.path.join(directory, TCMALLOC)))
        if matches:
            return matches[0]
    found = ctypes.util.find_library("tcmalloc_minimal")
    return found if found and os.path.isabs(found) else None


def child_command(spec_path: str | Path) -> tuple[list[str], dict[str, str]]:
    """argv and env for ``python -m openft.training.child SPEC_PATH``, preloading tcmalloc when found."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    tcmalloc = find_tcmalloc()
    if tcmalloc and tcmalloc not in env.get("LD_PRELOAD", ""):
        env["LD_PRELOAD"] = ":".join(p for p in (tcmalloc, env.get("LD_PRELOAD", "")) if p)
    return [sys.executable, "-m", "openft.training.child", str(spec_path)], env
