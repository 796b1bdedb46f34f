"""``python -m kmsbridge.cli``: the ``kmsbridge`` command, as the local stack, the test harness and the
benchmarks spawn it (the interpreter that runs them, without relying on the console script)."""

from __future__ import annotations

from kmsbridge.cli.main import main

main()
