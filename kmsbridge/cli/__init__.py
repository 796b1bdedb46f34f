"""The ``kmsbridge`` command line."""

from kmsbridge.cli.main import main

__all__ = ["main"]
