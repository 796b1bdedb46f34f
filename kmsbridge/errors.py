"""Errors of the composition root."""

from __future__ import annotations

__all__ = ["SettingsError"]


class SettingsError(Exception):
    """A setting is missing or invalid; the message names the environment variable."""
