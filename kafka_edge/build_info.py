"""Which build runs: the installed package's version, shown by ``kmsbridge --version`` and in the
``kmsbridge_build_info`` metric."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["kmsbridge_version"]


def kmsbridge_version() -> str:
    """The installed kmsbridge's version (``0+unknown`` when run from a tree that is not installed)."""
    try:
        return version("kmsbridge")
    except PackageNotFoundError:
        return "0+unknown"
