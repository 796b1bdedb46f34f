"""End-to-end fixtures: the CLI and the local stack as an operator runs them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import clean_env, kmsbridge


@pytest.fixture
def stack_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of a private stack folder (``tmp_path / "stack"``); the stack starts its own broker
    (no bootstrap servers configured). The stack is brought down at the end."""
    env = clean_env(KMSBRIDGE_STACK_DIR=str(tmp_path / "stack"))
    yield env
    kmsbridge(["stack", "down"], env)
