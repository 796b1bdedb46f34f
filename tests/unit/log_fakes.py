"""A real request log on an in-memory SQLite database, for unit tests of its readers (Web API, CLI)."""

from __future__ import annotations

from sqlalchemy import create_engine
from sqlalchemy.pool import StaticPool

from kmsbridge.db import upgrade
from reconciler.request_log_store import RequestLog

__all__ = ["memory_request_log"]


def memory_request_log() -> RequestLog:
    """Migrated like production; one connection shared by every thread (the API reads in a thread pool)."""
    engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
    upgrade(engine)
    return RequestLog(engine)
