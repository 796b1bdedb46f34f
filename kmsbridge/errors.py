"""Errors of the composition root."""

from __future__ import annotations

__all__ = ["SettingsError", "Unreachable"]


class SettingsError(Exception):
    """A setting is missing or invalid; the message names the environment variable."""


class Unreachable(SettingsError):
    """A service a setting names (the database) does not answer at start-up. The message names the
    setting and the address; the process exits 1 (a failure its supervisor retries), not 2 (bad input)."""
