"""Run the ``kmsbridge`` command as an operator does: a child process of this interpreter, from the
repository's root, with only the settings a test gives it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["REPO", "clean_env", "kmsbridge"]

REPO = Path(__file__).resolve().parents[2]


def clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without any ``KMSBRIDGE_*`` variable, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KMSBRIDGE_")}
    env.update(settings)
    return env


def kmsbridge(args: list[str], env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """``kmsbridge ARGS`` with ``env``; its exit code and output (never raises on a non-zero exit)."""
    return subprocess.run([sys.executable, "-m", "kmsbridge.cli", *args], env=env, cwd=REPO, text=True,
                          capture_output=True, timeout=timeout, check=False)
